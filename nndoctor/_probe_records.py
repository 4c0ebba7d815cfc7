"""Typed records of the experiments ("probes") behind ``Doctor.checkup`` (no torch here).

A probe (``nndoctor.probes``) measures and returns one of these; the checks
(``nndoctor.checks.experiments``, ``chance-level-loss``) alone turn them into verdicts;
the reporters draw them. They live in ``Observations.experiments`` under the keys

=================  ======================  ==========================================
key                record                  judged by
=================  ======================  ==========================================
``init``           :class:`InitLoss`       ``chance-level-loss``
``overfit``        :class:`OverfitRun`     ``overfit-tiny-batch``
``random_input``   :class:`RandomInputRun` ``random-input-loss``
``pairing``        :class:`PairingRun`     ``random-input-loss``
``lr_sweep``       :class:`LrSweepRun`     ``lr-sweep``
``lr_range``       :class:`LrRangeTest`    ``lr-sweep``
``gradcheck``      :class:`GradcheckRun`   ``gradient-check``
=================  ======================  ==========================================

or :class:`ProbeSkipped` when a probe could not run. Every record holds plain Python
numbers, strings, lists and dicts (``to_dict()`` is JSON-able), and reads like the
mapping it used to be (``record["losses"]``, ``record.get("skipped")``), so a reader
written for plain dicts keeps working; the checks also accept plain dicts of the same
shape (``Record.coerce``), which is how their tests feed them numbers without a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

__all__ = [
    "Record",
    "ProbeSkipped",
    "InitLoss",
    "OverfitCurve",
    "OverfitRun",
    "RandomInputRun",
    "PairingRun",
    "LrTrial",
    "LrSweepRun",
    "LrRangeTest",
    "GradcheckUnit",
    "GradcheckModel",
    "GradcheckRun",
    "InterventionTrial",
    "InterventionRun",
    "RECORD_TYPES",
]


class Record:
    """Read access by field name, like the plain dict the record replaces."""

    # Fields holding nested records: name -> (record type, "one" | "list" | "dict").
    _nested: ClassVar[dict[str, tuple[type, str]]] = {}
    skipped: str | None

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, default) if key in self._names() else default
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def keys(self) -> list[str]:
        return list(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self._names()]

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The record as plain, JSON-able data (nested records included)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def coerce(cls, data: Any) -> Any:
        """``data`` as this record type: a record passes through, a plain dict of the same
        shape is converted (unknown keys ignored, missing ones take their defaults)."""
        if isinstance(data, cls) or data is None:
            return data
        if isinstance(data, Record):  # another record type: read it by field
            data = data.to_dict()
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a dict or a {cls.__name__}, got {type(data).__name__}")
        names = set(cls._names())
        kwargs = {k: v for k, v in data.items() if k in names}
        for name, (kind, shape) in cls._nested.items():
            value = kwargs.get(name)
            if value is None:
                continue
            if shape == "one":
                kwargs[name] = kind.coerce(value)
            elif shape == "list":
                kwargs[name] = [kind.coerce(v) for v in value]
            else:
                kwargs[name] = {k: kind.coerce(v) for k, v in value.items()}
        return cls(**kwargs)


@dataclass
class ProbeSkipped(Record):
    """A probe that did not run (or failed): the reason, shown in ``checks_skipped``."""

    skipped: str | None = None


@dataclass
class InitLoss(Record):
    """The loss of an untouched copy on the batch, and what the last layer predicts."""

    loss: float = math.nan
    loss_kind: str = "other"
    n_classes: int | None = None
    label_prior: list[float] | None = None  # share of each class among the targets
    predicted_prior: list[float] | None = None  # mean predicted probability per class
    final_bias: list[float] | None = None  # the bias of the layer producing the logits
    final_layer: str | None = None
    mode: str = "train"
    skipped: str | None = None

    @property
    def finite(self) -> bool:
        return isinstance(self.loss, (int, float)) and math.isfinite(self.loss)


@dataclass
class OverfitCurve(Record):
    """One optimizer's attempt at memorising the tiny batch: the loss (and accuracy) seen
    at each step before its update, plus the loss after the last update."""

    optimizer: str = ""
    is_user: bool = True
    losses: list[float] = field(default_factory=list)
    accuracies: list[float | None] | None = None
    skipped: str | None = None

    def fitted_at(
        self, loss_fraction: float, min_accuracy: float, max_steps: float, floor: float = 0.0,
    ) -> int | None:
        """The first step (at most ``max_steps``) at which the loss fell to
        ``loss_fraction`` of its start *above the loss's floor* (the lowest value the loss
        can take on these targets: 0 for most losses, the targets' entropy for BCE with
        soft targets, the smoothed distribution's entropy with label smoothing), or the
        accuracy reached ``min_accuracy``; None when it never did, or the loss is not
        finite before that. The probe stops on it and the check judges by it, so the two
        cannot disagree."""
        losses = self.losses or []
        if not losses or not _is_finite(losses[0]):
            return None
        floor = float(floor) if _is_finite(floor) else 0.0
        start = losses[0] - floor
        accuracies = self.accuracies
        for i, loss in enumerate(losses):
            if i > max_steps:
                break
            if not _is_finite(loss):
                return None
            if abs(start) < 1e-8 or loss - floor <= loss_fraction * start:
                return i
            if accuracies is not None and i < len(accuracies) and accuracies[i] is not None \
                    and accuracies[i] >= min_accuracy:
                return i
        return None


@dataclass
class OverfitRun(Record):
    """The overfit probe: the user's optimizer, then (when it did not fit) Adam(lr=1e-3)."""

    _nested: ClassVar[dict[str, tuple[type, str]]] = {"runs": (OverfitCurve, "list")}
    n_samples: int = 0
    max_steps: int = 0
    task: str = "regression"
    runs: list[OverfitCurve] = field(default_factory=list)
    regularisation_off: list[str] = field(default_factory=list)
    # The lowest value the loss can reach on this batch (targets' entropy for BCE with soft
    # targets, the smoothed target's entropy with label smoothing, 0 otherwise) and how it
    # was derived; "fitted" is judged on the loss above it.
    loss_floor: float = 0.0
    loss_floor_reason: str | None = None
    # Where the learning rate the copy trained with came from when it is not the
    # optimizer's current one (a scheduler's base LR during warm-up), or evidence that the
    # current one is mid warm-up; ``warmup``: the LR was seen rising over the watched steps.
    lr_note: str | None = None
    warmup: bool = False
    # The LR the copy trained with is well below the one the optimizer was built with (a
    # schedule, set by hand or by a scheduler, has lowered it: a warm-up or a decay).
    lr_lowered: bool = False
    # Classification: the entropy of the batch's class frequencies (ignored targets left
    # out), the loss of a model that predicts how often each class occurs and nothing
    # about which sample is which. None for other tasks.
    label_entropy: float | None = None
    skipped: str | None = None


