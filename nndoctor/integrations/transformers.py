"""nndoctor for Hugging Face ``transformers.Trainer``: a ``TrainerCallback`` that watches
the model's real training steps and runs the experiments when training ends (or at a
chosen step).

    from nndoctor.integrations.transformers import DoctorCallback

    doctor = DoctorCallback(watch_steps=50)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[doctor]).train()
    doctor.report.print()

The hooks are on from ``on_train_begin`` until ``watch_steps`` optimizer steps have been
watched (or training ends). ``TrainerCallback`` has no exception event: to have the hooks
removed when ``train()`` raises, use the callback as a context manager around it
(``with DoctorCallback() as doctor: trainer.train()``), or call ``doctor.close()``.

The experiments replay the first batch the model was called with (its keyword
arguments; ``labels`` are the targets) on copies of the model, with ``loss_fn(outputs,
labels)``: by default cross-entropy on ``outputs.logits`` for class labels (token
classification and language modelling flatten the positions, ignoring -100) and MSE for
float labels. When ``args.report_to`` includes ``tensorboard`` the report is written to
the run ``nndoctor`` beside the Trainer's own TensorBoard runs (``args.logging_dir`` in
transformers 4, ``$TENSORBOARD_LOGGING_DIR`` or ``<output_dir>/runs`` in 5).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ._common import DoctorSession, SessionOwner, require

_transformers = require("transformers", "transformers")

__all__ = ["DoctorCallback", "logits_loss", "model_inputs"]


def model_inputs(kwargs: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` from the keyword arguments the Trainer called the model with
    (the Trainer's own bookkeeping such as ``num_items_in_batch`` dropped)."""
    from ._common import default_split

    if isinstance(kwargs, dict):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("num_items_in_batch", "return_loss")}
    return default_split(kwargs)


def logits_loss(outputs: Any, labels: Any) -> Any:
    """Cross-entropy on ``outputs.logits`` for integer labels (positions flattened, -100
    ignored), MSE for float labels."""
    import torch
    import torch.nn.functional as F

    logits = outputs.logits if hasattr(outputs, "logits") else (outputs[0] if isinstance(outputs, tuple) else outputs)
    if labels.dtype in (torch.int64, torch.int32):
        if logits.dim() > 2:
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return F.cross_entropy(logits, labels, ignore_index=-100)
    return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))


class DoctorCallback(SessionOwner, _transformers.TrainerCallback):
    """Watch ``Trainer.train()`` with nndoctor; ``callback.report`` is the Report after it.

    ``watch_steps``: stop watching after this many optimizer steps (None: the whole run).
    ``checkup``: run the experiments at ``on_train_end``; ``checkup_at``: run them once
    this many steps are done instead. ``loss_fn``: ``loss_fn(model(**inputs), labels)``
    (default :func:`logits_loss`). ``batch_fn``: the model's keyword arguments ->
    ``(inputs, targets)``. ``select``/``ignore``/``thresholds`` as for ``Doctor``;
    ``checkup_options``: the probe knobs of ``Doctor.checkup``.
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
        self._session = DoctorSession(
            watch_steps=watch_steps, checkup=checkup, checkup_at=checkup_at,
            loss_fn=loss_fn if loss_fn is not None else logits_loss,
            batch_fn=batch_fn or model_inputs, select=select, ignore=ignore, thresholds=thresholds,
            checkup_options=checkup_options,
        )
        self.log_report = log

    def __enter__(self) -> "DoctorCallback":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if model is None:
            raise ValueError("nndoctor's DoctorCallback needs the model: the Trainer passes it to on_train_begin")
        self._session.start(model, [optimizer] if optimizer is not None else None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._session.after_step(int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        report = self._session.finish()
        if report is None or not self.log_report:
            return
        report_to = getattr(args, "report_to", None) or []
        if isinstance(report_to, str):
            report_to = [report_to]
        if "tensorboard" in report_to or "all" in report_to:
            logging_dir = _logging_dir(args)
            try:
                report.to_tensorboard(str(logging_dir))
                report.logdir = str(logging_dir)
            except Exception as exc:  # logging must not break the end of a finished training
                report.notes.append(f"writing the report to TensorBoard failed: {exc!r}")


def _logging_dir(args: Any) -> str:
    import os

    base = (getattr(args, "logging_dir", None) or os.environ.get("TENSORBOARD_LOGGING_DIR")
            or os.path.join(str(args.output_dir), "runs"))
    return os.path.join(os.path.expanduser(str(base)), "nndoctor")
