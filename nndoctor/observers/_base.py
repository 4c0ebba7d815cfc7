"""What every observer unit shares: the sampling schedule, the buffer of device values
waiting for the next sync, the device-side reduction helpers and the unit base class."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import numpy as np
import torch

from .._tree import named_tensors

if TYPE_CHECKING:  # pragma: no cover
    from .._observations import StepRecord
    from ._recorder import Recorder

NAN = float("nan")


@dataclass
class Schedule:
    """Which steps get the full (hooked) treatment."""

    dense_steps: int = 4
    sample_every: int = 20
    trace_steps_after_nonfinite: int = 3

    def __post_init__(self) -> None:
        if self.sample_every < 1 or self.dense_steps < 0:
            raise ValueError(
                f"sample_every must be >= 1 and dense_steps >= 0 (got {self.sample_every}, "
                f"{self.dense_steps})"
            )

    def sampled(self, step: int) -> bool:
        return step < self.dense_steps or step % self.sample_every == 0


def float_tensors(obj: Any) -> list[tuple[str, torch.Tensor]]:
    """Non-empty floating tensors inside a module's outputs/inputs, with their position
    (nesting walked 4 levels deep: deeper structures are not activations we judge)."""
    return [(k, t) for k, t in named_tensors(obj, max_depth=3) if t.is_floating_point() and t.numel() > 0]


def mean_std(x: torch.Tensor, subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (0-d, float32) of ``x``. A non-finite element makes the mean
    non-finite, which is how non-finite outputs are detected.

    On CUDA one fused Welford reduction (``var_mean``: one kernel). On CPU ``var_mean``
    is ~100x slower than a plain sum (measured: 5 ms vs 0.05 ms on 1M floats), so the
    mean comes from a sum and the std from the norm of the centred values (two-pass, so
    no cancellation when |mean| >> std). ``subset``: the size of the strided subset the
    std of large tensors is estimated from (default :data:`STD_SUBSET`)."""
    xf = x.detach()
    if xf.dtype not in (torch.float32, torch.float64):
        xf = xf.float()
    if xf.is_cuda:
        var, mean = torch.var_mean(xf, correction=0)
        return mean.float(), var.float().sqrt()
    n = max(xf.numel(), 1)
    mean = xf.sum() / n
    subset = subset or STD_SUBSET
    if n >= 2 * subset:
        # Large outputs: the mean (and so the non-finite flag) from every element, the
        # std from a strided subset (a prime stride: no aliasing onto one channel or
        # column), centred on the exact mean: two passes over the tensor become one.
        sub = xf.reshape(-1)[:: _prime_at_least(n // subset)]
        std = torch.linalg.vector_norm(sub - mean) / math.sqrt(sub.numel())
    else:
        std = torch.linalg.vector_norm(xf - mean) / math.sqrt(n)
    return mean.float(), std.float()


# Outputs of at least twice this many elements get their std estimated from a strided
# subset of about this many (at least half: relative error well under 1%).
STD_SUBSET = 1 << 16


def _prime_at_least(k: int) -> int:
    k = max(k, 2)
    while any(k % d == 0 for d in range(2, int(k ** 0.5) + 1)):
        k += 1
    return k


def tensor_stats(x: torch.Tensor) -> torch.Tensor:
    """[mean, std] of ``x`` in float32 (see :func:`mean_std`)."""
    return torch.stack(mean_std(x))


Sink = Callable[[list[float]], None]


@dataclass
class Pending:
    """Device tensors waiting for the next sync, with what to do with their values and
    the unit that asked (a sink that raises fails that unit only)."""

    tensors: list[torch.Tensor] = field(default_factory=list)
    sinks: list[tuple[Sink, Any]] = field(default_factory=list)

    def add(self, tensor: torch.Tensor, sink: Sink, owner: Any = None) -> None:
        self.tensors.append(tensor.detach().reshape(-1))
        self.sinks.append((sink, owner))

    def resolve(self, on_error: Callable[[Any, BaseException], None]) -> None:
        if not self.tensors:
            return
        tensors, sinks = self.tensors, self.sinks
        self.tensors, self.sinks = [], []
        # Grouped by device and dtype: float32 values (nearly all) are concatenated as
        # they are (a float32 is exact as a Python float), so a sync costs no per-tensor
        # conversion; other dtypes are widened to float64.
        groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float64
            groups.setdefault((t.device, dtype), []).append(i)
        values: list[list[float]] = [[] for _ in tensors]
        for (_, dtype), idxs in groups.items():
            parts = [tensors[i] if tensors[i].dtype == dtype else tensors[i].to(dtype) for i in idxs]
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            host = flat.tolist()  # one device->host transfer per device (and dtype)
            pos = 0
            for i in idxs:
                n = tensors[i].numel()
                values[i] = host[pos : pos + n]
                pos += n
        for (sink, owner), vals in zip(sinks, values):
            if owner is not None and owner.failed:
                continue
            try:
                sink(vals)
            except Exception as exc:
                on_error(owner, exc)


class NonFiniteAlarm:
    """The cheap per-step check that arms layer-by-layer tracing: units hand it 0-d or
    small device tensors that are non-finite exactly when a value of the step was (the
    loss, the vector of gradient norms); :meth:`poll` at the step's close says whether
    one was. No device op is added and nothing waits for the device: CPU tensors are
    read in place through numpy (no scalar extraction: the same no-sync path the tests
    count); on CUDA the flags are copied (``non_blocking``) to pinned host memory and
    read at a later close, once the copy has landed (tracing then starts a step or two
    later); on other devices the next sampled step's sync arms tracing, as before."""

    def __init__(self) -> None:
        self._flags: list[torch.Tensor] = []
        self._in_flight: list[tuple[torch.Tensor, Any]] = []  # (pinned host copy, CUDA event)

    def watch(self, tensor: torch.Tensor) -> None:
        self._flags.append(tensor)

    def clear(self) -> None:
        self._flags = []

    def poll(self) -> bool:
        flags, self._flags = self._flags, []
        bad = False
        device_flags = []
        for t in flags:
            if t.device.type == "cpu":
                bad = bad or not _all_finite(t)
            elif t.is_cuda:
                device_flags.append(t.reshape(-1).float())
            # other devices: no copy we can tell has landed; the next sync's scan arms
        if device_flags:
            try:
                vec = device_flags[0] if len(device_flags) == 1 else torch.cat(device_flags)
                host = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
                host.copy_(vec, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._in_flight.append((host, event))
            except Exception:  # the alarm only brings tracing forward: never raise
                pass
        waiting = []
        for host, event in self._in_flight:
            if not event.query():
                waiting.append((host, event))
            else:
                bad = bad or not _all_finite(host)
        self._in_flight = waiting
        return bad


def _all_finite(t: torch.Tensor) -> bool:
    """A CPU tensor's values are all finite (read through numpy: no aten op but a detach).
    A tensor that cannot be read so (a fake or functional tensor) counts as finite: the
    alarm only brings tracing forward, the sync still scans every value."""
    try:
        if t.dtype not in (torch.float32, torch.float64, torch.float16):
            t = t.float()  # bfloat16 has no numpy dtype
        return bool(np.isfinite(t.numpy()).all())
    except Exception:
        return True


class Observer:
    """One measurement. The recorder owns the hooks and the step boundaries and calls a
    unit's event methods (only the ones it overrides). A unit that raises is switched
    off alone: the recorder notes it and the checks listed in ``feeds`` are skipped with
    "internal error in observer <name>".

    Events: ``begin_step(cur)``, ``model_pre(cur, args, kwargs)``,
    ``model_post(cur, module, args, output)``, ``loss_pre(cur, module, args)``,
    ``before_backward(cur, loss, first_after_update)``, ``after_backward(cur)`` (updates
    by hand), ``before_update(cur)`` (an optimizer is about to step),
    ``closure_backward(cur)`` (the first backward inside an optimizer's ``step()``, before
    which the step had none: a closure optimizer's first evaluation), ``step_skipped(cur)``
    (GradScaler skipped it), ``update_unseen(cur)`` (the step began before the watch
    could see it), ``close_step(cur)``, ``finalize(obs)``; ``step_hooks(model)``
    returns the per-module hook handles of a sampled step (removed when it ends)."""

    name: ClassVar[str] = "observer"
    # Check ids whose verdict reads this unit's data.
    feeds: ClassVar[tuple[str, ...]] = ()
    # Called on unsampled steps too (keep those methods cheap: no per-layer work).
    every_step: ClassVar[bool] = False

    def __init__(self, recorder: "Recorder") -> None:
        self.rec = recorder
        self.failed: str | None = None

    def add(self, tensor: torch.Tensor, sink: Sink) -> None:
        """Queue a device value for the next sync; ``sink`` gets it as floats."""
        self.rec.pending.add(tensor, sink, self)

    def remove_hooks(self) -> None:
        """Remove any hook the unit registered itself (the watch ends; safe twice)."""

    def release(self) -> None:
        """Drop every reference to the user's tensors (the watch is finished)."""

    # Event methods are looked up by name; the base class defines none of them so
    # the recorder can tell which events a unit listens to.


EVENTS = ("begin_step", "model_pre", "model_post", "loss_pre", "before_backward", "after_backward",
          "closure_backward", "before_update", "step_skipped", "update_unseen", "close_step", "finalize",
          "step_hooks")


def listens(unit: Observer, event: str) -> bool:
    return callable(getattr(type(unit), event, None))


class Units:
    """One recorder's units by name, and per (event, sampled step?) the live units that
    listen to it: on sampled steps all of them, on unsampled steps only the
    ``every_step`` ones (so a plain step calls little). A unit that raises in an event is
    reported to ``recorder.unit_failed``, which switches it off."""

    def __init__(self, classes: Iterable[type[Observer]], recorder: "Recorder") -> None:
        self.by_name: dict[str, Observer] = {}
        for cls in classes:
            unit = cls(recorder)
            self.by_name[unit.name] = unit
        self._on_error = recorder.unit_failed
        self.handlers: dict[tuple[str, bool], list[tuple[Observer, Callable[..., Any]]]] = {}
        self.route()

    def __getitem__(self, name: str) -> Observer:
        return self.by_name[name]

    def values(self) -> Iterable[Observer]:
        return self.by_name.values()

    def route(self) -> None:
        for event in EVENTS:
            for sampled in (True, False):
                self.handlers[(event, sampled)] = [
                    (u, getattr(u, event)) for u in self.by_name.values()
                    if u.failed is None and listens(u, event) and (sampled or u.every_step)
                ]

    def emit(self, event: str, sampled: bool, *args: Any) -> None:
        for unit, method in self.handlers[(event, sampled)]:
            try:
                method(*args)
            except Exception as exc:
                self._on_error(unit, event, exc)

    def switch_off(self, unit: Observer) -> None:
        with contextlib.suppress(Exception):
            unit.remove_hooks()
        with contextlib.suppress(Exception):
            unit.release()
        self.route()

    def remove_hooks(self) -> None:
        for unit in self.by_name.values():
            with contextlib.suppress(Exception):
                unit.remove_hooks()

    def release(self) -> None:
        for unit in self.by_name.values():
            with contextlib.suppress(Exception):
                unit.release()


__all__ = ["Schedule", "Pending", "NonFiniteAlarm", "Observer", "Units", "tensor_stats", "mean_std", "float_tensors", "NAN", "EVENTS", "listens"]