@dataclass
class RandomInputRun(Record):
    """Real vs noise vs zero inputs: how much the outputs move, and the training (and
    held-out) loss curves of a copy trained on each variant."""

    output_change: dict[str, float] = field(default_factory=dict)  # variant -> relative change
    steps: int = 0
    n_train: int = 0
    n_holdout: int = 0
    optimizer: str = "Adam(lr=0.001)"
    train_loss: dict[str, list[float]] = field(default_factory=dict)  # variant -> curve
    holdout_loss: dict[str, list[float]] | None = None
    label_entropy: float | None = None
    shortened_from: int | None = None  # steps asked for, when the time budget cut them
    skipped: str | None = None


@dataclass
class PairingRun(Record):
    """Held-out loss with the real labels against permuted-label controls."""

    n_train: int = 0
    n_holdout: int = 0
    n_watched: int = 0            # samples of the pool that came from the watched batches
    n_duplicates: int = 0         # repeated samples dropped (a sample on both sides would leak)
    steps: int = 0
    optimizer: str = "Adam(lr=0.001)"
    n_permutations: int = 0
    changed_fraction: float = math.nan  # share of held-out labels a permutation changes (mean)
    prior_loss: float | None = None  # the best input-independent loss on the training half (label entropy)
    eval_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)          # whole training half, per eval step
    train_accuracy: list[float | None] = field(default_factory=list)
    holdout_real: list[float] = field(default_factory=list)        # held-out loss, real labels
    holdout_permuted: list[float] = field(default_factory=list)    # mean over the controls
    holdout_permuted_std: list[float] = field(default_factory=list)
    p_value: float = math.nan     # max-statistic permutation test over the eval points
    best_step: int | None = None  # eval step where the real labels gain most (in control stds)
    skipped: str | None = None

    @property
    def fit_fraction(self) -> float:
        """The training half's loss at the end, as a fraction of its start, or of the label
        prior's loss when that is lower (a start inflated by a huge init is no yardstick);
        nan if unknown."""
        tl = self.train_loss
        if len(tl) < 2 or not all(math.isfinite(v) for v in (tl[0], tl[-1])) or tl[0] <= 0:
            return math.nan
        ref = tl[0]
        if isinstance(self.prior_loss, (int, float)) and math.isfinite(self.prior_loss) and 0 < self.prior_loss < ref:
            ref = self.prior_loss
        return tl[-1] / ref

    @property
    def gain(self) -> float:
        """How much lower the real labels' held-out loss is than the controls' mean, as a
        fraction of the held-out loss at the start (the largest over the eval points)."""
        if not self.holdout_real or not self.holdout_permuted:
            return math.nan
        start = abs(self.holdout_permuted[0]) or abs(self.holdout_real[0])
        if not math.isfinite(start) or start == 0:
            return math.nan
        gaps = [(p - r) / start for r, p in zip(self.holdout_real, self.holdout_permuted)
                if math.isfinite(r) and math.isfinite(p)]
        return max(gaps) if gaps else math.nan


