"""nndoctor for Lightning 2.x: a callback that watches the LightningModule's real
training steps and runs the experiments when training ends (or at a chosen step).

    import lightning as L
    from nndoctor.integrations.lightning import DoctorCallback

    doctor = DoctorCallback(watch_steps=50)
    L.Trainer(max_steps=200, callbacks=[doctor]).fit(model, loader)
    doctor.report.print()

The hooks are on from ``on_train_start`` until ``watch_steps`` optimizer steps have been
watched (or training ends), and removed on every path, exceptions included. The
experiments run on copies of the module with the first training batch, at
``on_train_end`` (or after ``checkup_at`` steps); they need the module's ``forward`` to
give what the loss takes, and the loss: ``loss_fn=...``, or the one nndoctor recognises
in the autograd graph of the watched steps (cross-entropy, NLL, BCE, MSE...).

Findings are logged to the Trainer's logger: counts through ``log_metrics`` for any
logger, and the full report when the logger has a TensorBoard experiment.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ._common import DoctorSession, SessionOwner, require

_pl = require("lightning.pytorch", "lightning")

__all__ = ["DoctorCallback"]


class DoctorCallback(SessionOwner, _pl.Callback):
    """Watch training with nndoctor; ``callback.report`` is the Report after ``fit``.

    ``watch_steps``: stop watching after this many optimizer steps (None: the whole run).
    ``checkup``: run the experiments at ``on_train_end``; ``checkup_at``: run them once
    this many steps are done instead. ``loss_fn``: ``loss_fn(model(inputs), targets)``
    for the experiments. ``batch_fn``: batch -> ``(inputs, targets)`` (default: a pair,
    or a dict with a ``labels``-like key). ``select``/``ignore``/``thresholds`` as for
    ``Doctor``; ``checkup_options``: the probe knobs of ``Doctor.checkup``.
    """

    def __init__(
        self,
        *,
        watch_steps: int | None = None,
        checkup: bool = True,
        checkup_at: int | None = None,
        loss_fn: Any = None,
        batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
        select: "str | Iterable[str] | None" = None,
        ignore: "str | Iterable[str] | None" = None,
        thresholds: dict[str, dict[str, float]] | None = None,
        checkup_options: dict[str, Any] | None = None,
        log: bool = True,
    ) -> None:
        super().__init__()
        self._session = DoctorSession(
            watch_steps=watch_steps, checkup=checkup, checkup_at=checkup_at, loss_fn=loss_fn,
            batch_fn=batch_fn, select=select, ignore=ignore, thresholds=thresholds,
            checkup_options=checkup_options,
        )
        self.log_report = log

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._session.start(pl_module, list(trainer.optimizers or []))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._session.on_batch(batch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._session.after_step(int(trainer.global_step))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        report = self._session.finish()
        if report is not None and self.log_report:
            _log(trainer, report)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._session.close()  # hooks off; Lightning re-raises the user's exception

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._session.close()


def _log(trainer: Any, report: Any) -> None:
    """Counts to every logger; the whole report to a TensorBoard experiment."""
    loggers = list(getattr(trainer, "loggers", None) or [])
    step = int(getattr(trainer, "global_step", 0))
    counts = {"nndoctor/errors": float(len(report.errors)), "nndoctor/warnings": float(len(report.warnings))}
    for logger in loggers:
        try:
            logger.log_metrics(counts, step=step)
            experiment = getattr(logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "add_scalar") and hasattr(experiment, "add_text"):
                report.to_tensorboard(experiment)
                report.logdir = report.logdir or getattr(logger, "log_dir", None)
        except Exception as exc:  # logging must not break the end of a finished training
            report.notes.append(f"logging the report to {type(logger).__name__} failed: {exc!r}")
