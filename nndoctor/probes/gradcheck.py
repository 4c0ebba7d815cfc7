"""Probe: analytic gradients against finite differences, in float64.

(a) every unit whose backward is not torch's own (custom modules, custom
``autograd.Function``s found in the loss's graph), on the inputs it really received:
``torch.autograd.gradcheck`` when small, a randomized u^T J v test otherwise;
(b) the whole model + loss along a few directions, localised per parameter tensor when
the error exceeds ``localize_above``; where a direction's error is large, the round-off
of the finite difference itself is estimated (the spread of the estimates at eps/2, eps
and 2 eps, at least the dtype's unit round-off of the loss over eps) and recorded as
``noise_rel``, so that ``gradient-check`` gives no verdict inside the noise. The float64 parts run with float64 as torch's
default dtype, so tensors that ``forward`` creates itself match. The records carry the
errors; ``gradient-check`` decides what is wrong.
"""

from __future__ import annotations

import copy
import importlib
import math
from typing import Any, Callable

import torch
from torch import nn

from .._probe_records import GradcheckModel, GradcheckRun, GradcheckUnit
from .._tree import map_leaves, map_tensors, tensors
from .context import ProbeContext, call, float_outputs
from ._rng import SameDraws
from .isolation import ProbeSkip, default_dtype

__all__ = ["measure"]

# `torch.autograd.gradcheck` is the function; its module holds the error class.
_GradcheckError = importlib.import_module("torch.autograd.gradcheck").GradcheckError


class _Settings:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _custom_function_nodes(root: Any) -> list[Any]:
    """Backward nodes of custom ``torch.autograd.Function``s reachable from ``root``."""
    seen, stack, found = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(node, "_forward_cls", None)
        if type(node).__name__.endswith("Backward") and cls is not None:
            if not str(getattr(cls, "__module__", "")).startswith("torch"):
                found.append(node)
        stack.extend(fn for fn, _ in getattr(node, "next_functions", ()) or ())
    return found


def _is_custom_module(module: nn.Module) -> bool:
    if str(type(module).__module__).startswith("torch"):
        return False
    own_params = any(True for _ in module.parameters(recurse=False))
    return own_params or not list(module.children())


def rel_error(fd: float, ad: float) -> float:
    if not (math.isfinite(fd) and math.isfinite(ad)):
        return math.inf
    scale = max(abs(fd), abs(ad))
    if scale < 1e-10:
        return 0.0
    return abs(fd - ad) / scale


def _directional(
    fn: Callable[..., Any], args: list[torch.Tensor], gen: torch.Generator, n_dir: int, eps: float
) -> float:
    """max over random (u, v) of the relative error between u^T J v from autograd and
    from central differences of u^T f, for f(*args) -> tensors."""
    args = [a.detach().requires_grad_(True) for a in args]
    outs = float_outputs(fn(*args))
    if not outs:
        raise ProbeSkip("the unit returns no floating-point output")
    worst = 0.0
    for _ in range(n_dir):
        us = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
        vs = [torch.randn(a.shape, generator=gen, dtype=a.dtype) for a in args]
        norm = math.sqrt(sum(float((v * v).sum()) for v in vs)) or 1.0
        vs = [v / norm for v in vs]
        grads = torch.autograd.grad(outs, args, grad_outputs=us, retain_graph=True, allow_unused=True)
        ad = sum(float((g * v).sum()) for g, v in zip(grads, vs) if g is not None)
        with torch.no_grad():
            plus = float_outputs(fn(*[a + eps * v for a, v in zip(args, vs)]))
            minus = float_outputs(fn(*[a - eps * v for a, v in zip(args, vs)]))
        fd = sum(float(((p - m) * u).sum()) for p, m, u in zip(plus, minus, us)) / (2 * eps)
        worst = max(worst, rel_error(fd, ad))
    return worst


