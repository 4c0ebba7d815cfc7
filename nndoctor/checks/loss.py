"""Loss checks: what the loss is fed, its value at the start, its trend."""

from __future__ import annotations

import math
from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import (count, downward_pair_fraction, finite, fmt, left_its_start, median, slope_t_statistic,
                    smallest_detectable_drop)



_LOSS_NAMES = {
    "cross_entropy": "a cross-entropy", "nll": "an NLL loss", "bce": "a BCE loss",
    "bce_logits": "a BCE-with-logits loss", "mse": "an MSE loss", "l1": "an L1 loss",
    "smooth_l1": "a smooth-L1 loss", "kl_div": "a KL-divergence loss",
}


def _loss_words(kind: str | None) -> str:
    """The loss kind in words: "an MSE loss"; "other" is a loss written by hand or not
    recognised (never "the loss is other")."""
    if not kind:
        return "of an unknown type"
    return _LOSS_NAMES.get(kind, "hand-written or not recognised")

class LossInputFormat(Check):
    """## What it measures
    The autograd graph of the loss, read at the first backward: which operation fed the
    loss. It recognises the loss however it was written (`nn.CrossEntropyLoss`,
    `F.cross_entropy`, `F.nll_loss(F.log_softmax(...))`, a sum of terms).

    It also judges the loss input *by its values* on sampled steps: logits that are
    never negative (a final `ReLU` before a cross-entropy: the op before `log_softmax`
    and the share of exact zeros), log-probabilities normalised over the wrong dim
    (`log_softmax(x, dim=0)`: `logsumexp` over the class dim is not 0, over the batch
    dim it is), a regression loss on whole-number class indices with one output, and a
    prediction broadcast against a target of another shape (`(N, 1)` against `(N,)`:
    the loss compares every prediction with every target), and a regression head ending
    in a ReLU (predictions never negative) while part of the targets are negative.

    ## Why it matters
    The checklist: know what input a library loss expects; in PyTorch `NLLLoss` expects
    log-probabilities and `CrossEntropyLoss` raw logits. Softmax before
    `CrossEntropyLoss` squashes the logits twice: gradients shrink and training crawls.
    Raw logits into `NLLLoss` make the loss unbounded below. A sigmoid before
    `BCEWithLogitsLoss` applies the sigmoid twice.

    ## How to fix
    - Remove the final `Softmax` when using `CrossEntropyLoss` (apply softmax only for reporting probabilities).
    - Use `log_softmax` (not logits, not `log(softmax)`) before `NLLLoss`, or switch to `CrossEntropyLoss`.
    - Remove the final `Sigmoid` when using `BCEWithLogitsLoss`.
    - Remove a final `ReLU` before `CrossEntropyLoss`: logits must be free to go negative.
    - Normalise over the class dim: `F.log_softmax(x, dim=1)` (or `dim=-1` for `(N, K)`).
    - Classify class indices with `CrossEntropyLoss` and K outputs, not `MSELoss` on one output.
    - Make prediction and target the same shape: `out.squeeze(1)` or `y.unsqueeze(1)`.

    ## Known false positives
    - Knowledge-distillation or calibration code that feeds probabilities to a cross-entropy on purpose.
    - Regression on genuine whole-number targets (counts, ratings) with `MSELoss` is reported as a warning.

    ## Example
    `model = nn.Sequential(..., nn.Linear(64, 10), nn.Softmax(dim=1))` trained with
    `nn.CrossEntropyLoss()`.

    ## References
    - The training checklist ("NLLLoss expects log-probabilities, CrossEntropyLoss expects raw logits").
    - PyTorch docs, CrossEntropyLoss / NLLLoss / BCEWithLogitsLoss.
    """

    id = "loss-input-format"
    title = "The loss is fed the wrong kind of values"
    family = "loss"
    severity = Severity.ERROR
    needs = ("steps",)
    thresholds = (
        Threshold("max_norm_error", 0.01, "mean |logsumexp| of the log-probabilities over the class dim above which they are not normalised over it", "nats"),
        Threshold("min_zero_logits", 0.2, "share of exact zeros among non-negative logits (a ReLU's output) from which they are reported", "fraction"),
        Threshold("min_negative_targets", 0.1, "share of negative regression targets from which a final ReLU (outputs never negative) is an error", "fraction"),
        Threshold("min_index_classes", 3, "distinct whole-number targets of a one-output regression loss from which they look like class indices", "count"),
    )
    citations = (CHECKLIST, Citation("PyTorch documentation, CrossEntropyLoss / NLLLoss / BCEWithLogitsLoss"))

    def evaluate(self, obs) -> Iterable[Finding]:
        graph = obs.first_loss_graph()
        if graph is None:
            raise Skip("the loss's autograd graph was not observed (no backward on a sampled step)")
        if graph.kind == "other":
            raise Skip("no library loss (cross-entropy, NLL, BCE, MSE...) was recognised in the loss graph")
        ev = {"loss_kind": graph.kind, "fed_by": graph.fed_by}
        if graph.kind in ("cross_entropy", "soft_cross_entropy") and graph.fed_by == "softmax":
            yield self.finding(
                "Softmax outputs are fed to a cross-entropy loss that applies log_softmax itself: the "
                "logits are squashed twice and the gradients shrink.",
                severity=Severity.ERROR, where="loss", **ev)
        elif graph.kind == "cross_entropy" and graph.fed_by == "sigmoid":
            yield self.finding(
                "Sigmoid outputs are fed to a cross-entropy loss that expects raw logits.",
                severity=Severity.WARNING, where="loss", **ev)
        elif graph.kind == "nll" and graph.fed_by == "logits":
            yield self.finding(
                "NLLLoss is fed raw values, not log-probabilities: the loss is unbounded below and "
                "minimising it just inflates one output.",
                severity=Severity.ERROR, where="loss", **ev,
                fix="Apply F.log_softmax(logits, dim=1) before NLLLoss, or use CrossEntropyLoss on the logits.")
        elif graph.kind == "nll" and graph.fed_by == "log_of_softmax":
            yield self.finding(
                "NLLLoss is fed log(softmax(x)): correct, but log(0) = -inf once a probability underflows.",
                severity=Severity.INFO, where="loss", **ev,
                fix="Use F.log_softmax(x, dim=1) (or CrossEntropyLoss on the logits): it is computed stably.")
        elif graph.kind == "bce_logits" and graph.fed_by == "sigmoid":
            yield self.finding(
                "Sigmoid outputs are fed to BCEWithLogitsLoss, which applies the sigmoid itself: "
                "predictions are squashed into [0.5, 0.73] and gradients shrink.",
                severity=Severity.ERROR, where="loss", **ev)
        elif graph.kind == "bce" and graph.fed_by == "softmax":
            yield self.finding(
                "Softmax outputs are fed to BCELoss: softmax couples the classes; use sigmoid outputs (or "
                "BCEWithLogitsLoss on logits) for independent binary targets.",
                severity=Severity.WARNING, where="loss", **ev)
        yield from self._by_value(obs, graph)

    def _by_value(self, obs, graph) -> Iterable[Finding]:
        """The loss input judged by its values over the sampled steps."""
        graphs = [r.loss_graph for r in obs.steps if r.loss_graph is not None and r.loss_graph.kind == graph.kind]
        values = [r.loss_values for r in obs.steps if r.loss_values is not None]
        ev = {"loss_kind": graph.kind, "fed_by": graph.fed_by}
        if graph.kind in ("cross_entropy", "nll"):
            by_class = [v for v in values if v.kind == "classes"]
            dims = {g.norm_dim for g in graphs if g.norm_dim is not None}
            rows = [v.row_norm_error for v in by_class if v.row_norm_error is not None]
            cols = [v.col_norm_error for v in by_class if v.col_norm_error is not None]
            wrong_dim = any(d in (0, -2) for d in dims) if graph.input_shape is None or len(graph.input_shape) == 2 \
                else any(d == 0 for d in dims)
            rows_off = bool(rows) and median(rows) > self.max_norm_error
            cols_on = bool(cols) and median(cols) <= self.max_norm_error
            if (wrong_dim or (rows_off and cols_on)) and graph.fed_by != "logits":
                dim = next(iter(dims)) if dims else None
                yield self.finding(
                    f"The log-probabilities fed to the loss are normalised over the batch dim, not the class dim "
                    f"(log_softmax(x, dim={dim if dim is not None else 0})): per sample they do not sum to 1 in "
                    f"probability space (mean |logsumexp| {fmt(median(rows)) if rows else '?'}) while each class "
                    f"column does: the samples compete with each other instead of the classes.",
                    severity=Severity.ERROR, where="loss", problem="wrong_normalisation_dim", norm_dim=dim,
                    row_norm_error=median(rows) if rows else None, col_norm_error=median(cols) if cols else None,
                    fix="Normalise over the class dim: F.log_softmax(x, dim=1) (dim=-1 for (N, K) outputs), or "
                        "use CrossEntropyLoss on the raw logits.", **ev)
            zeros = [v.logits_zero_fraction for v in by_class if v.logits_zero_fraction is not None]
            mins = [v.logits_min for v in by_class if v.logits_min is not None]
            relu = any(g.upstream == "ReluBackward0" for g in graphs)
            nonneg = bool(mins) and min(mins) >= 0.0
            if (relu or nonneg) and zeros and median(zeros) >= self.min_zero_logits:
                yield self.finding(
                    f"The logits fed to the cross-entropy are never negative and {median(zeros):.0%} of them are "
                    f"exactly 0 (a final ReLU before the loss): a class can only be ruled out by lifting all the "
                    f"others, and units stuck at 0 pass no gradient.",
                    severity=Severity.ERROR, where="loss", problem="non_negative_logits",
                    zero_fraction=median(zeros), logits_min=min(mins) if mins else None, relu=relu,
                    fix="Remove the final ReLU (or other non-negative activation): feed the last Linear layer's "
                        "raw output to CrossEntropyLoss.", **ev)
        if graph.kind in ("mse", "smooth_l1", "huber", "l1"):
            casts = [g for g in graphs if g.broadcast_from is not None]
            if casts:
                g = casts[0]
                yield self.finding(
                    f"The loss broadcast the prediction of shape {tuple(g.broadcast_from)} against a target of "
                    f"another shape into {tuple(g.input_shape or ())}: every prediction is compared with every "
                    f"target, so the model can only learn their mean.",
                    severity=Severity.ERROR, where="loss", problem="broadcast",
                    prediction_shape=list(g.broadcast_from), broadcast_shape=list(g.input_shape or ()),
                    fix="Give prediction and target the same shape: loss_fn(out.squeeze(1), y) or "
                        "loss_fn(out, y.unsqueeze(1)).", **ev)
                return
            reg = [v for v in values if v.kind == "regression"]
            negative = [v.target_negative_fraction for v in reg if v.target_negative_fraction is not None]
            zero_out = [v.output_zero_fraction for v in reg if v.output_zero_fraction is not None]
            relu = any(g.upstream == "ReluBackward0" for g in graphs)
            if (relu and negative and median(negative) >= self.min_negative_targets
                    and all((v.output_min or 0.0) >= 0.0 for v in reg)):
                yield self.finding(
                    f"The predictions go through a final ReLU (never negative"
                    + (f"; {median(zero_out):.0%} exactly 0" if zero_out else "") + ") "
                    f"while {median(negative):.0%} of the targets are negative: those targets can never be "
                    f"reached, and outputs stuck at 0 pass no gradient.",
                    severity=Severity.ERROR, where="loss", problem="non_negative_outputs",
                    negative_target_fraction=median(negative), zero_fraction=median(zero_out) if zero_out else None,
                    fix="Remove the final ReLU: a regression head ends with a plain Linear layer (or an activation "
                        "whose range covers the targets).", **ev)
                return
            if (reg and all(v.n_outputs == 1 and v.target_integer and (v.target_min or 0) >= 0 for v in reg)
                    and max(v.target_classes or 0 for v in reg) >= self.min_index_classes
                    and max(v.target_max or 0 for v in reg) <= 64):
                k = max(v.target_classes or 0 for v in reg)
                yield self.finding(
                    f"A regression loss ({graph.kind}) compares one output with whole-number targets in "
                    f"[{fmt(min(v.target_min or 0 for v in reg))}, {fmt(max(v.target_max or 0 for v in reg))}] "
                    f"({k} distinct values): class indices regressed as numbers impose a false order and "
                    f"distance between the classes.",
                    severity=Severity.WARNING, where="loss", problem="class_indices_regressed", distinct_targets=k,
                    fix="For classes, output K logits and use CrossEntropyLoss with the integer labels; keep "
                        "MSELoss for genuine quantities.", **ev)


