"""The Doctor: attaches to a model, watches training, runs checks, returns a Report."""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from ._observations import Observations
from ._observe import Recorder, Schedule
from ._report import Report
from ._checkset import CheckSet, judge, split_ids
from .checks import Check

__all__ = ["Doctor", "NNDoctorUsageError", "CheckSet", "build_checks"]


class NNDoctorUsageError(ValueError):
    """Bad input to nndoctor: the message says what to do."""


def _split_ids(value: "str | Iterable[str] | None") -> list[str] | None:
    return split_ids(value)


def build_checks(
    kind: str | None = None,
    *,
    select: "str | Iterable[str] | None" = None,
    ignore: "str | Iterable[str] | None" = None,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> list[Check]:
    """The checks of ``kind`` ("passive", "experiment" or None for all) of the check set
    resolved from ``select``/``ignore``/``thresholds`` (see :class:`CheckSet`). Unknown
    ids and threshold names of any kind raise a usage error naming the valid ones."""
    checkset = CheckSet.resolve(select, ignore, thresholds)
    return {"passive": checkset.passive, "experiment": checkset.experiment, None: list(checkset)}[kind]


def evaluate(checks: Sequence[Check], obs: Observations) -> tuple[list, list[str], list[dict[str, str]]]:
    """(findings, run, skipped) of ``checks`` on ``obs``; see :func:`judge`."""
    findings, run, skipped = judge(checks, obs)
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

    ``select``/``ignore``/``thresholds`` are resolved here, once, into the Doctor's
    :class:`CheckSet` (on top of ``checks``, an already resolved set, when given) and
    every check of every kind is built: an unknown id or threshold name raises
    ``NNDoctorUsageError`` now. ``watch``/``report``, ``checkup`` and ``gather`` all
    judge with that set.
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
        checks: CheckSet | None = None,
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
        if checks is not None and not isinstance(checks, CheckSet):
            raise NNDoctorUsageError(f"checks= takes a CheckSet, got {type(checks).__name__}")
        self.checkset = CheckSet.resolve(select, ignore, thresholds, base=checks, where="Doctor(...)")
        for name, value, least in (("sample_every", sample_every, 1), ("dense_steps", dense_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise NNDoctorUsageError(f"{name} must be a whole number >= {least}, got {value!r}")
        self.schedule = Schedule(dense_steps=dense_steps, sample_every=sample_every)
        self._recorder: Recorder | None = None
        self._samplers: Any = None
        self._last_recorder: Recorder | None = None
        self._observations: Observations | None = None
        self._stream: Any = None
        self.script: str | None = None

    @property
    def checks(self) -> list[Check]:
        """The watch-mode checks of the Doctor's check set."""
        return self.checkset.passive

    @property
    def _thresholds(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.checkset.thresholds.items()}

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

            self._stream = TensorBoardStream(logdir, thresholds={c.id: c.values for c in self.checks})
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
        self._verify_custom_functions(obs)
        verdict = judge(self.checks, obs)
        return Report(
            findings=verdict.findings, checks_run=verdict.run, checks_skipped=verdict.skipped,
            steps_observed=len([s for s in obs.steps if s.backward_calls > 0]),
            model={"class": obs.model_class or type(self.model).__name__,
                   "parameters": obs.n_parameters, "trainable": obs.n_trainable},
            script=self.script, observations=obs, logdir=getattr(self, "_logdir", None),
            notes=[*obs.notes, *verdict.notes],
        )

    def _verify_custom_functions(self, obs: Observations) -> None:
        """The custom autograd.Functions the watch saw, checked once (when the first report
        is built, not while training): see ``nndoctor.observers.custom_functions``."""
        rec = self._last_recorder
        if rec is None or self._recorder is not None:
            return
        from .observers.custom_functions import take_captures, verify_captures

        captures = take_captures(rec.captured)
        if captures:
            verify_captures(captures, obs)

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
    def checkup(
        self,
        batch: Any,
        loss_fn: Any = None,
        *,
        select: "str | Iterable[str] | None" = None,
        ignore: "str | Iterable[str] | None" = None,
        optimizer: "torch.optim.Optimizer | None" = None,
        model: nn.Module | None = None,
        **options: Any,
    ) -> Report:
        """Run the experiments (overfit a tiny batch, random inputs, LR sweep, gradient
        check, loss at init) on copies of the model and optimizer. The model, optimizer,
        RNG streams and modes are left exactly as they were.

        The Doctor's check set decides which experiments run and their thresholds;
        ``select``/``ignore`` narrow it for this call (``select`` replaces the selection,
        ``ignore`` removes from it), ``thresholds=`` overrides values for this call.
        ``optimizer``: the optimizer whose type and settings the copies train with (the
        Doctor's by default). ``model``: a module to train instead of the Doctor's model
        (e.g. a wrapper around it reducing its output to what the loss takes). Other
        options are the probe knobs (``nndoctor._experiments.DEFAULT_OPTIONS``)."""
        from ._experiments import run_checkup

        checkset = self.checkset.narrowed(select, ignore, where="checkup(...)")
        if options.get("thresholds") is not None:
            checkset = CheckSet.resolve(None, None, options.pop("thresholds"), base=checkset,
                                        where="checkup(...)")
        options.pop("thresholds", None)
        # After a watch, the intervention that confirms the root cause must target the
        # diagnosis of watch + checkup (what the merged report shows), not the checkup's alone.
        if "prior_findings" not in options and self._observations is not None and self._recorder is None:
            options["prior_findings"] = self.report().findings
        # The pairing experiment holds out the samples of the batches the watch saw.
        if "pairs" not in options and self._recorder is None:
            options["pairs"] = self.captured_batch.get("pairs")
        # The LRs the watch saw: a warm-up is judged at the LR the script warms up to.
        if "lr_history" not in options and self._observations is not None and self._recorder is None:
            options["lr_history"] = [s.lr for s in self._observations.steps if s.lr is not None]
        return run_checkup(
            model if model is not None else self.model, batch,
            optimizer=optimizer if optimizer is not None else self.optimizer,
            loss_fn=loss_fn or self.loss_fn, checks=checkset.checkup, **options,
        )
