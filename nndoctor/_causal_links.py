"""The causal links of the differential diagnosis (``nndoctor._diagnosis``): predicates on
findings' evidence, and the table ``LINKS`` — *cause X explains symptom Y when <condition on
the two findings>, because <one line>*. Data more than code: each link has its own test
(``tests/test_diagnosis.py``). Pure Python, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ._report import Finding, Severity


# ------------------------------------------------------------------------------ evidence
def _num(value: Any) -> float:
    """A number from evidence, in memory or read back from JSON ("inf", "nan" strings)."""
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return math.nan


def _ev(f: Finding, key: str, default: Any = None) -> Any:
    return (f.evidence or {}).get(key, default)


Predicate = Callable[[Finding], bool]


def _pred(doc: str) -> Callable[[Callable[[Finding], bool]], Predicate]:
    """Give a predicate the one-line description the link table documents."""

    def wrap(fn: Callable[[Finding], bool]) -> Predicate:
        fn.__doc__ = doc
        return fn

    return wrap


@_pred("any finding of the check")
def ANY(f: Finding) -> bool:
    return True


# input-normalization ------------------------------------------------------------------
@_pred("inputs not normalised (|mean| or std too large)")
def inputs_unscaled(f: Finding) -> bool:
    return "min" in f.evidence and "zero_fraction" not in f.evidence


@_pred("inputs all zero or constant")
def inputs_empty(f: Finding) -> bool:
    ev = f.evidence
    return "min" not in ev and "zero_fraction" not in ev and ("batches" in ev or "std" in ev)


# loss-input-format --------------------------------------------------------------------
@_pred("probabilities (softmax/sigmoid outputs) fed to a loss that expects logits")
def loss_squashed(f: Finding) -> bool:
    return _ev(f, "fed_by") in ("softmax", "sigmoid") and _ev(f, "loss_kind") in (
        "cross_entropy", "soft_cross_entropy", "bce_logits")


@_pred("NLLLoss fed raw outputs (unbounded below)")
def loss_unbounded(f: Finding) -> bool:
    return _ev(f, "loss_kind") == "nll" and _ev(f, "fed_by") == "logits"


# frozen-layer ----------------------------------------------------------------------------
@_pred("parameters that cannot train (requires_grad=False everywhere, not in the optimizer, "
       "graph cut, or never changed)")
def params_cannot_train(f: Finding) -> bool:
    kind = _ev(f, "kind")
    if kind is None:  # a report written before the kind was recorded
        return f.severity is not Severity.INFO
    return kind in ("all_frozen", "not_in_optimizer", "no_gradient", "never_changed")


@_pred("gradients exactly zero (a dead unit, a zero input or a constant upstream)")
def grads_exactly_zero(f: Finding) -> bool:
    return _ev(f, "kind") == "zero_gradient"


@_pred("gradients vanish into or never change the weights (zero gradient, or values never changed)")
def grads_zero_or_unchanged(f: Finding) -> bool:
    return _ev(f, "kind") in ("zero_gradient", "never_changed")


# update-ratio -----------------------------------------------------------------------------
def _ratio_direction(f: Finding) -> str:
    d = _ev(f, "direction")
    if d in ("high", "low"):
        return d
    return "high" if _num(_ev(f, "median_ratio")) > 1e-3 else "low"


@_pred("updates too large for the weights (ratio too high)")
def ratio_high(f: Finding) -> bool:
    return _ratio_direction(f) == "high"


@_pred("updates too small to matter (ratio too low)")
def ratio_low(f: Finding) -> bool:
    return _ratio_direction(f) == "low"


@_pred("the first updates rewrite a tenth of the weights or more (100x the healthy ~1e-3)")
def ratio_destructive(f: Finding) -> bool:
    return _ratio_direction(f) == "high" and max(_num(_ev(f, "early_median_ratio")),
                                                 _num(_ev(f, "median_ratio"))) >= 0.1


# weight-init -------------------------------------------------------------------------------
@_pred("weights initialised too large")
def init_large(f: Finding) -> bool:
    return _ev(f, "kind") == "large"


@_pred("weights initialised too small")
def init_small(f: Finding) -> bool:
    return _ev(f, "kind") == "small"


@_pred("hidden weights initialised all equal (symmetry never broken)")
def init_symmetric(f: Finding) -> bool:
    return _ev(f, "kind") == "symmetric"


# activation-std ---------------------------------------------------------------------------
def _band(f: Finding) -> tuple[float, float]:
    band = _ev(f, "band") or [0.5, 2.0]
    try:
        return _num(band[0]), _num(band[1])
    except (IndexError, TypeError):
        return 0.5, 2.0


@_pred("activations exploding (worst layer above the band)")
def acts_exploding(f: Finding) -> bool:
    return _num(_ev(f, "worst_std")) > _band(f)[1]


@_pred("activations vanishing (worst layer below the band)")
def acts_vanishing(f: Finding) -> bool:
    return _num(_ev(f, "worst_std")) < _band(f)[0]


# loss-not-decreasing ----------------------------------------------------------------------
def _loss_constant(f: Finding) -> bool:
    losses = [_num(v) for v in _ev(f, "losses") or []]
    losses = [v for v in losses if math.isfinite(v)]
    if len(losses) >= 2:
        return max(losses) - min(losses) <= 1e-7 * max(abs(_num(_ev(f, "first"))), 1e-12)
    return abs(_num(_ev(f, "relative_change"))) <= 1e-7


@_pred("the loss rises (diverging run)")
def loss_diverging(f: Finding) -> bool:
    return f.severity is Severity.ERROR and not _loss_constant(f) and _num(_ev(f, "relative_change")) > 0


@_pred("the loss stalls (flat or constant, not diverging)")
def loss_stalled(f: Finding) -> bool:
    return not loss_diverging(f)


# nan-trace ----------------------------------------------------------------------------------
def _forward_event(f: Finding) -> dict[str, Any]:
    for e in _ev(f, "events") or []:
        if isinstance(e, dict) and e.get("direction") == "forward":
            return e
    return {}


@_pred("non-finite values that follow blown-up weights or gradients (first in backward, in AMP, "
       "or in a layer whose parameters were already non-finite)")
def nan_after_blowup(f: Finding) -> bool:
    direction = _ev(f, "direction")
    if direction in ("backward", "amp"):
        return True
    return direction == "forward" and bool(_forward_event(f).get("params_nonfinite"))


@_pred("non-finite values made by an operation on finite values (the loss code, a layer's own "
       "forward: log(0), sqrt(<0), x/0)")
def nan_at_source(f: Finding) -> bool:
    return not nan_after_blowup(f)


@_pred("non-finite values made in the forward pass or the loss")
def nan_not_backward(f: Finding) -> bool:
    return _ev(f, "direction") in ("forward", "loss")


# gradient-check, overfit-tiny-batch -------------------------------------------------------
@_pred("the finite-difference comparison itself is non-finite (non-finite loss)")
def gradcheck_nonfinite(f: Finding) -> bool:
    return not math.isfinite(_num(_ev(f, "max_rel_error")))


@_pred("a finite disagreement between analytic and numerical gradients (a wrong backward)")
def gradcheck_wrong_backward(f: Finding) -> bool:
    return math.isfinite(_num(_ev(f, "max_rel_error")))


@_pred("the tiny-batch loss became non-finite")
def overfit_nonfinite(f: Finding) -> bool:
    return any(not math.isfinite(_num(_ev(f, k))) for k in ("start_loss", "final_loss"))


# lr-sweep -----------------------------------------------------------------------------------
@_pred("the sweep says the learning rate is too high (x0.1 better, or above the range test's blow-up)")
def lr_too_high(f: Finding) -> bool:
    better = _ev(f, "better")
    return better == "x0.1" or (better == "range-test" and "diverged_at" in f.evidence)


@_pred("the sweep says the learning rate is too high and x0.1 fits the sweep's samples (removes at "
       "least 90% of the loss): model, inputs and labels can learn, only the LR is wrong")
def lr_too_high_lower_fits(f: Finding) -> bool:
    if _ev(f, "better") != "x0.1":
        return False
    progress = f.evidence.get("progress")
    value = progress.get("0.1") if isinstance(progress, dict) else None
    try:
        return float(value) >= 0.9
    except (TypeError, ValueError):
        return False


@_pred("the sweep has not shown that a lower learning rate fits the samples")
def lr_not_shown_to_fit(f: Finding) -> bool:
    return not lr_too_high_lower_fits(f)


@_pred("the sweep says the learning rate is too low (x10 better, or below the range test)")
def lr_too_low(f: Finding) -> bool:
    better = _ev(f, "better")
    return better == "x10" or (better == "range-test" and "decades_below" in f.evidence)


# train-eval-mode ----------------------------------------------------------------------------
@_pred("the model trained in eval mode")
def eval_mode(f: Finding) -> bool:
    return "eval_steps" in f.evidence


@_pred("BatchNorm saw batches of one sample")
def bn_batch_of_one(f: Finding) -> bool:
    return "eval_steps" not in f.evidence and "layers" in f.evidence


# label-distribution -------------------------------------------------------------------------
@_pred("labels outside 0..K-1")
def labels_out_of_range(f: Finding) -> bool:
    return "min_label" in f.evidence


@_pred("batches of a single class (data not shuffled)")
def labels_unshuffled(f: Finding) -> bool:
    ev = f.evidence
    return "batches" in ev and "counts" not in ev and "min_label" not in ev


@_pred("one class overall")
def labels_one_class(f: Finding) -> bool:
    return "counts" in f.evidence and "imbalance" not in f.evidence


# random-input-loss --------------------------------------------------------------------------
@_pred("held-out samples: the real inputs predict the labels no better than noise (labels not "
       "paired with their inputs)")
def labels_unpaired(f: Finding) -> bool:
    return "holdout_gain" in f.evidence


@_pred("the outputs ignore the input, or the real inputs carry nothing usable")
def input_unused(f: Finding) -> bool:
    return "holdout_gain" not in f.evidence


# unused-parameter ---------------------------------------------------------------------------
@_pred("modules run in forward but not registered, and never trained")
def unregistered_untrained(f: Finding) -> bool:
    return "module_class" in f.evidence and f.severity is Severity.ERROR


# issue 10 (G2): frozen-layer mechanisms, loss inputs by value, prediction-collapse ---------
@_pred("gradients computed, then zeroed between backward() and the optimizer step (or step() called before backward())")
def grads_wiped(f: Finding) -> bool:
    return _ev(f, "mechanism") in ("grads_zeroed_before_step", "step_before_backward")


@_pred("a layer frozen (requires_grad=False) between trainable ones, or held by the optimizer")
def frozen_by_mistake(f: Finding) -> bool:
    return _ev(f, "mechanism") == "requires_grad_false" and f.severity is not Severity.INFO


@_pred("loss inputs wrong by value (non-negative logits, log-probabilities over the wrong dim, "
       "class indices regressed, broadcast shapes, a final ReLU before negative regression targets)")
def loss_input_by_value(f: Finding) -> bool:
    return _ev(f, "problem") in ("non_negative_logits", "wrong_normalisation_dim", "class_indices_regressed",
                                 "broadcast", "non_negative_outputs")


@_pred("the targets are dominated by one class (the label prior bites)")
def labels_imbalanced(f: Finding) -> bool:
    return "imbalance" in f.evidence or "counts" in f.evidence


@_pred("the predictions sit on the majority class of imbalanced labels")
def collapse_on_prior(f: Finding) -> bool:
    return _ev(f, "imbalance") is True


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Link:
    """Cause ``cause`` explains symptom ``symptom`` when ``cause_is(cause finding)`` and
    ``symptom_is(symptom finding)`` hold, ``because`` (one line, shown to the user)."""

    cause: str
    symptom: str
    because: str
    cause_is: Predicate = ANY
    symptom_is: Predicate = ANY

    def holds(self, cause: Finding, symptom: Finding) -> bool:
        return (cause.check == self.cause and symptom.check == self.symptom
                and self.cause_is(cause) and self.symptom_is(symptom))

    @property
    def condition(self) -> str:
        """The condition in words (for documentation and test ids)."""
        return f"{self.cause}: {self.cause_is.__doc__}; {self.symptom}: {self.symptom_is.__doc__}"


def _links(cause: str, cause_is: Predicate, rows: Iterable[tuple[str, Predicate, str]]) -> list[Link]:
    return [Link(cause, symptom, because, cause_is, symptom_is) for symptom, symptom_is, because in rows]


# Checks that describe an outcome but cannot name why: they lead only when nothing
# present explains them (then with low confidence).
SYMPTOM_ONLY = frozenset({"loss-not-decreasing", "overfit-tiny-batch", "chance-level-loss", "activation-std"})

# The experiments (overfit-tiny-batch, lr-sweep, random-input-loss) train copies in their
# own loop, which zeroes the gradients and does not reuse the script's data order:
# grad-not-zeroed, repeated-batch and an unshuffled data set do not explain their verdicts.
LINKS: tuple[Link, ...] = tuple([
    # -- data ---------------------------------------------------------------------------
    *_links("input-normalization", inputs_unscaled, [
        ("activation-std", acts_exploding, "the first layers' outputs scale with the unnormalised inputs"),
        ("update-ratio", ratio_high, "a weight's gradient scales with its input, so large inputs give huge updates"),
        ("exploding-gradient", ANY, "gradients scale with the unnormalised inputs"),
        ("chance-level-loss", ANY, "large inputs give large initial logits, confidently wrong"),
        ("saturated-activation", ANY, "large pre-activations push sigmoid/tanh to their rails"),
        ("dead-relu", ANY, "large pre-activations and large updates switch ReLU units off"),
        ("vanishing-gradient", ANY, "saturated units from large inputs pass no gradient back"),
        ("nan-trace", nan_not_backward, "large inputs overflow the activations"),
        ("nan-trace", nan_after_blowup, "huge updates from large inputs blow the weights up"),
        ("lr-sweep", ANY, "no learning rate suits both the input scale and the weights; the sweep tunes around it"),
        ("overfit-tiny-batch", ANY, "unnormalised inputs make the optimisation ill-conditioned"),
        ("loss-not-decreasing", ANY, "unnormalised inputs make the optimisation ill-conditioned"),
    ]),
    *_links("input-normalization", inputs_empty, [
        ("activation-std", acts_vanishing, "zero or constant inputs carry no variation through the layers"),
        ("dead-relu", ANY, "with zero inputs a ReLU sees only its bias, negative for half the units"),
        ("frozen-layer", grads_exactly_zero, "a weight's gradient is its input times the error: zero inputs give zero gradients"),
        ("random-input-loss", ANY, "the real inputs are no better than zeros because they are zeros/constant"),
        ("update-ratio", ratio_low, "zero inputs give (near) zero gradients for the first layer"),
        ("overfit-tiny-batch", ANY, "identical inputs cannot be mapped to different labels"),
        ("loss-not-decreasing", loss_stalled, "the model can only learn the label prior from empty inputs"),
        ("lr-sweep", ANY, "no learning rate helps when the inputs carry nothing"),
    ]),
    *_links("label-distribution", labels_out_of_range, [
        ("nan-trace", ANY, "an out-of-range label indexes outside the logits"),
        ("loss-not-decreasing", ANY, "targets outside the output's classes cannot be fitted"),
        ("overfit-tiny-batch", ANY, "targets outside the output's classes cannot be fitted"),
        ("lr-sweep", ANY, "targets outside the output's classes cannot be fitted at any LR"),
        ("gradient-check", gradcheck_nonfinite, "an out-of-range label makes the loss non-finite"),
    ]),
    *_links("label-distribution", labels_unshuffled, [
        ("loss-not-decreasing", ANY, "single-class batches pull the model to the current class, step after step"),
    ]),
    *_links("label-distribution", labels_one_class, [
        ("random-input-loss", ANY, "with a single label the inputs are useless: a constant is optimal"),
    ]),
    *_links("repeated-batch", ANY, [
        ("label-distribution", labels_unshuffled, "the same batch again and again holds the same classes"),
    ]),
    *_links("random-input-loss", labels_unpaired, [
        ("loss-not-decreasing", loss_stalled, "labels not paired with their inputs cannot be predicted from them"),
        ("overfit-tiny-batch", ANY, "unpaired labels can only be memorised, which is slow"),
        ("lr-sweep", ANY, "with unpaired labels no learning rate generalises; the sweep measures noise"),
    ]),
    *_links("random-input-loss", input_unused, [
        ("loss-not-decreasing", loss_stalled, "outputs that ignore the input can only learn the label prior"),
        ("overfit-tiny-batch", ANY, "outputs that ignore the input cannot separate the samples"),
        ("lr-sweep", lr_not_shown_to_fit, "outputs that ignore the input learn nothing at any LR"),
    ]),
    # -- loss ---------------------------------------------------------------------------
    *_links("loss-input-format", loss_squashed, [
        ("lr-sweep", ANY, "squashed outputs shrink the gradients, so a larger LR looks better and nothing is tuned right"),
        ("overfit-tiny-batch", ANY, "the double squashing bounds the logits, so the loss cannot approach 0"),
        ("loss-not-decreasing", loss_stalled, "the double squashing shrinks the gradients and bounds the loss"),
        ("vanishing-gradient", ANY, "the extra softmax/sigmoid multiplies the gradient by its small Jacobian"),
        ("update-ratio", ratio_low, "the shrunken gradients make tiny updates"),
        ("chance-level-loss", ANY, "the loss is computed on probabilities, not logits, so its start is off"),
        ("saturated-activation", ANY, "the output sigmoid before the loss saturates"),
        ("random-input-loss", ANY, "crippled learning makes the real inputs look no better than noise"),
    ]),
    *_links("loss-input-format", loss_unbounded, [
        ("loss-not-decreasing", ANY, "an unbounded loss is minimised by inflating one output, not by learning"),
        ("exploding-gradient", ANY, "minimising an unbounded loss inflates outputs and gradients without end"),
        ("update-ratio", ratio_high, "an unbounded loss keeps pushing the weights"),
        ("activation-std", acts_exploding, "minimising an unbounded loss inflates the activations"),
        ("nan-trace", ANY, "the inflated outputs overflow"),
        ("lr-sweep", ANY, "an unbounded loss rewards any step size that inflates the outputs"),
        ("overfit-tiny-batch", ANY, "an unbounded loss has no floor to reach"),
        ("chance-level-loss", ANY, "raw outputs are not log-probabilities, so the start is off"),
    ]),
    # -- gradients and the update --------------------------------------------------------
    *_links("grad-not-zeroed", ANY, [
        ("exploding-gradient", ANY, "the .grad keeps the sum of all past gradients, so its norm grows step after step"),
        ("update-ratio", ratio_high, "each step applies the sum of all past gradients"),
        ("loss-not-decreasing", ANY, "stale, summed gradients point in an old direction with a growing step"),
        ("nan-trace", nan_after_blowup, "the summed gradients grow until the weights blow up"),
        ("activation-std", acts_exploding, "ever larger updates inflate the weights and the activations"),
        ("dead-relu", ANY, "ever larger updates switch ReLU units off"),
        ("saturated-activation", ANY, "ever larger updates push sigmoid/tanh units to their rails"),
    ]),
    *_links("nan-trace", nan_at_source, [
        ("exploding-gradient", ANY, "a growth ratio from non-finite or zero values is not an explosion"),
        ("update-ratio", ANY, "non-finite gradients make non-finite updates"),
        ("activation-std", ANY, "non-finite values corrupt every layer after them"),
        ("lr-sweep", ANY, "every trial meets the same non-finite values"),
        ("random-input-loss", ANY, "every trial meets the same non-finite values"),
        ("loss-not-decreasing", ANY, "the loss is non-finite from that step on"),
    ]),
    *_links("nan-trace", ANY, [
        ("gradient-check", gradcheck_nonfinite, "finite differences of a non-finite loss are meaningless; the backward may be right"),
        ("overfit-tiny-batch", overfit_nonfinite, "the tiny-batch loss meets the same non-finite values"),
    ]),
    *_links("gradient-check", gradcheck_wrong_backward, [
        ("overfit-tiny-batch", ANY, "a wrong backward steers the optimiser in a wrong direction"),
        ("loss-not-decreasing", ANY, "a wrong backward steers the optimiser in a wrong direction"),
        ("lr-sweep", ANY, "a wrong backward steers every trial in a wrong direction"),
        ("exploding-gradient", ANY, "a wrong backward can produce arbitrarily large gradients"),
        ("vanishing-gradient", ANY, "a wrong backward can drop the gradient"),
        ("nan-trace", nan_after_blowup, "a wrong backward can produce non-finite gradients"),
    ]),
    *_links("exploding-gradient", ANY, [
        ("nan-trace", nan_after_blowup, "the gradients grew until the weights or gradients overflowed"),
        ("activation-std", acts_exploding, "huge gradient steps inflate the weights and the activations"),
        ("loss-not-decreasing", loss_diverging, "huge gradient steps overshoot, so the loss rises"),
        ("dead-relu", ANY, "one huge update can switch ReLU units off for good"),
    ]),
    *_links("update-ratio", ratio_high, [
        ("exploding-gradient", ANY, "updates that rewrite the weights each step make the gradients grow"),
        ("activation-std", acts_exploding, "updates that rewrite the weights inflate the activations"),
        ("nan-trace", nan_after_blowup, "updates that rewrite the weights blow them up"),
        ("loss-not-decreasing", ANY, "updates that large overshoot the minimum"),
        ("dead-relu", ANY, "one huge update can switch ReLU units off for good"),
        ("saturated-activation", ANY, "huge updates push sigmoid/tanh units to their rails"),
        ("overfit-tiny-batch", ANY, "the same too-large steps keep the tiny batch from being fitted"),
        ("gradient-check", gradcheck_nonfinite, "the blown-up weights make the loss non-finite"),
    ]),
    *_links("update-ratio", ratio_destructive, [
        ("activation-std", acts_vanishing, "updates that rewrite the weights switch ReLU units off for good, "
         "and the activations behind them collapse"),
    ]),
    *_links("update-ratio", ratio_low, [
        ("loss-not-decreasing", loss_stalled, "updates too small to matter leave the loss where it is"),
        ("overfit-tiny-batch", ANY, "updates too small to matter cannot fit even a tiny batch"),
    ]),
    *_links("lr-sweep", lr_too_high, [
        ("update-ratio", ratio_high, "a learning rate too high makes updates too large for the weights"),
        ("exploding-gradient", ANY, "a learning rate too high overshoots and the gradients grow"),
        ("activation-std", acts_exploding, "a learning rate too high inflates the weights and the activations"),
        ("loss-not-decreasing", ANY, "a learning rate too high overshoots the minimum"),
        ("overfit-tiny-batch", ANY, "a learning rate too high overshoots even on a tiny batch"),
        ("nan-trace", nan_after_blowup, "a learning rate too high blows the weights up"),
        ("dead-relu", ANY, "one huge update can switch ReLU units off for good"),
        ("saturated-activation", ANY, "huge updates push sigmoid/tanh units to their rails"),
    ]),
    *_links("lr-sweep", lr_too_high_lower_fits, [
        ("vanishing-gradient", ANY, "huge updates saturate softmax/tanh/sigmoid units and the gradient "
         "behind them vanishes; at x0.1 the same samples are fitted"),
        ("random-input-loss", input_unused, "at a learning rate too high the model learns nothing from its "
         "inputs; at x0.1 it fits the same samples"),
    ]),
    *_links("lr-sweep", lr_too_low, [
        ("update-ratio", ratio_low, "a learning rate too low makes updates too small to matter"),
        ("loss-not-decreasing", loss_stalled, "a learning rate too low barely moves the loss"),
        ("overfit-tiny-batch", ANY, "a learning rate too low cannot fit even a tiny batch in the steps given"),
    ]),
    *_links("vanishing-gradient", ANY, [
        ("frozen-layer", grads_zero_or_unchanged, "the early layers' gradients are too small to change their weights"),
        ("update-ratio", ratio_low, "vanishing gradients make vanishing updates"),
        ("loss-not-decreasing", loss_stalled, "the early layers do not learn"),
        ("overfit-tiny-batch", ANY, "the early layers do not learn"),
        ("random-input-loss", input_unused, "the input's signal does not reach the output through the stack"),
        ("lr-sweep", lr_too_low, "vanishing gradients make every LR look too low"),
    ]),
    # -- activations ---------------------------------------------------------------------
    *_links("dead-relu", ANY, [
        ("activation-std", acts_vanishing, "dead units output zeros"),
        ("frozen-layer", grads_exactly_zero, "dead units pass no gradient to the layers before them"),
        ("vanishing-gradient", ANY, "dead units pass no gradient back"),
        ("update-ratio", ratio_low, "layers behind dead units get no gradient"),
        ("loss-not-decreasing", loss_stalled, "dead units pass no signal and no gradient"),
        ("overfit-tiny-batch", ANY, "dead units pass no signal and no gradient"),
        ("random-input-loss", input_unused, "dead units cut the input's signal"),
        ("lr-sweep", lr_too_low, "dead units make every LR look too low"),
    ]),
    *_links("saturated-activation", ANY, [
        ("vanishing-gradient", ANY, "saturated units have a derivative near zero"),
        ("frozen-layer", grads_zero_or_unchanged, "saturated units pass (almost) no gradient"),
        ("update-ratio", ratio_low, "saturated units pass (almost) no gradient"),
        ("loss-not-decreasing", loss_stalled, "saturated units pass (almost) no gradient"),
        ("overfit-tiny-batch", ANY, "saturated units pass (almost) no gradient"),
        ("random-input-loss", input_unused, "saturated units output constants whatever the input"),
        ("lr-sweep", lr_too_low, "saturated units make every LR look too low"),
    ]),
    *_links("activation-std", acts_exploding, [
        ("saturated-activation", ANY, "large pre-activations push sigmoid/tanh to their rails"),
        ("chance-level-loss", ANY, "large activations give large initial logits"),
    ]),
    *_links("activation-std", acts_vanishing, [
        ("vanishing-gradient", ANY, "weight gradients scale with the (vanishing) activations"),
    ]),
    *_links("overfit-tiny-batch", ANY, [
        ("loss-not-decreasing", loss_stalled, "a model that cannot fit a tiny batch cannot lower the training loss"),
    ]),
    # -- parameters and modes -------------------------------------------------------------
    *_links("weight-init", init_large, [
        ("activation-std", acts_exploding, "large weights multiply the activations layer after layer"),
        ("exploding-gradient", ANY, "large weights multiply the gradients layer after layer"),
        ("chance-level-loss", ANY, "large weights give large, confidently wrong initial logits"),
        ("saturated-activation", ANY, "large weights push sigmoid/tanh to their rails"),
        ("vanishing-gradient", ANY, "saturated units from large weights pass no gradient"),
        ("dead-relu", ANY, "large weights give large negative pre-activations to many units"),
        ("nan-trace", nan_not_backward, "activations multiplied layer after layer overflow"),
        ("update-ratio", ratio_low, "large weights make normal updates look small"),
        ("update-ratio", ratio_high, "large weights inflate the activations, and a weight's gradient scales "
         "with its input: the updates outgrow even the large weights"),
        ("loss-not-decreasing", ANY, "a badly scaled network trains badly"),
        ("overfit-tiny-batch", ANY, "a badly scaled network trains badly"),
        ("lr-sweep", ANY, "no learning rate suits weights of the wrong scale"),
    ]),
    *_links("weight-init", init_small, [
        ("activation-std", acts_vanishing, "small weights shrink the activations layer after layer"),
        ("vanishing-gradient", ANY, "small weights shrink the gradients layer after layer"),
        ("update-ratio", ratio_high, "normal updates are large next to tiny weights"),
        ("loss-not-decreasing", ANY, "a badly scaled network trains badly"),
        ("overfit-tiny-batch", ANY, "a badly scaled network trains badly"),
        ("lr-sweep", ANY, "no learning rate suits weights of the wrong scale"),
        ("random-input-loss", input_unused, "the input's signal shrinks to nothing through the layers"),
    ]),
    *_links("weight-init", init_symmetric, [
        ("activation-std", ANY, "identical units compute identical outputs"),
        ("dead-relu", ANY, "identical units are all on or all off together"),
        ("frozen-layer", grads_exactly_zero, "symmetric weights can give exactly zero gradients upstream"),
        ("vanishing-gradient", ANY, "symmetric weights pass a degenerate gradient"),
        ("loss-not-decreasing", ANY, "a layer of identical units has the capacity of one unit"),
        ("overfit-tiny-batch", ANY, "a layer of identical units has the capacity of one unit"),
        ("lr-sweep", ANY, "no learning rate breaks the symmetry"),
        ("random-input-loss", ANY, "a layer of identical units keeps little of the input"),
    ]),
    *_links("frozen-layer", params_cannot_train, [
        ("loss-not-decreasing", loss_stalled, "parameters that never update cannot lower the loss"),
        ("overfit-tiny-batch", ANY, "the copies keep the same frozen/unoptimised parameters"),
        ("update-ratio", ratio_low, "parameters that never update have no update"),
        ("lr-sweep", lr_too_low, "parameters that never update make every LR look too low"),
    ]),
    *_links("frozen-layer", grads_exactly_zero, [
        ("loss-not-decreasing", loss_stalled, "layers with zero gradients do not learn"),
    ]),
    *_links("unused-parameter", unregistered_untrained, [
        ("loss-not-decreasing", loss_stalled, "unregistered layers never train"),
        ("overfit-tiny-batch", ANY, "unregistered layers never train, in the copies too"),
        ("lr-sweep", ANY, "unregistered layers never train at any LR"),
        ("update-ratio", ratio_low, "unregistered layers never train"),
    ]),
    *_links("train-eval-mode", eval_mode, [
        ("activation-std", ANY, "in eval mode BatchNorm uses its initial running statistics instead of normalising"),
        ("exploding-gradient", ANY, "in eval mode BatchNorm does not normalise, so nothing bounds the scale"),
        ("loss-not-decreasing", ANY, "in eval mode normalisation and dropout behave as at inference"),
    ]),
    *_links("train-eval-mode", bn_batch_of_one, [
        ("frozen-layer", grads_zero_or_unchanged, "BatchNorm of one sample outputs its bias: the layers before get (almost) no gradient"),
        ("activation-std", ANY, "BatchNorm of one sample outputs a constant"),
        ("dead-relu", ANY, "BatchNorm of one sample outputs its bias, which a ReLU may cut"),
        ("vanishing-gradient", ANY, "BatchNorm of one sample passes no gradient to the layers before it"),
        ("update-ratio", ratio_low, "the layers before BatchNorm get no gradient"),
        ("loss-not-decreasing", ANY, "the layers before BatchNorm get no gradient"),
        ("overfit-tiny-batch", ANY, "the experiments meet the same batch of one"),
        ("lr-sweep", ANY, "the experiments meet the same batch of one"),
        ("random-input-loss", ANY, "BatchNorm of one sample erases the input"),
    ]),
    # -- issue 10 (G2): mechanisms of never-updated parameters, loss inputs by value, and
    #    collapsed predictions (one contiguous block) --------------------------------------
    *_links("frozen-layer", grads_wiped, [
        ("loss-not-decreasing", loss_stalled, "gradients wiped before every step never update the weights"),
        ("overfit-tiny-batch", ANY, "the copies are trained by the experiments' own loop, but the watched run never updated"),
        ("update-ratio", ratio_low, "gradients wiped before the step make no update"),
        ("lr-sweep", lr_too_low, "with the gradients wiped every LR looks too low"),
    ]),
    *_links("frozen-layer", frozen_by_mistake, [
        ("loss-not-decreasing", loss_stalled, "a frozen layer in the middle limits what the model can learn"),
        ("overfit-tiny-batch", ANY, "a frozen layer in the middle limits what the model can fit"),
        ("update-ratio", ratio_low, "frozen parameters have no update"),
        ("lr-sweep", ANY, "with a layer frozen in the middle the sweep tunes the LR around it"),
    ]),
    *_links("loss-input-format", loss_input_by_value, [
        ("loss-not-decreasing", ANY, "a loss fed values of the wrong form optimises the wrong objective"),
        ("overfit-tiny-batch", ANY, "a loss fed values of the wrong form cannot be driven to its floor"),
        ("lr-sweep", ANY, "no learning rate fixes a loss fed values of the wrong form"),
        ("chance-level-loss", ANY, "the loss is computed on values of the wrong form, so its start is off"),
        ("dead-relu", ANY, "the final ReLU before the loss cuts the negative logits"),
        ("random-input-loss", ANY, "a loss fed values of the wrong form hides what the inputs carry"),
        ("update-ratio", ANY, "a loss fed values of the wrong form sizes the gradients wrongly"),
        ("prediction-collapse", ANY, "a loss fed values of the wrong form drives the outputs to a constant"),
    ]),
    *_links("label-distribution", labels_imbalanced, [
        ("prediction-collapse", collapse_on_prior, "with one class dominating the labels, always predicting it is a cheap minimum of an unweighted loss"),
    ]),
    *_links("prediction-collapse", ANY, [
        ("loss-not-decreasing", ANY, "a model that predicts one class or a constant sits at the label prior's loss"),
        ("overfit-tiny-batch", ANY, "a model stuck at a constant prediction cannot fit the batch"),
        ("random-input-loss", ANY, "collapsed predictions ignore the input, so real inputs do no better than noise"),
        ("chance-level-loss", ANY, "a constant prediction gives the prior's loss, not the uniform guess"),
        ("lr-sweep", ANY, "collapsed predictions make every LR look alike"),
    ]),
])


def explaining_links(cause: Finding, symptom: Finding) -> list[Link]:
    """The links by which ``cause`` explains ``symptom`` (empty when none holds)."""
    if cause is symptom or cause.check == symptom.check:
        return []
    return [link for link in LINKS if link.holds(cause, symptom)]
