"""Custom ``torch.autograd.Function``s, verified passively: watch() notes the first call of
every user-defined Function, and ``gradient-check`` judges its backward from that call.

Observe side (the hot path): when the watch begins, ``apply`` of every user-defined
``torch.autograd.Function`` subclass alive then is wrapped (torch's and nndoctor's own
are left alone). The first call of a class with grad enabled and an input that requires
grad keeps a detached copy of its tensor arguments (all of them when they are small,
else the first rows of the batch) and the path of the model's module that called it;
then that class's wrapper is removed at once, so later steps call the original
``apply`` directly: nothing per step after the first call per class. Every remaining
wrapper is removed when the watch ends, on exceptions too (``remove_hooks``).

Verify side (``verify_captures``, run when the report is built, not while training):
the Function alone is re-run on the copies, in float64 (float32 with a larger step
when it cannot run in float64), and its backward is compared with central differences
along a few random directions (u^T J v), the same test ``nndoctor.probes.gradcheck``
runs on large units. It runs with torch's RNG forked (CPU and CUDA) and Python's and
numpy's generators put back, its own directions from a local ``torch.Generator``:
the user's random streams and the model are untouched. The records are plain dicts
in ``Observations.custom_functions``; the verdict is ``gradient-check``'s.

Honest limits, recorded as a skip reason instead of a verdict: a forward that is not
reproducible (two calls on the same inputs differ with every generator re-seeded), a
forward that is piecewise constant in its inputs (rounding, sign: a straight-through
estimator's backward is a surrogate by design), non-finite values, no input that
requires grad, inputs too large to keep, a re-run that raises.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .._observations import Observations, StepRecord
from .._tree import map_leaves, map_tensors, tensors
from ._base import Observer

__all__ = ["CustomFunctionObserver", "FunctionCapture", "verify_captures", "verify_capture",
           "user_function_classes", "CAPTURE_MAX_ELEMENTS"]

# A first call whose tensor arguments hold more elements than this keeps the first rows
# of the batch only (as many as fit); 64k float64 elements are 512 KiB per class.
CAPTURE_MAX_ELEMENTS = 1 << 16
# Beyond this, even one row is not kept (one sample of a large image model).
CAPTURE_HARD_MAX_ELEMENTS = 1 << 20
_CAPTURED_KEY = "custom_functions"


def _is_compiling() -> bool:
    """Traced by torch.compile, or inside a torch.func transform (vmap, grad): the
    arguments are not plain tensors to copy; the call passes straight through."""
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    transforms = getattr(torch._C, "_are_functorch_transforms_active", None)
    try:
        compiling = bool(fn()) if fn is not None else False
        return compiling or bool(transforms is not None and transforms())
    except Exception:  # pragma: no cover - a torch whose check itself fails
        return False


def user_function_classes() -> list[type]:
    """Every ``torch.autograd.Function`` subclass defined outside torch and nndoctor."""
    found: list[type] = []
    seen: set[int] = set()
    stack = list(torch.autograd.Function.__subclasses__())
    while stack:
        cls = stack.pop()
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        stack.extend(cls.__subclasses__())
        module = str(getattr(cls, "__module__", "") or "")
        if module.startswith("torch") or module.startswith("nndoctor"):
            continue
        found.append(cls)
    return found


# -- the shared class patches ---------------------------------------------------------
class _Patches:
    """One wrapper per patched class, shared by every watching observer (two Doctors
    may watch at once): installed when the first listener asks, the class's own
    ``apply`` (or the inherited one) put back when the last listener is done with it.
    Each wrapper calls the ``apply`` found in the class's MRO when it was installed,
    skipping nndoctor's wrappers, so a subclass patched after its parent never calls the
    parent's wrapper, and restoring in any order leaves no wrapper behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # cls -> (listeners, the class's own "apply" entry or None)
        self._entries: dict[type, tuple[list[Any], Any]] = {}

    def patched(self) -> list[type]:
        return list(self._entries)

    def listen(self, cls: type, listener: Any) -> None:
        with self._lock:
            entry = self._entries.get(cls)
            if entry is not None:
                if listener not in entry[0]:
                    entry[0].append(listener)
                return
            own = cls.__dict__.get("apply")
            original = _inherited_apply(cls)
            if original is None:
                return
            listeners: list[Any] = [listener]
            wrapper = _make_wrapper(self, cls, listeners, original)
            self._entries[cls] = (listeners, own)
            cls.apply = classmethod(wrapper)  # type: ignore[attr-defined]

    def leave(self, cls: type, listener: Any) -> None:
        with self._lock:
            entry = self._entries.get(cls)
            if entry is None:
                return
            listeners, own = entry
            if listener in listeners:
                listeners.remove(listener)
            if listeners:
                return
            del self._entries[cls]
            if own is not None:
                cls.apply = own  # type: ignore[attr-defined]
            else:
                with contextlib.suppress(AttributeError):
                    delattr(cls, "apply")