def _check_unit(fn: Callable[..., Any], checked: list[torch.Tensor], s: _Settings, seed: int) -> dict[str, Any]:
    """gradcheck (small units) or the directional u^T J v test (large ones)."""
    elements = sum(t.numel() for t in checked)
    out_elements = sum(o.numel() for o in float_outputs(fn(*checked)))
    if elements + out_elements <= s.full_max_elements:
        inputs = tuple(t.detach().requires_grad_(True) for t in checked)
        try:
            torch.autograd.gradcheck(
                fn, inputs, eps=s.eps, atol=s.atol, rtol=s.rtol, raise_exception=True,
                check_undefined_grad=False, check_batched_grad=False,
            )
            return {"method": "gradcheck", "mismatch": None, "max_rel_error": None}
        except _GradcheckError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "gradcheck failed"
            worst = _directional(fn, list(checked), torch.Generator().manual_seed(seed), 2, s.eps)
            return {"method": "gradcheck", "mismatch": f"gradcheck: {first}", "max_rel_error": worst}
    worst = _directional(fn, list(checked), torch.Generator().manual_seed(seed), s.directions, s.eps)
    return {"method": "directional u^T J v", "mismatch": None, "max_rel_error": worst}


def _to64(t: Any) -> Any:
    return t.detach().double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    copy_ = t.detach().clone()
    return copy_.requires_grad_(True) if t.requires_grad else copy_


def _no_grad_reason(args: Any, kwargs: Any) -> str:
    found = tensors((args, kwargs))
    if found and not any(t.is_floating_point() for t in found):
        return "its inputs are integer (token ids), so there is no input gradient to check"
    return "none of its inputs requires grad"


class _Slot:
    """A placeholder for a float tensor in an argument template (see ``_fill``)."""

    def __init__(self, flat: list[torch.Tensor], value: torch.Tensor) -> None:
        self.index = len(flat)
        flat.append(value)


def _fill(template: Any, values: tuple[torch.Tensor, ...]) -> Any:
    """The template with each slot replaced by its tensor from ``values``."""
    return map_leaves(template, lambda slot: values[slot.index], lambda x: isinstance(x, _Slot))


def _run_unit(unit: GradcheckUnit, fn: Callable[..., Any], checked: list[torch.Tensor], s: _Settings, seed: int) -> None:
    try:
        with default_dtype(torch.float64):
            result = _check_unit(fn, checked, s, seed)
    except ProbeSkip as skip:
        unit.skipped = skip.reason
        return
    except Exception as exc:
        unit.method = "gradcheck"
        unit.raised = f"its forward or backward raised {type(exc).__name__}: {exc}"
        return
    unit.method, unit.mismatch, unit.max_rel_error = result["method"], result["mismatch"], result["max_rel_error"]


