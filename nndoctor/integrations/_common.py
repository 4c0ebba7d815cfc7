"""What the Lightning and Hugging Face callbacks share: a Doctor watching the trainer's
real steps (hooks owned by one ExitStack, closed on every path), a captured batch, the
experiments at the end (or at a chosen step), and one merged Report.

Framework-free: the callbacks translate their framework's events into these calls.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Sequence

__all__ = ["DoctorSession", "require"]


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ImportError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"nndoctor.integrations.{extra} needs the `{module.split('.')[0]}` package, which is not "
            f"installed ({exc}). Install it (e.g. `pip install {extra}`), or use nndoctor.Doctor "
            f"directly around your own training loop."
        ) from exc


def _detached(value: Any) -> Any:
    """A copy of a batch that later in-place changes by the trainer cannot alter."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):  # a plain dict (a BatchEncoding or other mapping becomes one)
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_detached(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def default_split(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a training batch: a pair ``(x, y)``, or a dict with a
    ``labels`` / ``label`` / ``target(s)`` / ``y`` key (the rest are the model's inputs)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        for key in ("labels", "label", "targets", "target", "y"):
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key]
    raise ValueError(
        f"cannot split a training batch of type {type(batch).__name__} into (inputs, targets); "
        f"pass batch_fn=lambda batch: (inputs, targets) to the DoctorCallback"
    )


class DoctorSession:
    """The Doctor's life across one ``fit``/``train`` call."""

    def __init__(
        self,
        *,
        watch_steps: int | None,
        checkup: bool,
        checkup_at: int | None,
        loss_fn: Any,
        batch_fn: Callable[[Any], tuple[Any, Any]] | None,
        select: "str | Iterable[str] | None",
        ignore: "str | Iterable[str] | None",
        thresholds: dict[str, dict[str, float]] | None,
        checkup_options: dict[str, Any] | None,
    ) -> None:
        if watch_steps is not None and watch_steps < 1:
            raise ValueError(f"watch_steps must be a positive number of steps or None, got {watch_steps!r}")
        if checkup_at is not None and checkup_at < 1:
            raise ValueError(f"checkup_at must be a positive step number or None, got {checkup_at!r}")
        self.watch_steps = watch_steps
        self.checkup = checkup
        self.checkup_at = checkup_at
        self.loss_fn = loss_fn
        self.batch_fn = batch_fn or default_split
        self.select, self.ignore, self.thresholds = select, ignore, thresholds
        self.checkup_options = dict(checkup_options or {})
        self.doctor: Any = None
        self._stack: contextlib.ExitStack | None = None
        self._batch: Any = None
        self._checkup_report: Any = None
        self._checkup_done = False
        self.notes: list[str] = []
        self.report: Any = None

    # -- life cycle --------------------------------------------------------------------
    def start(self, model: Any, optimizers: Sequence[Any] | None) -> None:
        from .._doctor import Doctor

        self.close()  # a second fit() with the same callback starts afresh
        self.report, self._batch, self._checkup_report, self._checkup_done = None, None, None, False
        self.notes = []
        import torch

        opts = []
        for o in optimizers or []:
            # accelerate's AcceleratedOptimizer, Lightning's LightningOptimizer: wrappers
            # whose `.optimizer` is the torch optimizer that really steps.
            while isinstance(getattr(o, "optimizer", None), torch.optim.Optimizer):
                o = o.optimizer
            if isinstance(o, torch.optim.Optimizer) and o not in opts:
                opts.append(o)
        self.doctor = Doctor(model, optimizer=opts or None, select=self.select, ignore=self.ignore,
                             thresholds=self.thresholds)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.doctor.watch())
        except BaseException:
            stack.close()
            raise
        self._stack = stack

    @property
    def watching(self) -> bool:
        return self._stack is not None

    def close(self) -> None:
        """Remove every hook (safe to call twice, on exceptions too)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> "DoctorSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def on_batch(self, batch: Any) -> None:
        if self._batch is None and (self.checkup or self.checkup_at):
            self._batch = _detached(batch)

    def after_step(self, step: int) -> None:
        """``step``: optimizer steps completed so far."""
        if self.watching and self.watch_steps is not None and step >= self.watch_steps:
            self.close()
        if self.checkup_at is not None and step >= self.checkup_at and not self._checkup_done:
            self._run_checkup()

    def finish(self) -> Any:
        """Stop watching, run the experiments if still due, and build the Report."""
        self.close()
        if self.doctor is None:
            return None
        report = self.doctor.report()
        if (self.checkup or self.checkup_at) and not self._checkup_done:
            self._run_checkup()
        if self._checkup_report is not None:
            merged = report.merge(self._checkup_report)
            merged.experiments = {**report.experiments, **self._checkup_report.experiments}
            report = merged
        report.notes = list(dict.fromkeys([*report.notes, *self.notes]))
        self.report = report
        return report

    # -- experiments -------------------------------------------------------------------
    def _loss_fn(self) -> Any:
        if self.loss_fn is not None:
            return self.loss_fn
        graph = self.doctor.captured_batch.get("loss_graph") if self.doctor is not None else None
        kind = getattr(graph, "kind", None)
        if kind is None or getattr(graph, "multi_term", False):
            return None
        from .._runner import loss_from_graph

        return loss_from_graph(kind)

    def _run_checkup(self) -> None:
        self._checkup_done = True
        import torch

        from .._report import Report

        def skipped(reason: str) -> None:
            from .._doctor import build_checks

            ids = [c.id for c in build_checks("experiment", select=self.select, ignore=self.ignore)]
            self._checkup_report = Report(checks_skipped=[{"check": c, "reason": reason} for c in ids])

        if self._batch is None:  # the first model call the Doctor captured (HF: keyword arguments)
            captured = self.doctor.captured_batch
            args, kwargs = captured.get("args") or (), captured.get("kwargs") or {}
            if kwargs and not args:
                self._batch = _detached(dict(kwargs))
            elif args and not kwargs:
                inputs = args[0] if len(args) == 1 else tuple(args)
                target = captured.get("target")
                self._batch = _detached((inputs, target)) if target is not None else None
        if self._batch is None:
            return skipped("no training batch was captured")
        try:
            inputs, targets = self.batch_fn(self._batch)
        except Exception as exc:
            return skipped(f"{exc}")
        loss_fn = self._loss_fn()
        if loss_fn is None:
            return skipped("the loss is computed inside the training step and nndoctor cannot rebuild it; "
                           "pass loss_fn=... to the DoctorCallback")
        try:
            with torch.inference_mode(False), torch.enable_grad():
                self._checkup_report = self.doctor.checkup((inputs, targets), loss_fn=loss_fn,
                                                           **self.checkup_options)
        except Exception as exc:  # the user's training finished: report, do not crash it
            return skipped(f"the experiments failed: {type(exc).__name__}: {exc}")


class SessionOwner:
    """What both callbacks expose of their ``DoctorSession`` (``self._session``)."""

    _session: DoctorSession

    @property
    def report(self) -> Any:
        """The Report of the last training run (None before one ended)."""
        return self._session.report

    @property
    def doctor(self) -> Any:
        return self._session.doctor

    def close(self) -> None:
        """Remove every hook now (safe to call twice)."""
        self._session.close()