class ChanceLevelLoss(Check):
    """## What it measures
    The loss at the first watched step (or at initialisation, in a checkup) against the
    loss of a uniform random guess, -ln(1/K) for K classes (2.303 for 10). K is read
    from the logits' class dimension; the loss type from the loss's autograd graph.
    In a checkup it also compares the final layer's bias with the label prior.

    ## Why it matters
    The checklist: know the loss of a random guess. A freshly initialised classifier
    should predict ~uniform probabilities; a much higher initial loss means overconfident
    wrong logits (too-large init of the last layer, unnormalised inputs, a wrong loss
    scale), which wastes the first part of training and can saturate the softmax.

    ## How to fix
    - Initialise the last layer small (e.g. scale its weights by 0.01) so the logits start near zero.
    - Normalise the inputs; check the loss reduction (mean, not sum).
    - With an imbalanced label prior, initialise the last layer's bias to log(prior) (Karpathy).

    ## Known false positives
    - Pre-trained models, or steps observed after training started (the first watched
      step is not at init): the loss is then legitimately below chance.
    - Multi-term losses and losses with reduction="sum" are skipped, not judged.

    ## Example
    A CIFAR-10 classifier whose last layer is initialised at N(0, 1): the initial loss
    is ~30 instead of 2.30.

    ## References
    - The training checklist ("for K classes the random-guess loss is -ln(1/K); 2.302 for 10").
    - Karpathy, "A Recipe for Training Neural Networks", 2019 (verify loss @ init; init well).
    - CS231n notes, "Neural Networks Part 3" (sanity check the initial loss).
    """

    id = "chance-level-loss"
    title = "Initial loss far from the random-guess loss"
    family = "loss"
    severity = Severity.WARNING
    needs = ("steps",)
    thresholds = (
        Threshold("max_relative_deviation", 0.5, "|loss0 - ln K| / ln K above which the start is suspicious (warning)", "fraction"),
        Threshold("min_prior_share", 0.5, "share of the majority class at which the bias should encode the prior", "fraction"),
    )
    citations = (CHECKLIST, Citation("Karpathy, 'A Recipe for Training Neural Networks', 2019"),
                 Citation("CS231n notes, 'Neural Networks Part 3'"))

    def evaluate(self, obs) -> Iterable[Finding]:
        init = getattr(obs, "experiments", {}).get("init") if hasattr(obs, "experiments") else None
        if init is not None and init.get("skipped"):  # the probe could not run (a ProbeSkipped record)
            raise Skip(str(init.get("skipped")))
        if init:
            yield from self._judge(init.get("loss"), init.get("n_classes"), init.get("loss_kind"),
                                   reduction="mean", multi=False, step=None, source="at initialisation")
            yield from self._bias_prior(init)
            return
        graph = obs.first_loss_graph()
        first = next((r for r in obs.steps if r.loss is not None), None)
        if first is None:
            raise Skip("no loss value was observed")
        if graph is None:
            raise Skip("the loss's graph was not observed, so its type and K are unknown")
        loss, source = first.loss, f"at step {first.step}"
        if first.loss_terms > 1 and loss is not None:
            # gradient accumulation: the step's loss adds up its micro-batches' losses
            loss = loss / first.loss_terms
            source = f"at step {first.step} (the mean of its {first.loss_terms} micro-batch losses)"
        yield from self._judge(loss, graph.n_classes, graph.kind, graph.reduction, graph.multi_term,
                               first.step, source=source)

    def _judge(self, loss, k, kind, reduction, multi, step, source) -> Iterable[Finding]:
        if kind not in ("cross_entropy",):
            raise Skip(f"the loss is {_loss_words(kind)}, not a softmax cross-entropy: -ln(1/K) does not apply")
        if multi:
            raise Skip("the loss is a sum of several terms; the chance level of the whole is unknown")
        if reduction == "sum":
            raise Skip("the loss uses reduction='sum'; the chance level scales with the batch size")
        if not k or k < 2:
            raise Skip("the number of classes K could not be read from the logits")
        if loss is None or not math.isfinite(loss):
            raise Skip("inconclusive: the initial loss is not finite (see nan-trace)")
        chance = math.log(k)
        dev = abs(loss - chance) / chance
        # Below chance is not judged: a pre-trained model, training before watching, or a
        # loss scaled for accumulation (loss / n) all give that legitimately.
        if dev > self.max_relative_deviation and loss > chance:
            yield self.finding(
                f"The loss {source} is {fmt(loss)}, but a uniform guess over K={k} classes gives "
                f"-ln(1/{k}) = {fmt(chance)} ({dev:.0%} above): the initial logits are confidently "
                f"wrong (large init of the last layer, unnormalised inputs).",
                severity=Severity.WARNING, step=step,
                loss=loss, chance_loss=chance, n_classes=k, relative_deviation=dev)

    def _bias_prior(self, init) -> Iterable[Finding]:
        prior = init.get("label_prior") or []
        pred = init.get("predicted_prior") or []
        if not prior or not pred or len(prior) != len(pred):
            return
        top = max(range(len(prior)), key=lambda i: prior[i])
        if prior[top] >= self.min_prior_share and pred[top] < 0.5 * prior[top]:
            yield self.finding(
                f"Class {top} makes up {prior[top]:.0%} of the labels but the initial model predicts it with "
                f"{pred[top]:.0%}: initialise the last layer's bias to log(prior) to start at the prior's loss.",
                severity=Severity.INFO, where=None, label_prior=prior, predicted_prior=pred,
                fix="Set final_layer.bias.data = torch.log(prior) (class frequencies), as in Karpathy's recipe.")