def _inherited_apply(cls: type) -> Any:
    """The ``apply`` classmethod object ``cls`` resolves to, nndoctor's wrappers skipped."""
    for klass in cls.__mro__:
        entry = klass.__dict__.get("apply")
        if entry is None:
            continue
        func = getattr(entry, "__func__", entry)
        if getattr(func, "_nndoctor_wrapped", None) is not None:
            continue
        return entry
    return None


def _make_wrapper(patches: _Patches, cls: type, listeners: list[Any], original: Any) -> Callable[..., Any]:
    def apply(klass: type, *args: Any, **kwargs: Any) -> Any:
        if listeners and not _is_compiling():
            for listener in list(listeners):
                try:
                    done = listener.on_apply(klass, args, kwargs)
                except Exception as exc:  # never into the user's forward
                    done = True
                    listener.on_apply_failed(exc)
                if done:
                    patches.leave(cls, listener)
        return original.__get__(None, klass)(*args, **kwargs)

    apply._nndoctor_wrapped = original  # type: ignore[attr-defined]
    apply.__doc__ = getattr(getattr(original, "__func__", original), "__doc__", None)
    return apply


PATCHES = _Patches()


# -- capture -------------------------------------------------------------------------
@dataclass
class FunctionCapture:
    """The first call of one custom Function: copies of its arguments (``args``,
    ``kwargs``: tensors detached and cloned, ``requires_grad`` as in the call), where it
    was called, and whether only the first rows of the batch were kept. ``skipped``:
    why there is nothing to verify."""

    cls: type
    name: str
    where: str | None = None
    args: Any = ()
    kwargs: Any = field(default_factory=dict)
    input_shapes: list[list[int]] = field(default_factory=list)
    sliced: bool = False
    skipped: str | None = None