@dataclass
class LrTrial(Record):
    lr: float = math.nan
    losses: list[float] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class LrSweepRun(Record):
    """The same copy trained at LR x0.1, x1 and x10 (``trials`` keyed "0.1", "1", "10")."""

    _nested: ClassVar[dict[str, tuple[type, str]]] = {"trials": (LrTrial, "dict")}
    base_lr: float | None = None
    optimizer: str = ""
    steps: int = 0
    n_samples: int = 0
    trials: dict[str, LrTrial] = field(default_factory=dict)
    # The step count asked for, when the experiments' time budget cut it to ``steps``
    # (None: it ran at full length). A shortened trial shows less progress at every LR.
    shortened_from: int | None = None
    skipped: str | None = None


@dataclass
class LrRangeTest(Record):
    """Smith's LR range test: loss against an exponentially growing LR, with fastai's
    estimators of a good LR (``suggestions``) and their spread."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped_early: bool = False
    diverged_at: float | None = None
    base_lr: float | None = None
    optimizer: str = ""
    start_lr: float = 0.0
    end_lr: float = 0.0
    smoothing: float = 0.0
    stop_factor: float = 0.0
    suggestions: dict[str, float] = field(default_factory=dict)
    spread_decades: float | None = None
    suggested_lr: float | None = None
    shortened_from: int | None = None  # iterations asked for, when the time budget cut them
    skipped: str | None = None


@dataclass
class GradcheckUnit(Record):
    """One custom module or ``autograd.Function`` checked against finite differences.

    ``method`` is ``"gradcheck"`` (full Jacobians, ``torch.autograd.gradcheck`` at the
    tolerances it was given; ``mismatch`` holds its first line when it reported one) or
    ``"directional u^T J v"`` (``max_rel_error`` over random directions). ``raised``:
    the unit's forward or backward raised. The verdict is the check's."""

    kind: str = "module"  # module | function
    name: str = ""
    where: str | None = None
    input_shapes: list[list[int]] = field(default_factory=list)
    method: str | None = None
    mismatch: str | None = None
    max_rel_error: float | None = None
    raised: str | None = None
    skipped: str | None = None


@dataclass
class GradcheckModel(Record):
    """The whole model + loss: central differences against the gradient along a few
    directions; ``localized`` repeats the test per parameter tensor when asked to."""

    dtype: str = "float64"
    eps: float = 0.0
    directions: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)  # {direction, fd, ad, rel_error}
    max_rel_error: float | None = None
    localized: list[dict[str, Any]] = field(default_factory=list)  # {param, module, rel_error}
    no_gradient: list[str] = field(default_factory=list)
    loss: float | None = None
    # Why finite differences were not taken: two evaluations at the same weights differed.
    nondeterministic: str | None = None
    skipped: str | None = None


@dataclass
class GradcheckRun(Record):
    _nested: ClassVar[dict[str, tuple[type, str]]] = {
        "units": (GradcheckUnit, "list"),
        "model": (GradcheckModel, "one"),
    }
    units: list[GradcheckUnit] = field(default_factory=list)
    model: GradcheckModel | None = None
    batch: int = 0
    skipped: str | None = None


@dataclass
class InterventionTrial(Record):
    """One counterfactual: the fix a root-cause finding proposes, applied to a copy, and
    the probe that showed the symptom run before and after it (same seed, samples, steps
    and stopping rule as ``overfit-tiny-batch``). Whether it confirms the cause is decided
    by :func:`nndoctor._diagnosis.judge_intervention`, not here."""

    _nested: ClassVar[dict[str, tuple[type, str]]] = {
        "before": (OverfitCurve, "one"), "after": (OverfitCurve, "one"),
        "retry_before": (OverfitCurve, "one"), "retry_after": (OverfitCurve, "one"),
    }
    cause: str = ""
    intervention: str = ""  # "inputs standardised"
    probe: str = "overfit-tiny-batch"
    n_samples: int = 0
    max_steps: int = 0
    loss_fraction: float = 0.1
    min_accuracy: float = 1.0
    loss_floor: float = 0.0
    before: OverfitCurve | None = None
    after: OverfitCurve | None = None
    # The same pair with Adam(lr=1e-3), for fixes that are not the learning rate: a fix
    # can need another step size than the user's (standardised inputs at an LR tuned for
    # 0-255 ones). None when the user's optimizer already is that Adam.
    retry_before: OverfitCurve | None = None
    retry_after: OverfitCurve | None = None
    skipped: str | None = None


@dataclass
class InterventionRun(Record):
    """The interventions tried on the leading candidate causes, most likely first."""

    _nested: ClassVar[dict[str, tuple[type, str]]] = {"trials": (InterventionTrial, "list")}
    trials: list[InterventionTrial] = field(default_factory=list)
    skipped: str | None = None


# Observations.experiments key -> the record type a probe leaves there.
RECORD_TYPES: dict[str, type[Record]] = {
    "init": InitLoss,
    "overfit": OverfitRun,
    "random_input": RandomInputRun,
    "pairing": PairingRun,
    "lr_sweep": LrSweepRun,
    "lr_range": LrRangeTest,
    "gradcheck": GradcheckRun,
    "interventions": InterventionRun,
}


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