def measure(
    ctx: ProbeContext,
    *,
    batch: int = 2,
    directions: int = 4,
    eps: float = 1e-6,
    full_max_elements: int = 1024,
    max_tensors: int = 200,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    localize_above: float = 1e-3,
) -> GradcheckRun:
    s = _Settings(directions=int(directions), eps=float(eps), full_max_elements=int(full_max_elements),
                  max_tensors=int(max_tensors), atol=float(atol), rtol=float(rtol),
                  localize_above=float(localize_above))
    nb = max(1, min(int(batch), ctx.batch_size))
    inputs, targets = ctx.take(0, nb)
    seed = ctx.seed
    draws = SameDraws(seed)  # torch, Python and numpy draws alike for every evaluation
    # --- capture: what the candidate modules and custom Functions receive --------------
    clone = ctx.copy_model()
    paths = {m: name for name, m in clone.named_modules()}
    candidates = {name: m for name, m in clone.named_modules() if name and _is_custom_module(m)}
    captured_mod: dict[str, tuple[tuple, dict]] = {}
    stack: list[str] = []

    def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        name = paths.get(mod, "")
        stack.append(name)
        if name in candidates and name not in captured_mod:
            captured_mod[name] = (map_tensors(args, _snapshot), map_tensors(kwargs, _snapshot))

    def post(mod: nn.Module, args: tuple, out: Any) -> None:
        if stack:
            stack.pop()

    def hooked_forward() -> Any:
        handles = []
        for m in clone.modules():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, always_call=True))
        try:
            draws()
            stack.clear()
            return ctx.loss(call(clone, inputs), targets)  # Functions in the loss count too
        finally:
            for h in handles:
                h.remove()

    loss = hooked_forward()
    fn_classes = list(dict.fromkeys(node._forward_cls for node in _custom_function_nodes(loss.grad_fn)))
    captured_fn: dict[type, tuple[tuple, dict, str | None]] = {}
    patched: list[tuple[type, Any, bool]] = []
    for cls in fn_classes:
        original = cls.apply
        had_own = "apply" in cls.__dict__

        def wrapper(_cls: type, *args: Any, _cls_orig: Any = original, **kwargs: Any) -> Any:
            if _cls not in captured_fn:
                captured_fn[_cls] = (
                    map_tensors(args, _snapshot), map_tensors(kwargs, _snapshot), stack[-1] if stack else None,
                )
            return _cls_orig(*args, **kwargs)

        patched.append((cls, cls.__dict__.get("apply"), had_own))
        cls.apply = classmethod(wrapper)
    if fn_classes:
        try:
            hooked_forward()
        finally:
            for cls, orig, had_own in patched:
                if had_own:
                    cls.apply = orig
                else:
                    del cls.apply
    record = GradcheckRun(batch=nb)
    # --- (a1) custom modules ------------------------------------------------------------
    for name, module in candidates.items():
        unit = GradcheckUnit(kind="module", name=type(module).__name__, where=name)
        record.units.append(unit)
        if name not in captured_mod:
            unit.skipped = "not called in the forward pass"
            continue
        args, kwargs = captured_mod[name]
        try:
            mod64 = copy.deepcopy(module).double()
        except Exception as exc:
            unit.skipped = f"could not make a float64 copy: {exc}"
            continue
        pnames = [n for n, p in mod64.named_parameters() if p.requires_grad]
        params = [p.detach() for n, p in mod64.named_parameters() if p.requires_grad]
        flat_args: list[torch.Tensor] = []
        template = map_tensors((args, kwargs), lambda t: _Slot(flat_args, _to64(t)) if t.requires_grad else _to64(t))
        unit.input_shapes = [list(t.shape) for t in tensors((args, kwargs))]
        if not flat_args and not params:
            unit.skipped = _no_grad_reason(args, kwargs) + " and it has no parameters"
            continue
        n_in = len(flat_args)

        def run_module(
            *values: torch.Tensor, mod64: nn.Module = mod64, template: Any = template, n_in: int = n_in,
            pnames: list[str] = pnames,
        ) -> Any:
            a, kw = _fill(template, values[:n_in])
            draws()
            return tuple(float_outputs(torch.func.functional_call(mod64, dict(zip(pnames, values[n_in:])), a, kw)))

        _run_unit(unit, run_module, [*flat_args, *params], s, seed)
    # --- (a2) custom autograd Functions -------------------------------------------------
    for cls in fn_classes:
        unit = GradcheckUnit(kind="function", name=cls.__name__, where=None)
        record.units.append(unit)
        if cls not in captured_fn:
            unit.skipped = "its inputs could not be captured"
            continue
        args, kwargs, where = captured_fn[cls]
        unit.where = where
        flat: list[torch.Tensor] = []
        template = map_tensors((args, kwargs), lambda t: _Slot(flat, _to64(t)) if t.requires_grad else _to64(t))
        unit.input_shapes = [list(t.shape) for t in tensors((args, kwargs))]
        if not flat:
            unit.skipped = _no_grad_reason(args, kwargs)
            continue

        def run_fn(*values: torch.Tensor, cls: type = cls, template: Any = template) -> Any:
            a, kw = _fill(template, values)
            draws()
            return tuple(float_outputs(cls.apply(*a, **kw)))

        _run_unit(unit, run_fn, list(flat), s, seed)
    # --- (b) the whole model + loss, directional ---------------------------------------
    try:
        record.model = _model_directional(ctx, inputs, targets, s, draws)
    except ProbeSkip as skip:
        record.model = GradcheckModel(skipped=skip.reason)
    return record


