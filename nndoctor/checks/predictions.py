"""Prediction checks: what the model predicts, read from the tensor the loss is fed."""

from __future__ import annotations

import math
from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import fmt, median


def _pct(x: float) -> str:
    """A share as a percentage, with a decimal near 0 and 1 (0.4%, not 0%)."""
    return f"{x:.1%}" if 0.0 < x < 0.01 or 0.99 < x < 1.0 else f"{x:.0%}"


class PredictionCollapse(Check):
    """## What it measures
    What the model predicts, from the tensor the loss is fed, on the sampled steps: for
    a classifier the share of the batch predicted as the most common class (argmax of
    the logits, or the sign of a binary logit) against the same share in the targets;
    for a regression the std of each output across the batch against the targets' std.
    It fires when, on every one of the later sampled steps (the last half, at least 2),
    the predictions sit on one class or a constant while the targets vary; as info only
    when they were already there at the first sampled step (the model never moved: not
    a collapse in training, and other findings name why), except for a regression whose
    targets are not standardised (std above `max_target_std`): that is the cause, and a
    warning. With the label prior it says when class imbalance is what bites. Steps
    after a non-finite loss are not judged.

    ## Why it matters
    A model that always predicts the majority class reaches the label prior's loss and
    stops there: with 2% positives and plain BCE, "always negative" is 98% accurate and
    a cheap minimum. The loss curve looks like a plateau; nothing in the gradients or
    activations is wrong. Only the predictions show it (Karpathy: visualise predictions;
    the checklist: class imbalance).

    ## How to fix
    - Imbalanced labels: weight the loss (`BCEWithLogitsLoss(pos_weight=neg/pos)`, `CrossEntropyLoss(weight=...)`) or sample the minority more often (`WeightedRandomSampler`).
    - Initialise the last layer's bias to the log prior so the model starts at the prior, then learns the rest.
    - Balanced labels but one predicted class: the outputs ignore the input; check the learning rate (too high), dead units, and that inputs and labels are paired.
    - Constant regression output: check the learning rate and the input scale, and that the targets are standardised.

    ## Known false positives
    - Tasks where one class really is right for almost every sample of the watched
      batches (very rare events): read the message's label prior.
    - Language models early in training predicting the most frequent token everywhere:
      only the later sampled steps are judged, but a short watch may end before that phase.

    ## Example
    A fraud classifier with 2% positives trained with plain `BCEWithLogitsLoss()`: after
    a few hundred steps every prediction is "not fraud" and the loss sits at 0.1.

    ## References
    - Karpathy, "A Recipe for Training Neural Networks", 2019 (visualise predictions; init the bias to the prior).
    - The training checklist (class imbalance).
    - PyTorch docs, BCEWithLogitsLoss `pos_weight`, WeightedRandomSampler.
    """

    id = "prediction-collapse"
    title = "Predictions collapsed to one class or a constant"
    family = "loss"
    severity = Severity.WARNING
    needs = ("steps",)
    thresholds = (
        Threshold("min_predicted_share", 0.95, "share of the batch predicted as one class on every later sampled step", "fraction"),
        Threshold("max_minority_ratio", 0.5, "predicted share of the other classes / their share in the targets, below which the minority is ignored", "ratio"),
        Threshold("min_prior_share", 0.8, "label prior of the predicted class from which imbalance is named as the cause", "fraction"),
        Threshold("max_std_ratio", 0.01, "regression: output std across the batch / target std below which the output is constant", "ratio"),
        Threshold("max_target_std", 10.0, "regression: target std above which targets of a constant output are called unscaled (a warning even from the start)", "target units"),
    )
    citations = (Citation("Karpathy, 'A Recipe for Training Neural Networks', 2019"), CHECKLIST,
                 Citation("PyTorch documentation, BCEWithLogitsLoss pos_weight / WeightedRandomSampler"))

    def evaluate(self, obs) -> Iterable[Finding]:
        recs = [(r.step, r.loss_values) for r in obs.steps if r.sampled and getattr(r, "loss_values", None) is not None]
        if len(recs) < 3:
            raise Skip("fewer than 3 sampled steps recorded what the loss was fed (a library classification or "
                       "regression loss is needed)")
        graphs = [r.loss_graph for r in obs.steps if r.loss_graph is not None]
        if any(g.broadcast_from is not None for g in graphs):
            raise Skip("the loss broadcast prediction and target to another shape (see loss-input-format)")
        later = recs[-max(2, len(recs) // 2):]
        bad = [r.step for r in obs.steps if r.loss is not None and not math.isfinite(r.loss)]
        if bad and bad[0] <= later[-1][0]:
            raise Skip(f"inconclusive: the loss is not finite from step {bad[0]} (see nan-trace); "
                       "predictions of non-finite outputs say nothing")
        kinds = {v.kind for _, v in recs}
        if kinds <= {"classes", "binary"}:
            yield from self._classes(recs, later)
        elif kinds == {"regression"}:
            yield from self._regression(recs, later)
        else:
            raise Skip("the loss's kind changed between steps")

    def _classes(self, recs, later) -> Iterable[Finding]:
        vals = [v for _, v in later]
        if any(v.predicted_share is None or v.predicted_class is None for v in vals):
            raise Skip("the predictions' class shares were not recorded")
        classes = {v.predicted_class for v in vals}
        shares = [v.predicted_share for v in vals]
        if len(classes) != 1 or min(shares) < self.min_predicted_share:
            return
        c = classes.pop()
        binary = all(v.kind == "binary" for _, v in recs)
        first = recs[0][1]
        # Already on this class at the first sampled step and never left it: the model is
        # not learning at all (another finding names why), it did not collapse in training.
        from_start = (first.predicted_class == c and (first.predicted_share or 0.0) >= self.min_predicted_share)
        n = sum(v.n for _, v in recs)
        if binary:
            pos = sum((v.positive_rate or 0.0) * v.n for _, v in recs) / max(n, 1)
            prior = 1.0 - pos if c == 0 else pos
        else:
            # share of the predicted class in the targets: exact on the batches where it was
            # the targets' most common class, and at most the other classes' remainder elsewhere
            prior = sum((v.target_share if v.target_class == c else 1.0 - (v.target_share or 0.0)) * v.n
                        for _, v in recs if v.target_share is not None) / max(n, 1)
            if all((v.target_classes or 0) < 2 for _, v in recs):
                return  # the targets never vary: label-distribution's "one class"
        minority = 1.0 - prior
        if minority <= 0.0:
            return  # targets of a single class: nothing else to predict
        predicted_minority = 1.0 - median(shares)
        if predicted_minority > self.max_minority_ratio * minority:
            return
        weighted = any(v.pos_weight for _, v in recs)
        steps = [s for s, _ in later]
        what = "negative" if binary and c == 0 else ("positive" if binary else f"class {c}")
        ev = dict(predicted_share=median(shares), predicted_class=c, label_prior=prior, steps=steps,
                  binary=binary, pos_weight=weighted, from_start=from_start)
        if from_start:
            yield self.finding(
                f"{_pct(median(shares))} of the predictions are {what} from the first sampled step "
                f"(step {recs[0][0]}) to the last, while the targets vary ({what} is {_pct(prior)} of them): the "
                f"initial model already predicted one class and training never moved it away.",
                severity=Severity.INFO, step=steps[-1], imbalance=prior >= self.min_prior_share, **ev,
                fix="See the findings on why the model does not learn (frozen parameters, learning rate, "
                    "gradients); initialise the last layer's bias to the log prior.",
            )
            return
        if prior >= self.min_prior_share and not weighted:
            minority_word = f"{_pct(minority)} positives" if binary and c == 0 else f"{_pct(minority)} of the other classes"
            yield self.finding(
                f"{_pct(median(shares))} of the predictions are {what} on each of the last {len(steps)} sampled steps, "
                f"and the label prior of {what} is {_pct(prior)}: an unweighted loss on {minority_word} is minimised by "
                f"always predicting the majority, so the minority is never learned.",
                step=steps[-1], imbalance=True, **ev,
                fix=("Weight the loss (BCEWithLogitsLoss(pos_weight=torch.tensor([neg / pos])) or "
                     "CrossEntropyLoss(weight=...)) or oversample the minority with WeightedRandomSampler; "
                     "judge with recall/F1, not accuracy."),
            )
            return
        yield self.finding(
            f"{_pct(median(shares))} of the predictions are {what} on each of the last {len(steps)} sampled steps, "
            f"while the targets vary ({what} is {_pct(prior)} of them): the outputs no longer depend on the input.",
            step=steps[-1], imbalance=False, **ev,
            fix=("Check the learning rate (too high collapses a classifier onto one class), dead units before the "
                 "output, and that inputs and labels are paired."),
        )

    def _regression(self, recs, later) -> Iterable[Finding]:
        vals = [v for _, v in later]
        if any(v.output_std is None or v.target_std is None for v in vals):
            raise Skip("the outputs' spread across the batch was not recorded")
        varying = [v for v in vals if v.target_std > 0]
        if len(varying) < len(vals) or not varying:
            return
        ratios = [v.output_std / v.target_std for v in varying]
        if max(ratios) >= self.max_std_ratio:
            return
        steps = [s for s, _ in later]
        first = recs[0][1]
        from_start = (first.output_std is not None and first.target_std
                      and first.output_std / first.target_std < self.max_std_ratio)
        target_std = median([v.target_std for v in varying])
        if from_start and target_std > self.max_target_std:
            lo = min((v.target_min for v in varying if v.target_min is not None), default=None)
            hi = max((v.target_max for v in varying if v.target_max is not None), default=None)
            span = f", range {fmt(lo)} to {fmt(hi)}" if lo is not None and hi is not None else ""
            yield self.finding(
                f"The regression targets are not standardised (std {fmt(target_std)}{span}) and the model's "
                f"output stays (almost) constant across the batch (std {fmt(median([v.output_std for v in varying]))}, "
                f"{fmt(max(ratios))}x the targets' at most) on each of the last {len(steps)} sampled steps: a network "
                f"initialised to outputs of order 1 spends its updates chasing the targets' mean and scale, with "
                f"huge MSE gradients, instead of learning how they vary.",
                step=steps[-1], output_std=median([v.output_std for v in varying]), target_std=target_std,
                std_ratio=max(ratios), steps=steps, from_start=True, mechanism="unscaled_targets",
                severity=Severity.WARNING,
                fix="Standardise the targets with the training split's statistics, y = (y - mean) / std, train on "
                    "those, and undo it for predictions (y * std + mean).")
            return
        yield self.finding(
            f"The model's output is (almost) the same for every sample: its std across the batch is "
            f"{fmt(median([v.output_std for v in varying]))} against the targets' {fmt(median([v.target_std for v in varying]))} "
            f"({fmt(max(ratios))}x at most) on each of the last {len(steps)} sampled steps; it predicts the "
            f"targets' mean and ignores the input.",
            step=steps[-1], output_std=median([v.output_std for v in varying]),
            target_std=median([v.target_std for v in varying]), std_ratio=max(ratios), steps=steps,
            from_start=bool(from_start), severity=Severity.INFO if from_start else Severity.WARNING,
            fix=("Check the learning rate and the input scale, standardise the targets, and look for dead units or "
                 "a saturated output activation."),
        )