def _batch_rows(found: list[torch.Tensor]) -> tuple[int | None, int]:
    """(leading size to slice, rows to keep) so the copy fits ``CAPTURE_MAX_ELEMENTS``;
    (None, 0) when it fits whole or nothing can be sliced."""
    total = sum(t.numel() for t in found)
    if total <= CAPTURE_MAX_ELEMENTS:
        return None, 0
    biggest = max(found, key=lambda t: t.numel())
    if biggest.dim() == 0 or biggest.shape[0] <= 1:
        return None, 0
    batch = int(biggest.shape[0])
    per_row = sum(t.numel() // batch for t in found if t.dim() > 0 and t.shape[0] == batch)
    fixed = sum(t.numel() for t in found if not (t.dim() > 0 and t.shape[0] == batch))
    keep = max(1, (CAPTURE_MAX_ELEMENTS - fixed) // max(per_row, 1))
    return batch, min(batch, keep)


def capture_call(cls: type, args: tuple, kwargs: dict, where: str | None) -> FunctionCapture:
    found = tensors((args, kwargs))
    cap = FunctionCapture(cls=cls, name=cls.__name__, where=where,
                          input_shapes=[list(t.shape) for t in found])
    batch, keep = _batch_rows(found)

    def copy(t: torch.Tensor) -> torch.Tensor:
        if batch is not None and t.dim() > 0 and t.shape[0] == batch:
            t = t[:keep]
        held = t.detach().clone()
        return held.requires_grad_(True) if t.requires_grad and held.is_floating_point() else held

    kept = sum(t.numel() for t in found) if batch is None else None
    if batch is not None:
        kept = sum((t.numel() // batch) * keep if t.dim() > 0 and t.shape[0] == batch else t.numel() for t in found)
    if kept is not None and kept > CAPTURE_HARD_MAX_ELEMENTS:
        cap.skipped = (f"its inputs are too large to keep a copy ({kept} elements even for "
                       f"{keep or 'all'} row(s) of the batch)")
        return cap
    cap.args, cap.kwargs = map_tensors(args, copy), map_tensors(kwargs, copy)
    cap.sliced = batch is not None and keep < batch
    return cap


class CustomFunctionObserver(Observer):
    """Notes the first call of each user-defined ``autograd.Function`` (see the module
    docstring). Its data: ``Observations.custom_functions`` once verified."""

    name = "custom-function watch"
    feeds = ("gradient-check",)

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder)
        self._installed = False
        self._listening: set[type] = set()
        self._captures: dict[type, FunctionCapture] = {}
        self._no_grad_calls: set[type] = set()

    def begin_step(self, cur: StepRecord) -> None:
        if self._installed:
            return
        self._installed = True
        for cls in user_function_classes():
            PATCHES.listen(cls, self)
            self._listening.add(cls)

    def on_apply(self, klass: type, args: tuple, kwargs: dict) -> bool:
        """A patched ``apply`` ran; True when this observer is done with that class."""
        if self.failed or self.rec._stack is None:  # switched off or the watch ended
            return True
        if klass in self._captures:
            return True
        ours, where = self._caller()
        if not ours:
            return False  # another model's forward (a second Doctor watches that one)
        if not torch.is_grad_enabled() or not any(
                t.requires_grad and t.is_floating_point() for t in tensors((args, kwargs))):
            self._no_grad_calls.add(klass)  # an eval pass, or inputs that need no gradient
            return False
        self._captures[klass] = capture_call(klass, args, kwargs, where)
        return True

    def on_apply_failed(self, exc: BaseException) -> None:
        self.rec.unit_failed(self, "autograd.Function.apply", exc)

    def _caller(self) -> tuple[bool, str | None]:
        """(is the call ours, where): the path of the innermost module of the watched
        model whose code is on the call stack (its ``forward`` called the Function; None
        for the model itself or the training loop). A call from inside a module with
        parameters that is not part of the watched model belongs to another model: not
        ours. Parameter-free modules (a loss) are looked through."""
        ids = self.rec.module_ids
        frame = sys._getframe(3)
        for _ in range(64):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, torch.nn.Module):
                if id(owner) in ids:
                    return True, ids[id(owner)] or None
                if next(owner.parameters(), None) is not None:
                    return False, None
            frame = frame.f_back
        return True, None

    def remove_hooks(self) -> None:
        listening, self._listening = self._listening, set()
        for cls in listening:
            PATCHES.leave(cls, self)

    def finalize(self, obs: Observations) -> None:
        captures = list(self._captures.values())
        for cls in self._no_grad_calls - set(self._captures):
            captures.append(FunctionCapture(
                cls=cls, name=cls.__name__,
                skipped="it was only called with grad disabled or on inputs that do not require grad, "
                        "so its backward never ran while watching"))
        if captures:
            self.rec.captured[_CAPTURED_KEY] = captures
        else:
            obs.custom_functions = []

    def release(self) -> None:
        self._captures = {}
        self._no_grad_calls = set()


def take_captures(captured: dict[str, Any]) -> list[FunctionCapture] | None:
    """The captures a finished watch left for verification (removed from ``captured``)."""
    return captured.pop(_CAPTURED_KEY, None)


# -- verify ----------------------------------------------------------------------------
class _NoVerdict(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Slot:
    def __init__(self, flat: list[torch.Tensor], value: torch.Tensor) -> None:
        self.index = len(flat)
        flat.append(value)


@contextlib.contextmanager
def _rng_untouched(devices: list[int]) -> Iterator[None]:
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _rel_error(fd: float, ad: float) -> float:
    if not (math.isfinite(fd) and math.isfinite(ad)):
        return math.inf
    scale = max(abs(fd), abs(ad))
    return 0.0 if scale < 1e-10 else abs(fd - ad) / scale


def verify_captures(captures: list[FunctionCapture], obs: Observations, *, seed: int = 0,
                    directions: int = 4, eps: float = 1e-6) -> None:
    """Verify every capture and store the records in ``obs.custom_functions`` (never
    raises: a failure is a skip reason)."""
    records = []
    for cap in captures:
        try:
            records.append(verify_capture(cap, seed=seed, directions=directions, eps=eps))
        except Exception as exc:  # pragma: no cover - verify_capture guards itself
            records.append({"kind": "function", "name": cap.name, "where": cap.where,
                            "skipped": f"internal error while verifying it: {exc!r}"})
        cap.args, cap.kwargs = (), {}
    obs.custom_functions = records


def verify_capture(cap: FunctionCapture, *, seed: int = 0, directions: int = 4, eps: float = 1e-6) -> dict[str, Any]:
    """The record of one Function: ``results`` per direction (``rel_error``, and
    ``noise_rel`` where the error is large), ``max_rel_error``, or ``skipped``."""
    record: dict[str, Any] = {
        "kind": "function", "name": cap.name, "where": cap.where, "input_shapes": cap.input_shapes,
        "method": "directional u^T J v", "source": "watch", "sliced": cap.sliced, "skipped": cap.skipped,
    }
    if cap.skipped:
        return record
    # torch.manual_seed (each evaluation) seeds every CUDA device: fork them all.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    last: Exception | None = None
    with _rng_untouched(devices), torch.enable_grad():
        for dtype, step in ((torch.float64, eps), (torch.float32, 1e-3)):
            try:
                with _default_dtype(dtype):
                    out = _measure(cap, dtype, step, seed, directions)
                record.update(out, dtype="float64" if dtype == torch.float64 else "float32", eps=step)
                return record
            except _NoVerdict as no:
                record["skipped"] = no.reason
                return record
            except Exception as exc:  # e.g. a kernel that only runs in float32
                last = exc
    where = "on the first rows of the batch it was called with" if cap.sliced else "on a copy of its inputs"
    record["skipped"] = f"re-running it {where} raised {type(last).__name__}: {last}"
    return record


def _measure(cap: FunctionCapture, dtype: torch.dtype, eps: float, seed: int, n_dir: int) -> dict[str, Any]:
    slots: list[torch.Tensor] = []

    def to_dtype(t: torch.Tensor) -> Any:
        if not t.is_floating_point():
            return t
        value = t.detach().to(dtype)
        return _Slot(slots, value) if t.requires_grad else value

    template = map_tensors((cap.args, cap.kwargs), to_dtype)
    if not slots:
        raise _NoVerdict("none of its floating-point inputs requires grad")
    gen = torch.Generator().manual_seed(seed)

    def run(values: list[torch.Tensor]) -> list[torch.Tensor]:
        a, kw = map_leaves(template, lambda s: values[s.index], lambda x: isinstance(x, _Slot))
        torch.manual_seed(seed)  # the same draws in every evaluation (forked stream)
        out = cap.cls.apply(*a, **kw)
        return [t for t in tensors(out) if t.is_floating_point() or t.is_complex()]

    def attempt(point: list[torch.Tensor]) -> tuple[list[dict[str, Any]], bool]:
        x = [p.detach().requires_grad_(True) for p in point]
        outs = run(x)
        if any(o.is_complex() for o in outs):
            raise _NoVerdict("it returns complex tensors (not checked)")
        diff = [i for i, o in enumerate(outs) if o.requires_grad]
        if not diff:
            raise _NoVerdict("none of its outputs requires grad (marked non-differentiable)")
        if not all(bool(torch.isfinite(t).all()) for t in [*x, *outs]):
            raise _NoVerdict("its inputs or outputs hold non-finite values on the captured call")
        with torch.no_grad():
            again = run(x)
        if any(not torch.equal(a.detach(), b) for a, b in zip(outs, again)):
            raise _NoVerdict("its forward is not reproducible: two calls on the same inputs, with torch's "
                             "generator re-seeded alike, differ, so finite differences of it say nothing")
        f0 = [outs[i].detach() for i in diff]
        xnorm = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in x)) or 1.0
        unit = torch.finfo(dtype).eps
        results: list[dict[str, Any]] = []
        flat_seen = False
        for _ in range(n_dir):
            us = [torch.randn(f.shape, generator=gen, dtype=torch.float64).to(f.device, f.dtype) for f in f0]
            vs = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype) for p in x]
            norm = math.sqrt(sum(float((v * v).sum()) for v in vs)) or 1.0
            vs = [v / norm for v in vs]
            grads = torch.autograd.grad([outs[i] for i in diff], x, grad_outputs=us, retain_graph=True,
                                        allow_unused=True)
            ad = sum(float((g * v).sum()) for g, v in zip(grads, vs) if g is not None)

            def along(h: float) -> list[torch.Tensor]:
                with torch.no_grad():
                    got = run([p.detach() + h * v for p, v in zip(x, vs)])
                return [got[i] for i in diff]

            def dot(fs: list[torch.Tensor]) -> float:
                return sum(float((f * u).sum()) for f, u in zip(fs, us))

            plus, minus = along(eps), along(-eps)
            if all(torch.equal(p, f) and torch.equal(m, f) for p, m, f in zip(plus, minus, f0)) and abs(ad) > 1e-10:
                # Not a single output moved at +-eps: either the forward ignores these
                # inputs (then a non-zero backward is wrong) or it is piecewise constant
                # (rounding, sign), which a larger step shows.
                if any(not all(torch.equal(a, f) for a, f in zip(along(s * xnorm), f0))
                       for s in (1e-3, 1e-2, 1e-1, 1.0)):
                    flat_seen = True
                    continue
            up, um = dot(plus), dot(minus)
            fd = (up - um) / (2 * eps)
            out: dict[str, Any] = {"fd": fd, "ad": ad, "rel_error": _rel_error(fd, ad)}
            if out["rel_error"] > 1e-4 and math.isfinite(fd):
                # How far round-off, truncation and kinks move the finite difference: the
                # spread of the estimates at eps/2, eps and 2 eps; the second difference
                # f(x+h) + f(x-h) - 2 f(x), element by element (O(h^2) where f is smooth,
                # O(h) at a kink or a jump inside the step: there the central difference
                # may differ from any one-sided derivative by up to |f+ + f- - 2 f0| / 2h,
                # summed without cancellation); at least the dtype's round-off of u^T f
                # over eps.
                estimates = [fd, (dot(along(eps / 2)) - dot(along(-eps / 2))) / eps,
                             (dot(along(2 * eps)) - dot(along(-2 * eps))) / (4 * eps)]
                spread = max(estimates) - min(estimates) if all(map(math.isfinite, estimates)) else math.inf
                one_sided = sum(float(((p + m - 2 * f).abs() * u.abs()).sum())
                                for p, m, f, u in zip(plus, minus, f0, us)) / (2 * eps)
                floor = unit * sum(float((f.abs() * u.abs()).sum()) for f, u in zip(f0, us)) / eps
                noise = max(spread, one_sided, floor)
                scale = max(abs(fd), abs(ad))
                out["noise_rel"] = noise / scale if scale > 0 else math.inf
            results.append(out)
        return results, flat_seen

    point = [s for s in slots]
    results, flat_seen = attempt(point)
    jittered = False
    if results and all(_ambiguous(r) for r in results):
        # Every direction crossed a kink or a jump (inputs sitting exactly at a ReLU's
        # zero, ties): the backward is checked again a little away from them.
        jit = [p + 1e-3 * (float(p.detach().abs().mean()) or 1.0)
               * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype) for p in point]
        results, flat_seen = attempt(jit)
        jittered = True
    decisive = [r for r in results if not _ambiguous(r)]
    if not decisive:
        if flat_seen:
            raise _NoVerdict("its forward is piecewise constant in its inputs (rounding, sign, a threshold): "
                             "its backward is a surrogate by design, as in a straight-through estimator, which "
                             "finite differences cannot verify")
        raise _NoVerdict("it is not differentiable at its captured inputs: every checked direction crosses a "
                         "kink or a jump, so finite differences give no verdict")
    worst = max(r["rel_error"] for r in results)
    return {"results": results, "max_rel_error": worst, "directions": len(results), "jittered": jittered}


# gradient-check's default `noise_margin`: here it only decides whether to look again a
# little away from a kink, or to give no verdict; the check judges the recorded results.
_AMBIGUOUS_MARGIN = 3.0


def _ambiguous(r: dict[str, Any]) -> bool:
    noise = r.get("noise_rel")
    return noise is not None and (not math.isfinite(noise) or r["rel_error"] <= _AMBIGUOUS_MARGIN * noise)