def _model_directional(ctx: ProbeContext, inputs: Any, targets: Any, s: _Settings,
                       draws: SameDraws) -> GradcheckModel:
    last_error: Exception | None = None
    for dtype, eps in ((torch.float64, s.eps), (torch.float32, 1e-3)):
        try:
            with default_dtype(dtype):
                return _model_directional_in(ctx, inputs, targets, s, dtype, eps, draws)
        except ProbeSkip:
            raise
        except Exception as exc:  # e.g. a layer that only runs in float32
            last_error = exc
    raise ProbeSkip(f"the model could not be evaluated for a gradient check: {type(last_error).__name__}: {last_error}")


def _model_directional_in(
    ctx: ProbeContext, inputs: Any, targets: Any, s: _Settings, dtype: torch.dtype, eps: float,
    draws: SameDraws,
) -> GradcheckModel:
    seed = ctx.seed
    clone = ctx.copy_model()
    loss_fn = ctx.loss_fn
    clone.to(dtype)
    if isinstance(loss_fn, nn.Module):
        loss_fn = copy.deepcopy(loss_fn).to(dtype)
    cast = lambda t: t.detach().to(dtype) if t.is_floating_point() else t  # noqa: E731
    x, y = map_tensors(inputs, cast), map_tensors(targets, cast)
    names = [n for n, p in clone.named_parameters() if p.requires_grad]
    params = [p for n, p in clone.named_parameters() if p.requires_grad]
    if not params:
        raise ProbeSkip("the model has no trainable parameters")

    def L() -> torch.Tensor:
        draws()
        return loss_fn(call(clone, x), y).reshape(())

    loss = L()
    if not loss.requires_grad:
        raise ProbeSkip("the loss does not require grad (no parameter reaches it)")
    # Finite differences compare evaluations: they mean something only when the same
    # weights give the same loss. A forward that draws from a generator we cannot pin
    # (its own torch.Generator, a clock, a global counter) does not: no verdict then.
    with torch.no_grad():
        again = float(L())
    first = float(loss.detach())
    slack = 1e-10 if dtype == torch.float64 else 1e-5
    if math.isfinite(first) and not (abs(again - first) <= slack * max(abs(first), 1e-30)):
        return GradcheckModel(
            dtype="float64" if dtype == torch.float64 else "float32", eps=eps, loss=first,
            nondeterministic=(f"two evaluations of the loss at the same weights differ ({first:.10g} vs "
                              f"{again:.10g}) although torch, Python and numpy were re-seeded alike: the "
                              f"forward is not reproducible, so finite differences of it say nothing"),
        )
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    # Parameters the graph never reaches (a frozen backbone run under no_grad, an
    # intended stop-gradient) get no gradient at all: that is `frozen-layer`'s
    # finding, not a wrong backward, so they are left out of the directions.
    no_gradient = [n for n, g in zip(names, grads) if g is None]
    kept = [(n, p, g) for n, p, g in zip(names, params, grads) if g is not None]
    if not kept:
        raise ProbeSkip("no trainable parameter receives a gradient from the loss")
    names, params, grads = (list(t) for t in zip(*kept))
    gen = torch.Generator().manual_seed(seed)

    def central(vs: list[torch.Tensor], on: list[torch.Tensor], step: float) -> tuple[float, float, float]:
        """(L(w + step v) - L(w - step v)) / 2 step, and the two losses."""
        with torch.no_grad():
            for p, v in zip(on, vs):
                p.add_(v, alpha=step)
            plus = float(L())
            for p, v in zip(on, vs):
                p.sub_(v, alpha=2 * step)
            minus = float(L())
            for p, v in zip(on, vs):
                p.add_(v, alpha=step)
        return (plus - minus) / (2 * step), plus, minus

    unit_roundoff = torch.finfo(dtype).eps
    # Below this relative error a direction passes whatever its noise: the round-off
    # estimate (4 more forwards) is spent only where a verdict could depend on it.
    noise_above = s.localize_above * (10.0 if dtype == torch.float32 else 0.1)

    def directional(vs: list[torch.Tensor], on: list[torch.Tensor], gs: list[torch.Tensor]) -> dict[str, Any]:
        ad = sum(float((g * v).sum()) for g, v in zip(gs, vs))
        fd, plus, minus = central(vs, on, eps)
        out: dict[str, Any] = {"fd": fd, "ad": ad, "rel_error": rel_error(fd, ad)}
        if out["rel_error"] > noise_above and math.isfinite(fd):
            # How far round-off moves the finite difference itself: the spread of the
            # estimates at eps/2, eps and 2 eps (round-off grows as 1/eps, truncation as
            # eps^2: on a smooth loss with a correct backward they agree to a few digits),
            # and at least the dtype's unit round-off of the loss divided by eps. A
            # float32 buffer built inside a float64 forward shows up in the spread.
            estimates = [fd, central(vs, on, eps / 2)[0], central(vs, on, 2 * eps)[0]]
            spread = max(estimates) - min(estimates) if all(map(math.isfinite, estimates)) else math.inf
            values = (plus, minus, float(loss.detach()))
            # A float64 loss whose values are all exact float32 numbers went through float32
            # somewhere (a hard-coded float32 buffer): its round-off is float32's. (A float64
            # result lands on a float32 number by chance with probability ~2^-29.)
            through32 = all(float(torch.tensor(v, dtype=torch.float32)) == v for v in values)
            unit = torch.finfo(torch.float32).eps if through32 else unit_roundoff
            floor = unit * max(abs(v) for v in values) / eps
            noise = max(spread, floor)
            scale = max(abs(fd), abs(ad))
            out["fd_spread"] = [fd, estimates[1], estimates[2]]
            out["noise_rel"] = noise / scale if scale > 0 else math.inf
            out["loss_through_float32"] = through32 and dtype != torch.float32
        return out

    results = []
    gnorm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    direction_sets: list[list[torch.Tensor]] = []
    if gnorm > 0 and math.isfinite(gnorm):
        direction_sets.append([g / gnorm for g in grads])
    for _ in range(s.directions):
        vs = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype) for p in params]
        norm = math.sqrt(sum(float((v * v).sum()) for v in vs)) or 1.0
        direction_sets.append([v / norm for v in vs])
    for i, vs in enumerate(direction_sets):
        kind = "gradient" if i == 0 and gnorm > 0 else "random"
        results.append({"direction": kind, **directional(vs, params, grads)})
    worst = max((r["rel_error"] for r in results), default=0.0)
    # float32 round-off is ~1e5 x float64's; localise at the same relative slack the check allows
    localize_above = s.localize_above * (100.0 if dtype == torch.float32 else 1.0)
    localized = []
    if not math.isfinite(worst) or worst > localize_above:
        # name the culprit: the same test within each parameter tensor
        for name, p, g in list(zip(names, params, grads))[: s.max_tensors]:
            errs = []
            vs_list = []
            gn = float(g.norm())
            if gn > 0:
                vs_list.append(g / gn)
            v = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            vs_list.append(v / (float(v.norm()) or 1.0))
            for v in vs_list:
                fd, _, _ = central([v], [p], eps)
                errs.append(rel_error(fd, float((g * v).sum())))
            localized.append({"param": name, "module": name.rpartition(".")[0], "rel_error": max(errs)})
    return GradcheckModel(
        dtype="float64" if dtype == torch.float64 else "float32", eps=eps, directions=len(direction_sets),
        results=results, max_rel_error=worst, localized=localized, no_gradient=no_gradient,
        loss=float(loss.detach()),
    )
