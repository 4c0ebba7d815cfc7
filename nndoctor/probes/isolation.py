"""No harm from a checkup: the isolation context and the model copies the probes train.

:func:`isolated` forks every RNG stream and puts back the user's ``training`` flags and
``requires_grad`` map; :func:`copy_model` makes the copy a probe trains, without the
Doctor's own hooks (a deepcopy carries module hooks along). The probes only ever touch
copies, so the flags are a second line of defence.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import random
import types
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["isolated", "copy_model", "strip_our_hooks", "default_dtype", "ProbeSkip", "DROPOUT_TYPES",
           "shared_storage", "rebind_closures", "leaked_parameters"]

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class ProbeSkip(Exception):
    """A probe cannot measure this model (the reason is shown as the check's skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Fork torch's CPU and CUDA RNGs, save numpy's and Python's, and put the model's
    ``training`` flags and ``requires_grad`` map back on exit."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    training = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    # Memorising a batch drives gradients into float32 denormals, which are 10-100x slower
    # on CPUs; flush them for the copies, and put the user's setting back (torch has no
    # getter: a denormal that survives a multiplication means flushing is off).
    flushing = float(torch.tensor([1e-40]) * 1.0) == 0.0
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.set_flush_denormal(flushing)
        random.setstate(py_state)
        np.random.set_state(np_state)
        for m, flag in training:
            m.training = flag
        for p, flag in requires:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` for the block, the user's default put back after
    (a float64 gradient check must also see float64 tensors that ``forward`` creates)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _is_ours(fn: Any) -> bool:
    fn = getattr(fn, "func", fn)  # functools.partial
    fn = getattr(fn, "__func__", fn)  # bound method
    return str(getattr(fn, "__module__", "") or "").startswith("nndoctor")


def strip_our_hooks(model: nn.Module) -> None:
    """Remove the Doctor's own hooks from a copy: its observers must not fire on the
    experiment copies (they would record the copies' steps as the user's)."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    extras = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")
    for module in model.modules():
        for name in names:
            hooks = getattr(module, name, None)
            if not hooks:
                continue
            for key in [k for k, fn in hooks.items() if _is_ours(fn)]:
                del hooks[key]
                for extra in extras:
                    getattr(module, extra, {}).pop(key, None)
    for p in model.parameters():
        for name in ("_post_accumulate_grad_hooks", "_backward_hooks"):
            hooks = getattr(p, name, None)
            if hooks:
                for key in [k for k, fn in hooks.items() if _is_ours(fn)]:
                    del hooks[key]


def _storages(model: nn.Module) -> dict[int, str]:
    out: dict[int, str] = {}
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t is None or t.device.type == "meta":
                continue
            try:
                ptr = t.untyped_storage().data_ptr()
            except Exception:
                continue
            if ptr:
                out[ptr] = f"{kind} `{name}`"
    return out


def shared_storage(model: nn.Module, clone: nn.Module) -> list[str]:
    """The clone's parameters and buffers whose memory is the original's (a copy that
    would train the user's weights)."""
    original = _storages(model)
    return [what for ptr, what in _storages(clone).items() if ptr in original]


def rebind_closures(model: nn.Module, clone: nn.Module) -> list[str]:
    """``copy.deepcopy`` copies functions as they are: a lambda or bound method stored on
    a module (``self.mlpf = lambda x: self.mlp.c_proj(...)``, minGPT's Block) still
    calls the *original* modules. Re-bind such attributes of the clone to the clone's own
    modules (same code, closure cells and ``__self__`` mapped original -> copy); returns
    what was re-bound, as ``path.attr``."""
    pairs = list(zip(model.modules(), clone.modules()))
    mapping = {id(a): b for a, b in pairs}
    names = {id(b): n for n, b in clone.named_modules()}
    rebound: list[str] = []

    def remap(fn: Any) -> Any:
        if isinstance(fn, types.MethodType) and id(fn.__self__) in mapping:
            return types.MethodType(fn.__func__, mapping[id(fn.__self__)])
        if isinstance(fn, functools.partial):
            inner = remap(fn.func)
            args = tuple(mapping.get(id(a), a) for a in fn.args)
            kw = {k: mapping.get(id(v), v) for k, v in fn.keywords.items()}
            if inner is fn.func and args == fn.args and kw == fn.keywords:
                return fn
            return functools.partial(inner, *args, **kw)
        if isinstance(fn, types.FunctionType) and fn.__closure__:
            cells = []
            changed = False
            for cell in fn.__closure__:
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    cells.append(cell)
                    continue
                if id(value) in mapping:
                    cells.append(types.CellType(mapping[id(value)]))
                    changed = True
                else:
                    cells.append(cell)
            if not changed:
                return fn
            new = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells))
            new.__kwdefaults__ = fn.__kwdefaults__
            new.__dict__.update(fn.__dict__)
            return new
        return fn

    for module in clone.modules():
        for attr, value in list(vars(module).items()):
            if attr.startswith("_") or not callable(value) or isinstance(value, (nn.Module, type)):
                continue
            new = remap(value)
            if new is not value:
                object.__setattr__(module, attr, new)
                where = names.get(id(module), "")
                rebound.append(f"{where}.{attr}" if where else attr)
    return rebound


def leaked_parameters(model: nn.Module, output: Any) -> list[str]:
    """The original model's parameters that a copy's ``output`` depends on (found by
    walking its autograd graph to the leaves): a copy whose forward reaches into the
    original (a closure, a global) would train the user's weights."""
    from .._tree import tensors

    original = {id(p): n for n, p in model.named_parameters()}
    seen: set[int] = set()
    found: list[str] = []
    stack = [t.grad_fn for t in tensors(output) if t.grad_fn is not None]
    while stack and len(seen) < 200_000:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if var is not None and id(var) in original:
            found.append(original[id(var)])
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return found


def copy_model(model: nn.Module, *, dropout_off: bool = False) -> nn.Module:
    """A deep copy of ``model`` without our hooks and gradients; dropout switched off
    when asked (the overfit and random-input probes measure capacity, not regularisation).

    The copy owns its memory (checked: no parameter or buffer storage shared with the
    original, else :class:`ProbeSkip`) and its functions (closures over the original's
    modules re-bound to the copy's, :func:`rebind_closures`), and runs eagerly (a module
    compiled in place is not compiled again for each copy)."""
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise ProbeSkip(f"the model could not be copied (copy.deepcopy raised {type(exc).__name__}: {exc})") from exc
    shared = shared_storage(model, clone)
    if shared:
        raise ProbeSkip(
            f"the model's copy shares memory with the model itself ({', '.join(shared[:3])}"
            f"{', ...' if len(shared) > 3 else ''}): training it would train your weights, so the "
            f"experiment is not run")
    rebind_closures(model, clone)
    strip_our_hooks(clone)
    # A module compiled in place (`model.compile()`) keeps its compiled forward in
    # `_compiled_call_impl`, which a deepcopy carries along: Dynamo guards on the module
    # object, so every copy would compile afresh (tens of seconds each, on the
    # experiments' budget). The copies run eagerly: same function, no compile.
    for m in clone.modules():
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    for p in clone.parameters():
        p.grad = None
    if dropout_off:
        for m in clone.modules():
            if isinstance(m, DROPOUT_TYPES):
                m.eval()
    return clone
