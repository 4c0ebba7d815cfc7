"""The ``overfit-tiny-batch`` check: judged from the ``"overfit"`` record of the overfit
probe (``nndoctor.probes.overfit``). See ``nndoctor.checks.experiments`` for how experiment
checks read their records."""

from __future__ import annotations

import math
from typing import Any, Iterable

from .._probe_records import OverfitCurve, OverfitRun
from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Skip, Threshold
from ._experiment_common import CS231N, DEEPCHECKER, KARPATHY, _curve, _data, _finite, _fmt, _inconclusive_if_not_finite

__all__ = ["OverfitTinyBatch"]


class OverfitTinyBatch(Check):
    """## What it measures
    Trains a copy of the model on a tiny fixed batch (the first `n_samples` samples of the
    batch given to `checkup`, 8 by default) for at most `max_steps` steps with your
    optimizer's type and hyper-parameters (dropout switched off), and records the loss
    (and, for classification, the accuracy on that batch) at every step. The batch is
    fitted when the loss falls to `loss_fraction` of its starting value (measured above
    the loss's floor on the batch: the targets' entropy for BCE with soft targets, the
    smoothed target's entropy with label smoothing, 0 otherwise) or, for classification,
    when every sample is classified correctly (`min_accuracy`). When your
    optimizer fails, the experiment is repeated with Adam(lr=1e-3) to tell a broken model
    from a badly set optimizer.

    When the batch is not fitted, the shape of the best run's curve decides the verdict
    (progress: the share of the way from the start to the floor that the best loss
    covered):
    - it barely moved (progress below `min_progress`), rose or blew up: an error, the
      signature of a bug;
    - it was still falling when the steps ran out (the last quarter of the steps
      brought at least `still_falling_share` of the fall, or removed that share of what
      was left): an info, the model learns and the budget was short (a small or
      warming-up learning rate);
    - it levelled off after covering at least `plateau_progress` of the way: a warning,
      a floor of the model (capacity, or a design that cannot memorise);
    - it stalled before that: an error (squashed outputs, mismatched targets).
    The probe runs seeded; torch, Python and numpy draws are the same for every copy.

    ## Why it matters
    Any working model can memorise a handful of samples. If it cannot, no amount of data
    or training time will help: something between the input, the parameters and the loss
    is broken (a detached graph, labels that do not match the outputs, a loss fed the wrong
    kind of input, frozen layers), or the learning rate is far too low. It is the single
    most useful sanity check in every practitioner checklist.

    ## How to fix
    - If it fits with Adam(lr=1e-3) but not with your optimizer: raise the learning rate
      (see `lr-sweep`), or check momentum / weight decay / the optimizer's parameter list.
    - If the loss barely moves with either optimizer: look for a graph cut (`.detach()`,
      `.item()`, `.data`, `torch.no_grad()` in `forward`), frozen layers, outputs and
      targets that are paired wrongly, or a loss fed probabilities instead of logits.
    - If the loss falls but too slowly: the model may lack capacity; remove regularisation
      and normalisation first (checklist step 2), then grow the model.

    ## Known false positives
    - Models with heavy stochastic regularisation in `forward` (beyond `nn.Dropout`,
      which the experiment switches off) may not reach the target in the step budget.
    - Losses whose minimum is far from zero never fall to a small fraction of their
      start. The experiment knows the floor of BCE with soft targets (the targets'
      entropy), cross-entropy with label smoothing or soft targets, and KL (0), and judges
      the loss above it; for other such losses (entropy terms, variational bounds) raise
      `loss_fraction`.
    - Very deep models with a plain SGD at a small LR can need more than `max_steps`;
      the message then says that Adam fits it. A run still falling steadily when the
      steps run out is an info, not a warning: slow is not broken.
    - A run with your optimizer that covered at least `near_fit_progress` (90%) of the way
      and was still falling, while the stand-in optimizer fits: an info (a few more steps).
    - Models that cannot memorise a batch by design: a bigram language model's logits
      depend on the current token only, so its floor on a batch is the conditional
      entropy of the next token given the current one, not 0. Its curve falls, then
      levels off above the target: a warning at most (the `plateau` verdict), never the
      error of a loss that does not move.
    - Language models early in training: they first learn how often each token occurs,
      and their loss sits at the entropy of the batch's token frequencies before they use
      the context (word_language_model's LSTM levels off at 4.66 in 100 Adam steps; its
      8 samples' token entropy is 4.6). A run that levelled off within `prior_band` of
      that entropy, while the random-input experiment shows the outputs follow the input,
      is info. A model whose outputs ignore the input also sits there; random-input-loss
      then reports it, and without that experiment the warning stays.
    - A learning-rate warm-up: a checkup taken in the first steps of a warm-up sees a
      small LR (nanoGPT sets it by hand every step, rising from 0). When the LRs seen
      over the watched steps rise and a scheduler keeps a larger base LR
      (`initial_lr`), the copy trains at the base LR; otherwise a steady fall at the
      small LR is an info, and so is "Adam fits, yours is slower" during a warm-up.

    ## Example
    A classifier whose labels are fed through `y.float().softmax(0)` into `MSELoss`, or
    whose `forward` returns `self.head(features.detach() * 0)`: the loss stays near its
    start for 100 steps, and the finding is an error.

    ## References
    - The training checklist: "start with a small sample of the data: overfit it first".
    - Karpathy, "overfit one batch" ("as little as two" examples, reach the lowest loss).
    - cs231n: overfit ~20 examples to zero cost with regularisation off.
    - TheDeepChecker: overfit a single batch of 16.
    - Lightning issue #1668: users want an assertion, not just `overfit_batches`.
    """

    id = "overfit-tiny-batch"
    title = "The model cannot overfit a tiny fixed batch"
    family = "experiments"
    severity = Severity.ERROR
    kind = "experiment"
    needs = ("experiments",)
    thresholds = (
        Threshold(
            "loss_fraction",
            0.1,
            "the batch counts as fitted once the loss falls to this fraction of its "
            "starting value (10%: for 10 classes, 2.30 -> 0.23, about 80% mean probability "
            "on the right class); memorising 8 samples gets there within tens of steps",
            "fraction of the initial loss",
        ),
        Threshold(
            "min_accuracy",
            1.0,
            "classification: the batch also counts as fitted once this share of its samples "
            "is classified correctly (100%, the assertion users ask for)",
            "fraction",
        ),
        Threshold(
            "max_steps",
            100,
            "optimizer steps allowed to fit the batch (Karpathy/cs231n/TheDeepChecker use "
            "tens to 1000; 100 keeps the whole checkup within seconds, and a healthy model "
            "memorises 8 samples in well under 100 Adam steps)",
            "steps",
        ),
        Threshold(
            "min_progress",
            0.15,
            "a run that never brings the loss this share of the way from its start to its floor "
            "'barely moves': an error (the broken setups of the bug zoo stay below 15% with their "
            "own optimizer, healthy ones that are merely slow reach 20-90%)",
            "fraction of the way to the floor",
        ),
        Threshold(
            "still_falling_share",
            0.1,
            "a run is 'still falling' when the last quarter of its steps brought at least this "
            "share of its whole fall (a steady linear fall brings 25%) or removed this share of "
            "the loss left above the floor (a converging curve); the stalls of the bug zoo measure "
            "0-3% on both: the budget ran out on a model that learns, an info",
            "fraction of the fall",
        ),
        Threshold(
            "plateau_progress",
            0.5,
            "a run that levelled off after covering at least this share of the way to the floor "
            "has met a floor of the model (capacity, a bigram model's conditional entropy): a "
            "warning; one that stalled before it, an error",
            "fraction of the way to the floor",
        ),
        Threshold(
            "prior_band",
            0.1,
            "a run that levelled off within this share of the batch's class-frequency entropy, "
            "on a model whose outputs follow its input (random-input experiment), is a sequence "
            "model's first plateau (it predicts how often each class occurs): info, not a warning "
            "(word_language_model's LSTM: 4.66 against 4.6)",
            "fraction of the entropy",
        ),
        Threshold(
            "near_fit_progress",
            0.9,
            "when the stand-in optimizer fits the batch, your own run that was still falling "
            "after covering at least this share of the way to the target only needed a few more "
            "steps (minGPT's AdamW at 5e-4 covers 97% in 100 steps): an info; the slow runs of "
            "parameters missing from the optimizer stay well below it and stay a warning",
            "fraction of the way to the target",
        ),
    )
    citations = (CHECKLIST, KARPATHY, CS231N, DEEPCHECKER)

    def fitted_at(self, run: OverfitCurve | dict[str, Any], floor: float = 0.0) -> int | None:
        """The first step at which the run met this check's target (the loss above
        ``floor``, the loss's minimum on the batch, measured by the probe), or None."""
        curve = OverfitCurve.coerce(run)
        return curve.fitted_at(self.loss_fraction, self.min_accuracy, self.max_steps, floor)

    def evaluate(self, obs: Any) -> Iterable[Finding]:
        data = _data(obs, "overfit", "overfit-tiny-batch", OverfitRun)
        runs = data.runs
        if not runs:
            raise Skip("the overfit experiment recorded no run")
        user = runs[0]
        _inconclusive_if_not_finite((user.losses or [math.nan])[0], "overfit")
        floor = data.loss_floor if isinstance(data.loss_floor, (int, float)) and math.isfinite(data.loss_floor) else 0.0
        if self.fitted_at(user, floor) is not None:
            return
        n = data.get("n_samples")
        steps = len(user.get("losses") or []) - 1
        start = (user.get("losses") or [math.nan])[0]
        final = (user.get("losses") or [math.nan])[-1]
        best = min((v for v in user.get("losses") or [] if math.isfinite(v)), default=math.nan)
        acc = (user.get("accuracies") or [None])[-1]
        acc_text = f", accuracy {acc:.0%}" if acc is not None else ""
        evidence = {
            "n_samples": n,
            "steps": steps,
            "task": data.get("task"),
            "optimizer": user.get("optimizer"),
            "start_loss": start,
            "final_loss": final,
            "best_loss": best,
            "final_accuracy": acc,
            "loss_fraction_reached": (final / start) if start and math.isfinite(start) else None,
            "curve": _curve(user.get("losses") or []),
            "accuracy_curve": _curve(user["accuracies"]) if user.get("accuracies") else None,
            "regularisation_off": data.get("regularisation_off", []),
            "loss_floor": floor,
            "loss_floor_reason": data.loss_floor_reason,
        }
        head = (
            f"With {user.get('optimizer')}, the model did not fit {n} fixed samples in "
            f"{steps} steps: loss {_fmt(start)} -> {_fmt(final)}{acc_text}"
            f" (target: {self.loss_fraction:.0%} of the start"
            + (f" above the loss's floor {_fmt(floor)}, {data.loss_floor_reason}" if floor else "")
            + (f" or {self.min_accuracy:.0%} accuracy" if user.get("accuracies") is not None else "")
            + ")."
        )
        retry = runs[1] if len(runs) > 1 else None
        shape = self.curve_shape(user, floor)
        evidence["progress"], evidence["still_falling"] = shape
        if data.get("lr_note"):
            evidence["lr_note"] = data.get("lr_note")
        lr_words = f" ({data.get('lr_note')})" if data.get("lr_note") else ""
        learning = self.learns(shape)
        from_retry = False
        if retry is not None:
            evidence["retry_optimizer"] = retry.get("optimizer")
            evidence["retry_curve"] = _curve(retry.get("losses") or [])
            at = self.fitted_at(retry, floor)
            evidence["retry_fitted_at"] = at
            if at is not None:
                # The advice follows the evidence: a loss that blew up (non-finite, or ended
                # above its start) calls for a smaller learning rate, never a larger one.
                blew_up = not _finite(user.get("losses") or []) or (
                    math.isfinite(final) and math.isfinite(start) and final > start)
                evidence["diverged"] = blew_up
                # the share of the way to the target (the floor plus loss_fraction of the span)
                to_target = shape[0] / (1 - self.loss_fraction) if shape[0] is not None and self.loss_fraction < 1 else None
                evidence["progress_to_target"] = to_target
                nearly = learning and to_target is not None and to_target >= self.near_fit_progress
                if nearly and not blew_up:
                    # Yours nearly got there and was still falling: more steps, not a fault.
                    yield self.finding(
                        head + lr_words
                        + f" It covered {to_target:.0%} of the way to the target and was still falling, and "
                        f"{retry.get('optimizer')} fits the same samples in {at} steps: the model, loss and "
                        "labels learn; with your settings it only needs a few more steps.",
                        severity=Severity.INFO, verdict="nearly_fitted", **evidence,
                        fix="Nothing is broken. If training is slow overall, see the `lr-sweep` finding.",
                    )
                    return
                if (data.get("warmup") or (learning and data.get("lr_lowered"))) and not blew_up:
                    # Your optimizer learns too, steadily, only more slowly, at an LR the
                    # script has lowered for now (a warm-up): a schedule, not a fault. (A
                    # slow run at the LR the optimizer was built with stays a warning: the
                    # retry also fits when parameters are missing from your optimizer.)
                    yield self.finding(
                        head + lr_words
                        + (f" It was still falling steadily ({shape[0]:.0%} of the way to the target's floor), "
                           "and" if learning else "")
                        + f" {retry.get('optimizer')} fits the same samples in {at} steps: the model, loss "
                        "and labels can learn; at the learning rate your schedule had lowered it to for "
                        "now, it only needs more steps (see `lr-sweep` for the rate itself).",
                        severity=Severity.INFO, verdict="learns_slowly", **evidence,
                        fix="Nothing is broken. If training is slow overall, see the `lr-sweep` finding.",
                    )
                    return
                yield self.finding(
                    head + lr_words
                    + f" {retry.get('optimizer')} fits the same samples in {at} steps, so the "
                    "model, loss and labels can learn: your learning rate or optimizer "
                    "settings are the problem"
                    + (" (with yours the loss rose or blew up: the learning rate is too high)."
                       if blew_up else "."),
                    severity=Severity.WARNING, verdict="optimizer_settings",
                    fix=(
                        "Lower the learning rate (x0.1; see the `lr-sweep` finding and the LR range "
                        "test in the report), or add warm-up or gradient clipping; Adam(lr=1e-3) "
                        "is a safe baseline."
                        if blew_up
                        else "Raise the learning rate (see the `lr-sweep` finding and the LR range "
                        "test in the report), or check momentum, weight decay and that every "
                        "parameter is in the optimizer; Adam(lr=1e-3) is a safe baseline."
                    ),
                    **evidence,
                )
                return
            r_losses = retry.get("losses") or [math.nan]
            head += (
                f" {retry.get('optimizer')} did not fit them either "
                f"(loss {_fmt(r_losses[0])} -> {_fmt(r_losses[-1])})."
            )
            r_shape = self.curve_shape(retry, floor)
            evidence["retry_progress"], evidence["retry_still_falling"] = r_shape
            # The run that got furthest speaks for the model: where it levels off is the
            # model's limit, which a slower run has not reached yet (a user run that blew up
            # has no say).
            if r_shape[0] is not None and (shape[0] is None or r_shape[0] > shape[0]
                                           or not _finite(user.get("losses") or [])):
                shape, from_retry = r_shape, True
        progress, falling = shape
        nonfinite = not _finite(user.get("losses") or [])
        rose = math.isfinite(final) and math.isfinite(start) and final > start
        if nonfinite or rose:
            words = "became NaN/Inf" if nonfinite else "ended above its start"
            if from_retry and (
                    self.learns(shape) or (progress or 0.0) >= self.plateau_progress):
                yield self.finding(
                    head + lr_words + f" With your settings the loss {words}, while "
                    f"{retry.get('optimizer')} brings it {progress:.0%} of the way down: the model "
                    "learns; your learning rate is too high (see `lr-sweep`).",
                    severity=Severity.WARNING, verdict="optimizer_settings",
                    fix="Lower the learning rate (x0.1; see the `lr-sweep` finding), or add warm-up or "
                        "gradient clipping; Adam(lr=1e-3) is a safe baseline.",
                    **evidence,
                )
                return
            why = (
                " The loss became NaN/Inf: look for log(0), division by zero or a learning "
                "rate far too high (see `nan-trace`)."
                if nonfinite else
                " The loss rose, which points to a learning rate far too high or a wrong sign "
                "in the loss or its gradient."
            )
            yield self.finding(head + lr_words + why, verdict="nonfinite" if nonfinite else "rises", **evidence)
            return
        if progress is None or progress < self.min_progress:
            why = (
                " The loss barely moves (or rises), which points to a bug rather than a tuning issue: "
                "outputs not connected to the parameters (a `.detach()`, `.item()` or "
                "`no_grad` in `forward`), frozen layers, targets that do not match the "
                "outputs, or a loss fed the wrong kind of input (probabilities vs logits)."
            )
            yield self.finding(head + lr_words + why, verdict="barely_moves", **evidence)
            return
        if falling:
            # A steady fall cut short by the step budget is the signature of a slow
            # optimisation (a small or warming-up learning rate, a hard batch), not of a
            # fault: faults stall or never start.
            yield self.finding(
                head + lr_words
                + f" The loss was still falling steadily when the {steps} steps ran out ({progress:.0%} of "
                "the way to the target's floor): the model learns, only more slowly than this "
                "budget allows; this is not the stall a bug produces.",
                severity=Severity.INFO, verdict="learns_slowly",
                fix="Nothing is broken. For a verdict, raise `max_steps`; if training is slow overall, "
                    "see the `lr-sweep` finding.",
                **evidence,
            )
            return
        if progress >= self.plateau_progress and self._at_label_prior(obs, data, retry if from_retry else user, evidence):
            # A language model's first plateau: it has learned how often each token occurs
            # (the loss sits at the batch's token-frequency entropy) and not yet which token
            # follows which. An LSTM sits there for a while; the random-input experiment has
            # shown its outputs do follow its input, so the input is not cut off.
            yield self.finding(
                head + lr_words
                + f" The loss fell {progress:.0%} of the way, then levelled off at "
                f"{_fmt(evidence['plateau_loss'])}, the entropy of the batch's class frequencies "
                f"({_fmt(evidence['label_entropy'])}): the model has learned how often each class occurs, "
                "not yet which sample has which. Sequence models sit on this plateau early in training "
                "before they use their context; the random-input experiment shows the outputs do follow "
                "the input, so it is not cut off.",
                severity=Severity.INFO, verdict="label_prior_plateau",
                fix="Nothing to fix if the loss leaves this level in real training; if it never does, "
                    "check that the inputs reach the output (see `random-input-loss`).",
                **evidence,
            )
            return
        if progress >= self.plateau_progress:
            yield self.finding(
                head + lr_words
                + f" The loss fell {progress:.0%} of the way to the target's floor, then levelled off: "
                "a floor this model cannot go below on these samples (a model whose outputs "
                "see little of the input, like a bigram language model, cannot memorise a batch; "
                "or too little capacity, or regularisation that holds it back). Not the stall of "
                "a disconnected graph; check it is the floor you expect.",
                severity=Severity.WARNING, verdict="plateau",
                fix="If the model is meant to memorise a batch, remove regularisation and "
                    "normalisation first, then grow the model; if its design limits what it can fit "
                    "(a bigram model, a bottleneck), ignore this or raise `loss_fraction`.",
                **evidence,
            )
            return
        why = (
            f" The loss fell {progress:.0%} of the way to the target's floor and then stalled far above "
            "it, which points to a bug rather than a tuning issue: outputs squashed before the loss "
            "(a softmax, ReLU or sigmoid in front of a loss that expects logits), targets that do "
            "not match the outputs, or most of the model cut off from the gradient."
        )
        yield self.finding(head + lr_words + why, verdict="stalls", **evidence)

    def _at_label_prior(self, obs: Any, data: Any, run: Any, evidence: dict[str, Any]) -> bool:
        """The run's best loss is within `prior_band` of the batch's class-frequency entropy,
        and the random-input experiment saw the outputs move with the input (by at least its
        check's `min_output_change`). Records the numbers in ``evidence`` either way."""
        prior = data.get("label_entropy")
        losses = [v for v in (run.get("losses") or []) if math.isfinite(v)]
        if prior is None or not math.isfinite(prior) or prior <= 0 or not losses:
            return False
        best = min(losses)
        random_input = (getattr(obs, "experiments", None) or {}).get("random_input") or {}
        change = {} if random_input.get("skipped") else dict(random_input.get("output_change") or {})
        evidence.update(plateau_loss=best, label_entropy=prior, output_change=change or None)
        if abs(best - prior) > self.prior_band * prior:
            return False
        # The bar random-input-loss uses to call the outputs independent of the input
        # (log-probabilities move little relative to their size, so no larger bar).
        bar = float(((getattr(obs, "check_thresholds", None) or {}).get("random-input-loss") or {})
                    .get("min_output_change", 1e-6))
        return bool(change) and all(v is not None and v >= bar for v in change.values())

    def curve_shape(self, run: OverfitCurve | dict[str, Any], floor: float = 0.0) -> tuple[float | None, bool]:
        """(progress, still falling) of one run: progress is the share of the way from the
        start to the loss's floor that the best loss covered (None when the start is not
        finite); still falling when the last loss is (about) the best and the last quarter
        of the steps brought at least `still_falling_share` of the whole fall, or removed
        at least that share of the loss left above the floor."""
        losses = [float(v) for v in (OverfitCurve.coerce(run).losses or [])]
        if not losses or not math.isfinite(losses[0]):
            return None, False
        finite = [v for v in losses if math.isfinite(v)]
        start, best = losses[0], min(finite)
        span = start - floor
        if span <= 0:
            return None, False
        progress = (start - best) / span
        if len(finite) < len(losses) or len(losses) < 8 or start - best <= 0:
            return progress, False
        q = losses[(3 * (len(losses) - 1)) // 4]
        fall = start - best
        tail = (q - losses[-1]) / fall
        # A curve converging on the target shrinks what is left of the loss by a steady
        # share (exponential decay): a small share of the whole fall, but not a stall.
        shrink = (q - losses[-1]) / (q - floor) if q - floor > 0 else 0.0
        near_best = losses[-1] - best <= 0.05 * fall
        return progress, near_best and max(tail, shrink) >= self.still_falling_share

    def learns(self, shape: tuple[float | None, bool]) -> bool:
        """A run that covered at least `min_progress` of the way and was still falling."""
        progress, falling = shape
        return progress is not None and progress >= self.min_progress and falling