# Update/weight ratios from a decade below the ~1e-3 rule of thumb (lower, a too-low learning
# rate explains a slow loss) up to update-ratio's `high`: not what stalls the loss.
_HEALTHY_UPDATE = (1e-4, 1e-1)
_PAIRING_HINT = (
    "The weights move at a healthy rate (update/weight ratio within 1e-4..1e-1) on batches that change, "
    "yet the loss does not fall: the labels may not be paired with the inputs (inputs and labels shuffled "
    "by two separate calls, two shuffled loaders zipped). The checkup's pairing test tells (random-input-loss, "
    "run by `nndoctor check` and `doctor.checkup(batch)`): it holds out the watched samples against a "
    "permuted-label control."
)


def _update_ratio(obs) -> float | None:
    """The median update/weight norm ratio of the weight matrices over the measured updates."""
    ratios = []
    for rec in obs.steps:
        for name, upd in rec.update_norms.items():
            meta = obs.params.get(name)
            w = rec.weight_norms.get(name)
            if meta is not None and meta.role == "weight" and w and math.isfinite(upd) and math.isfinite(w):
                ratios.append(upd / w)
    return median(ratios) if ratios else None


def _distinct_batches(obs) -> int:
    """How many different input batches the sampled steps saw (by fingerprint)."""
    return len({(r.input.fingerprint, r.input.shape) for r in obs.sampled if r.input is not None})


