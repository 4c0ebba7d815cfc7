"""The Doctor: attaches to a model, watches training, runs checks, returns a Report."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ._observations import Observations
from ._observe import Recorder, Schedule
from ._report import Report
from .checks import REGISTRY, Check
from .checks._registry import experiment_ids, passive_ids

__all__ = ["Doctor", "NNDoctorUsageError", "build_checks"]


class NNDoctorUsageError(ValueError):
    """Bad input to nndoctor: the message says what to do."""


def _split_ids(value: "str | Iterable[str] | None") -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def build_checks(
    kind: str | None = None,
    *,
    select: "str | Iterable[str] | None" = None,
    ignore: "str | Iterable[str] | None" = None,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> list[Check]:
    """Instantiate the checks of ``kind`` ("passive", "experiment" or None for all),
    filtered by ``select``/``ignore`` and with threshold overrides. Unknown ids and
    unknown threshold names raise a usage error naming the valid ones."""
    selected = _split_ids(select)
    ignored = set(_split_ids(ignore) or [])
    thresholds = thresholds or {}
    for cid in [*(selected or []), *ignored, *thresholds]:
        if cid not in REGISTRY:
            import difflib

            close = difflib.get_close_matches(cid, list(REGISTRY), n=2)
            raise NNDoctorUsageError(
                f"unknown check id {cid!r}"
                + (f" (did you mean {' or '.join(close)}?)" if close else "")
                + ". Run `nndoctor checks` for the list of ids."
            )
    ids = {"passive": passive_ids(), "experiment": experiment_ids(), None: list(REGISTRY)}[kind]
    out = []
    for cid in ids:
        if selected is not None and cid not in selected:
            continue
        if cid in ignored:
            continue
        try:
            out.append(REGISTRY[cid](**thresholds.get(cid, {})))
        except ValueError as exc:
            raise NNDoctorUsageError(str(exc)) from None
    # Validate what the checks need against what observations provide (at construction,
    # not at step 10,000).
    fields = {f.name for f in dataclasses.fields(Observations)} | {"losses", "sampled", "experiments"}
    for check in out:
        missing = [n for n in check.needs if n not in fields]
        if missing:
            raise NNDoctorUsageError(
                f"check {check.id!r} needs observations {missing} that no observer produces"
            )
    return out


def evaluate(checks: Sequence[Check], obs: Observations) -> tuple[list, list[str], list[dict[str, str]]]:
    findings, run, skipped = [], [], []
    for check in checks:
        try:
            found, reason = check.run(obs)
        except Exception as exc:  # a broken check must not hide the others' findings
            skipped.append({"check": check.id, "reason": f"internal error in the check: {exc!r}"})
            continue
        if reason is not None:
            skipped.append({"check": check.id, "reason": reason})
        else:
            run.append(check.id)
            findings.extend(found)
    return findings, run, skipped


class Doctor:
    """Diagnoses a model's training.

    >>> doctor = Doctor(model, optimizer=opt, loss_fn=criterion)
    >>> with doctor.watch():
    ...     train(model)            # your loop, unchanged
    >>> doctor.report().print()

    ``optimizer`` and ``loss_fn`` are optional: the loss is the tensor ``.backward()`` is
    called on, and optimizers stepping on the model's parameters are discovered.
    ``sample_every``/``dense_steps`` set how often the per-layer statistics are taken
    (the first ``dense_steps`` steps, then every ``sample_every``-th).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: "torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None" = None,
        loss_fn: Any = None,
        *,
        select: "str | Iterable[str] | None" = None,
        ignore: "str | Iterable[str] | None" = None,
        thresholds: dict[str, dict[str, float]] | None = None,
        sample_every: int = 20,
        dense_steps: int = 4,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise NNDoctorUsageError(
                f"Doctor(model, ...) needs a torch.nn.Module, got {type(model).__name__}. "
                f"Pass the model you train (e.g. Doctor(net, optimizer=opt))."
            )
        if optimizer is None:
            optimizers: list[torch.optim.Optimizer] = []
        elif isinstance(optimizer, torch.optim.Optimizer):
            optimizers = [optimizer]
        elif isinstance(optimizer, (list, tuple)) and all(isinstance(o, torch.optim.Optimizer) for o in optimizer):
            optimizers = list(optimizer)
        else:
            raise NNDoctorUsageError(
                f"optimizer must be a torch.optim.Optimizer (or a list of them), got {type(optimizer).__name__}."
            )
        if loss_fn is not None and not callable(loss_fn):
            raise NNDoctorUsageError(
                f"loss_fn must be callable (an nn.Module loss or a function), got {type(loss_fn).__name__}."
            )
        from ._compile import unwrap_compiled

        # A torch.compile'd model is watched through its original module (hooks on the
        # wrapper would prefix every name with `_orig_mod.` and see the output twice).
        self.model, self._compile_note = unwrap_compiled(model)
        # DistributedDataParallel / DataParallel: watch the wrapped module (the user's
        # layer names; experiments copy it without the wrapper's collectives); the
        # wrapper is kept for the DDP facts (find_unused_parameters...).
        self._wrapper: nn.Module | None = None
        if isinstance(self.model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            self._wrapper, self.model = self.model, self.model.module
        self.optimizers = optimizers
        self.loss_fn = loss_fn
        self._select, self._ignore, self._thresholds = select, ignore, thresholds
        self.checks = build_checks("passive", select=select, ignore=ignore, thresholds=thresholds)
        self.schedule = Schedule(dense_steps=dense_steps, sample_every=sample_every)
        self._recorder: Recorder | None = None
        self._samplers: Any = None
        self._last_recorder: Recorder | None = None
        self._observations: Observations | None = None
        self._stream: Any = None
        self.script: str | None = None

    @property
    def optimizer(self) -> "torch.optim.Optimizer | None":
        """The optimizer given, or else the first one discovered while watching."""
        if self.optimizers:
            return self.optimizers[0]
        rec = self._recorder or self._last_recorder
        found = rec.optimizers if rec is not None else []
        return found[0] if found else None

    # -- watch mode ----------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self, logdir: "str | None" = None) -> Iterator["Doctor"]:
        """Hooks on for the duration of the block; every one removed on exit, on
        exceptions too (the exception propagates unchanged). With ``logdir``, TensorBoard
        events are written at each sync point as training goes."""
        if self._recorder is not None:
            raise NNDoctorUsageError("this Doctor is already watching; watch() blocks cannot be nested")
        on_sync = None
        if logdir is not None:
            from .reporters.tensorboard import TensorBoardStream

            self._stream = TensorBoardStream(logdir)
            on_sync = self._stream.write_steps
        self._logdir = str(logdir) if logdir is not None else None
        recorder = Recorder(
            self.model, optimizers=self.optimizers, loss_fn=self.loss_fn, schedule=self.schedule,
            on_sync=on_sync,
        )
        self._recorder = recorder
        from . import _distributed

        samplers_ctx = _distributed.track_samplers()
        self._samplers = samplers_ctx.__enter__()
        try:
            recorder.attach()
        except BaseException:
            samplers_ctx.__exit__(None, None, None)
            self._recorder = None
            raise
        try:
            yield self
        finally:
            recorder.detach()
            samplers_ctx.__exit__(None, None, None)
            self._observations = recorder.finish()
            self._recorder = None
            self._last_recorder = recorder
            self._after_watch(self._observations)
            if self._stream is not None:
                stream, self._stream = self._stream, None
                try:
                    report = self._evaluate(self._observations)
                    report.logdir = str(logdir)
                    stream.write_report(report)
                    stream.close()
                except Exception as exc:
                    self._observations.notes.append(f"TensorBoard writer failed: {exc!r}")

    def _after_watch(self, obs: Observations) -> None:
        """Notes on what could not be observed, and the per-rank facts of a DDP run.
        Never raises: the user's exception (if any) must come through unchanged."""
        try:
            from . import _distributed
            from ._compile import is_compiled, verify_hooks_fired

            if self._compile_note:
                obs.notes.append(self._compile_note)
            note = verify_hooks_fired(obs, compiled=True if (self._compile_note or is_compiled(self.model)) else None)
            if note:
                obs.notes.append(note)
            if _distributed.is_distributed():
                obs.experiments[_distributed.LOCAL_FACTS] = _distributed.local_facts(
                    self._wrapper or self.model, obs, samplers=self._samplers)
        except Exception as exc:  # pragma: no cover - defensive
            obs.notes.append(f"post-watch analysis failed: {exc!r}")

    def gather(self) -> "Report | None":
        """Under torch.distributed: every rank calls this after watch(); rank 0 gets one
        merged report (rank-specific findings name their rank, DDP checks judged on all
        ranks' facts), the other ranks None. Without a process group: report()."""
        from . import _distributed

        return _distributed.gather_reports(self)

    def enter_forward(self, args: Any, kwargs: Any = None) -> None:
        """For a watch() entered from inside the model's own forward call (a global
        forward pre-hook, as the CLI runner does): record that call as the first one."""
        if self._recorder is None:
            raise NNDoctorUsageError("enter_forward() is only valid inside watch()")
        self._recorder.enter_forward(args, kwargs)

    def log_loss(self, loss: Any) -> None:
        """Tell the Doctor the loss of the current step, when ``.backward()`` is not called
        on it (e.g. a custom update rule). Cheap: the value stays on the device."""
        if self._recorder is not None:
            self._recorder.log_loss(loss)

    @property
    def steps_completed(self) -> int:
        """Training steps finished so far (while watching, or in the last watch)."""
        if self._recorder is not None:
            return self._recorder.steps_completed
        return len(self._observations.steps) if self._observations is not None else 0

    @property
    def captured_batch(self) -> dict[str, Any]:
        """The first training batch seen while watching: ``{"args", "kwargs"}`` as passed
        to the model, ``"target"`` when the loss exposed it and ``"loss_graph"``."""
        rec = self._recorder or self._last_recorder
        return dict(rec.captured) if rec is not None else {}

    @property
    def observations(self) -> Observations | None:
        return self._observations

    def _evaluate(self, obs: Observations) -> Report:
        findings, run, skipped = evaluate(self.checks, obs)
        return Report(
            findings=findings, checks_run=run, checks_skipped=skipped,
            steps_observed=len([s for s in obs.steps if s.backward_calls > 0]),
            model={"class": obs.model_class or type(self.model).__name__,
                   "parameters": obs.n_parameters, "trainable": obs.n_trainable},
            script=self.script, observations=obs, logdir=getattr(self, "_logdir", None),
            notes=list(obs.notes),
        )

    def report(self) -> Report:
        """What the watched steps showed. Before any watch(), an empty report that lists
        every check as skipped."""
        if self._observations is None:
            if self._recorder is not None:
                raise NNDoctorUsageError("call report() after the watch() block has ended")
            return Report(
                checks_skipped=[{"check": c.id, "reason": "no training was watched yet"} for c in self.checks],
                model={"class": type(self.model).__name__,
                       "parameters": sum(p.numel() for p in self.model.parameters()),
                       "trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad)},
            )
        return self._evaluate(self._observations)

    # -- experiments ---------------------------------------------------------------------
    def checkup(self, batch: Any, loss_fn: Any = None, **options: Any) -> Report:
        """Run the experiments (overfit a tiny batch, random inputs, LR sweep, gradient
        check, loss at init) on copies of the model and optimizer. The model, optimizer,
        RNG streams and modes are left exactly as they were."""
        from ._experiments import run_checkup

        return run_checkup(
            self.model, batch, optimizer=self.optimizer, loss_fn=loss_fn or self.loss_fn,
            select=self._select, ignore=self._ignore, **options,
        )