class LossNotDecreasing(Check):
    """## What it measures
    The trend of the loss over the watched steps: the median of the last third against
    the first third (reported), Kendall's rank statistic (share of later losses below earlier
    ones) and the t statistic of a least-squares slope: both must show no progress
    before it fires, so minibatch noise is not mistaken for a plateau (nor a noisy
    plateau for progress). A rise of `diverging` is an error only when its slope is
    significant too (t >= 2), or when every loss after the first is more than `diverging`
    above the first (it jumped away and never came back). Also a loss that never changes
    at all. When the weights move at a healthy rate (update/weight ratio within
    1e-4..1e-1) on batches that change and the loss still shows no trend, the labels may
    not be paired with the inputs, which watching alone cannot prove: the finding's fix
    then names the checkup's pairing test (random-input-loss).

    ## Why it matters
    The checklist: if the loss trends down, wait longer — if it does not, something is
    wrong (learning rate, a frozen graph, labels decoupled from inputs). A loss that is
    bit-for-bit constant means no parameter that matters is being updated.

    ## How to fix
    - Run the LR sweep (`nndoctor check` runs it): try the learning rate x10 and x0.1.
    - Check frozen-layer and grad-not-zeroed findings; overfit a tiny batch first.
    - A rising loss: lower the learning rate, check the sign of the loss.

    ## Known false positives
    - Very noisy losses over few steps (small batches, strong augmentation): the
      check needs `min_steps` values and uses the rank statistic to resist noise.
      When the scatter is so large that even a fall of `max_detectable_drop` of the
      loss over the watched steps would not be significant (pytorch/examples' polynomial
      regression: fresh random batches of x^4 features, losses from 13 to 71 within 20
      steps; a fall of 34-88% would be needed to show), "no trend" says nothing and is
      reported as info (inconclusive). The plateaus of real faults scatter far less (a
      fall of 5-10% would show).
    - Phases where the loss legitimately rises (warm restarts, curriculum changes).

    ## Example
    An optimizer built over a copy of the model's parameters: the loss stays at its
    initial value forever.

    ## References
    - The training checklist ("if the loss trends down, wait longer").
    - Amazon SageMaker Debugger LossNotDecreasing rule; TheDeepChecker (loss must fall 5% per window).
    """

    id = "loss-not-decreasing"
    title = "The loss does not go down"
    family = "loss"
    severity = Severity.ERROR
    needs = ("steps", "params")
    thresholds = (
        Threshold("min_steps", 8, "finite loss values needed to judge a trend", "steps"),
        Threshold("min_down_pairs", 0.6, "share of (earlier, later) pairs with a lower later loss that counts as a downward trend", "fraction"),
        Threshold("max_trend_t", -2.0, "t statistic of the least-squares slope below which the loss is significantly falling (no finding)", "t"),
        Threshold("diverging", 0.5, "relative increase above which the loss is diverging (error)", "fraction"),
        Threshold("max_detectable_drop", 0.2,
                  "a loss whose step-to-step scatter is so large that even a fall of this share of its "
                  "starting level over the watched steps would not reach the `max_trend_t` significance "
                  "is too noisy to judge: 'no downward trend' is then info (inconclusive), not a warning",
                  "fraction of the starting loss"),
    )
    citations = (CHECKLIST, Citation("SageMaker Debugger LossNotDecreasing rule"))

    def evaluate(self, obs) -> Iterable[Finding]:
        losses = finite(v for _, v in obs.losses)
        if len(losses) < self.min_steps:
            raise Skip(f"needs {int(self.min_steps)} finite loss values, saw {len(losses)}")
        third = max(len(losses) // 3, 1)
        first, last = median(losses[:third]), median(losses[-third:])
        scale = max(abs(first), 1e-12)
        change = (last - first) / scale
        down = downward_pair_fraction(losses)
        slope, t = slope_t_statistic(losses)
        evidence = {"first": first, "last": last, "relative_change": change, "down_pair_fraction": down,
                    "slope_t": t, "n": len(losses), "losses": losses[:200]}
        if max(losses) - min(losses) <= 1e-7 * max(abs(first), 1e-12):
            yield self.finding(
                f"The loss is constant at {fmt(first)} over {count(len(losses), 'step')}: no update reaches the loss.",
                severity=Severity.ERROR, **evidence,
                fix="Check that the optimizer holds the model's parameters, the learning rate is not 0, "
                    "and the graph is not cut (see frozen-layer).")
        elif (change > self.diverging and t >= -self.max_trend_t) or left_its_start(losses, self.diverging):
            # The rise must be a trend (slope t >= 2), not two medians of scattered
            # batches that happen to differ by half; or the loss jumped away from its first
            # value and never came back (a linear classifier at 100x its LR: 2.4, then 23-91).
            evidence["left_start"] = left_its_start(losses, self.diverging)
            yield self.finding(
                f"The loss rises from {fmt(first)} to {fmt(last)} ({change:+.0%}) over {count(len(losses), 'step')}: training diverges."
                if not evidence["left_start"] else
                f"The loss jumps from {fmt(losses[0])} at the first step to {fmt(min(losses[1:]))}-{fmt(max(losses[1:]))} "
                f"and never comes back within {self.diverging:.0%} of its start over {count(len(losses), 'step')}: "
                "training diverges.",
                severity=Severity.ERROR, **evidence,
                fix="Lower the learning rate (x0.1), check the sign of the loss, clip gradients.")
        elif down < self.min_down_pairs and t > self.max_trend_t:
            detectable = smallest_detectable_drop(losses, abs(self.max_trend_t)) / scale
            evidence["detectable_drop"] = detectable
            if detectable > self.max_detectable_drop:
                # The scatter swamps any trend these few steps could show (fresh random
                # batches of a heavy-tailed target): "no trend" is then what a falling loss
                # looks like too, so the verdict would flip with the script's random draws.
                yield self.finding(
                    f"Inconclusive: the loss scatters too much over {count(len(losses), 'step')} to see a trend "
                    f"({fmt(min(losses))} to {fmt(max(losses))}; {fmt(first)} -> {fmt(last)}, trend t = {t:.1f}): "
                    f"only a fall of {detectable:.0%} or more of its starting level would show.",
                    severity=Severity.INFO, kind="too_noisy", **evidence,
                    fix="Watch more steps (nndoctor check --steps 100) or use larger batches; the overfit "
                        "experiment says whether the model can learn at all.")
                return
            ratio, distinct = _update_ratio(obs), _distinct_batches(obs)
            # Weights that move at a healthy rate on batches that change, and still no
            # progress: watching cannot tell unpaired labels from a slow start (that
            # needs a held-out set and a permuted-label control), the checkup can.
            unpaired_hint = ratio is not None and _HEALTHY_UPDATE[0] <= ratio <= _HEALTHY_UPDATE[1] and distinct >= 2
            yield self.finding(
                f"The loss shows no downward trend over {count(len(losses), 'step')}: {fmt(first)} -> {fmt(last)} "
                f"({change:+.1%}; {down:.0%} of later values below earlier ones; trend t = {t:.1f}).",
                severity=Severity.WARNING, **evidence, median_update_ratio=ratio, distinct_batches=distinct,
                fix=(_PAIRING_HINT + " " + self.default_fix()) if unpaired_hint else None)
