"""Activation checks: the scale of each layer's output, dead ReLUs, saturated units."""

from __future__ import annotations

from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import count, fmt, listing, median, next_norm_after

# Outputs whose scale is bounded or set by design are not judged: sigmoid outputs live in
# [0, 1] (std <= 0.5 always), recurrent layers return gated tanh states.
# Average pooling shrinks the std by averaging, by design.
_SKIP_CATEGORIES = {"dropout", "loss", "embedding", "container", "sigmoid", "recurrent", "pool"}


class ActivationStd(Check):
    """## What it measures
    The standard deviation of every hidden layer's output on the sampled training steps
    (median over steps), for leaf modules in forward order. The model's final output
    (logits, boxes) is not judged: its scale is set by the task.

    ## Why it matters
    The checklist: activation standard deviations are typically between 0.5 and 2;
    outside that range suspect vanishing or exploding activations. Activations that
    shrink layer after layer carry no signal to the loss and no gradient back; ones that
    grow saturate non-linearities and overflow in half precision.

    ## How to fix
    - Use a scale-preserving init for the layer type: He (Kaiming) for ReLU, Xavier for tanh.
    - Add normalisation (BatchNorm, LayerNorm) between layers.
    - Normalise the inputs (mean 0, std 1 per channel).

    ## Known false positives
    - Layers right after a ReLU have a smaller std than their inputs by design (about
      0.58 for a unit Gaussian), and PyTorch's default init shrinks the std by ~0.4x per
      ReLU layer: so only layers `far` times outside the band are reported (all layers
      outside the band are listed in the evidence).
    - Convolutions on 1x1 maps (squeeze-excitation blocks, globally pooled features)
      are not judged: the band describes feature maps.
    - Sigmoid outputs (bounded in [0, 1]) and recurrent layers' gated states are not
      judged (the checklist excepts LSTMs); saturated-activation covers sigmoid/tanh.
    - Pre-trained networks fed data in a different range than they were trained on
      (which is itself worth fixing).
    - Transformers with GPT-2-style init (Linear std 0.02, residual projections `c_proj`
      at 0.02/sqrt(2 n_layer)): the residual branches and the MLP's GELU output are small
      on purpose, and the next LayerNorm re-scales the stream. A layer below the band whose
      output reaches a normalisation layer (torch's, or a custom leaf class named `*Norm`)
      within three layers, with that norm's output inside the band, is reported as info.

    - A layer right after a recurrent layer (attention scores over RNN states, a
      projection of LSTM outputs) reads gated tanh states, small by design and not judged
      themselves: its small output (the state's std times the layer's gain) is info. The
      layers after it are judged as usual, so a signal that keeps shrinking still warns.

    ## Example
    A 10-layer tanh MLP with weights initialised at N(0, 0.01): the std drops by ~10x
    per layer, and layer 3 already outputs values with std < 1e-3.

    ## References
    - The training checklist ("activation standard deviations are typically 0.5 to 2").
    - DL4J visualisation guide (the origin of the 0.5-2 rule).
    - Glorot & Bengio, "Understanding the difficulty of training deep feedforward networks", AISTATS 2010.
    """

    id = "activation-std"
    title = "Layer activations outside the healthy scale"
    family = "activations"
    severity = Severity.ERROR
    needs = ("steps", "modules", "forward_order")
    thresholds = (
        Threshold("low", 0.5, "lower edge of the checklist's healthy std band", "std"),
        Threshold("high", 2.0, "upper edge of the checklist's healthy std band", "std"),
        Threshold("far", 5.0, "how many times beyond the band a layer must be to warrant a warning", "factor"),
        Threshold("collapsed", 1e-4, "std below this: the layer passes (almost) no signal, an error", "std"),
        Threshold("exploded", 1e3, "std above this: the activations have exploded, an error", "std"),
    )
    citations = (CHECKLIST, Citation("Glorot & Bengio, AISTATS 2010"))

    def evaluate(self, obs) -> Iterable[Finding]:
        per_layer: dict[str, list[float]] = {}
        leaves: set[str] = set()
        for rec in obs.sampled:
            for a in rec.activations:
                meta = obs.modules.get(a.path)
                if meta is None or not meta.is_leaf:
                    continue
                leaves.add(a.path)
                if meta.category in _SKIP_CATEGORIES or a.numel < 2 or a.out_nonfinite:
                    continue
                if a.spatial == 1:
                    continue  # a conv on a 1x1 map (squeeze-excitation, a pooled pyramid level): not a feature map
                per_layer.setdefault(a.path, []).append(a.std)
        leaf_order = [p for p in obs.forward_order if p in leaves]
        if not leaf_order:
            raise Skip("no layer output was observed (no sampled forward pass of the model)")
        # The last leaf produces the model's output (logits, boxes): its scale is the task's.
        hidden = [p for p in leaf_order[:-1] if p in per_layer]
        if not hidden:
            raise Skip("no hidden layer with a judged output type (linear, conv, norm, activation)")
        stds = {p: median(per_layer[p]) for p in hidden}
        low, high, far = self.low, self.high, self.far
        errors = [p for p, s in stds.items() if s < self.collapsed or s > self.exploded]
        warns = [p for p, s in stds.items() if p not in errors and (s < low / far or s > high * far)]
        outside = [p for p, s in stds.items() if not (low <= s <= high)]
        evidence = {"std_by_layer": {p: stds[p] for p in hidden}, "band": [low, high],
                    "outside_band": outside}
        # A small output that a normalisation layer right after re-scales into the band is a
        # design, not a vanishing signal: GPT-2's residual projections (`c_proj`, init std
        # 0.02/sqrt(2 n_layer)) write small updates into a residual stream that the next
        # LayerNorm normalises. It does not compound layer after layer, so it is info.
        renormalised = {}
        for p in warns:
            if stds[p] >= low:
                continue
            norm = next_norm_after(obs, p, leaf_order)
            norm_std = median(per_layer.get(norm, [])) if norm else None
            if norm_std is not None and low <= norm_std <= high:
                renormalised[p] = norm
        # A layer that reads a recurrent layer's gated tanh states (attention scores over RNN
        # outputs, a projection of LSTM states) inherits their small scale: recurrent
        # outputs are not judged, so neither is the first layer that only rescales them.
        # Its std is the state's times the layer's gain (~0.6 at PyTorch's default init):
        # on an unseeded seq2seq it falls either side of the warning's edge from run to run.
        after_recurrent = {}
        for p in warns:
            if stds[p] >= low or p in renormalised:
                continue
            before = leaf_order[leaf_order.index(p) - 1] if leaf_order.index(p) > 0 else None
            meta = obs.modules.get(before) if before else None
            if meta is not None and meta.category == "recurrent":
                after_recurrent[p] = before
        warns = [p for p in warns if p not in renormalised and p not in after_recurrent]
        for sev, layers in ((Severity.ERROR, errors), (Severity.WARNING, warns)):
            if not layers:
                continue
            worst = max(layers, key=lambda p: abs(_log_distance(stds[p], low, high)))
            direction = "vanishing" if stds[worst] < low else "exploding"
            yield self.finding(
                f"{count(len(layers), 'layer')} {'has' if len(layers) == 1 else 'have'} an activation std "
                f"more than {far:g}x outside the {low}-{high} band: "
                f"{listing([f'{p} ({fmt(stds[p])})' for p in layers])}; worst `{worst}` "
                f"({obs.modules[worst].class_name}) at {fmt(stds[worst])} ({direction}).",
                severity=sev, where=worst, step=None,
                layers=layers, worst_std=stds[worst], **evidence,
            )
        if after_recurrent:
            first = next(iter(after_recurrent))
            yield self.finding(
                f"{count(len(after_recurrent), 'layer')} {'has' if len(after_recurrent) == 1 else 'have'} a "
                f"small activation std ({listing([f'{p} ({fmt(stds[p])})' for p in after_recurrent])}), but "
                f"{'it reads' if len(after_recurrent) == 1 else 'each reads'} the states of a recurrent layer "
                f"(`{after_recurrent[first]}`), which are gated and small by design: the scale is inherited, "
                f"not shrunk layer after layer.",
                severity=Severity.INFO, where=first, layers=list(after_recurrent),
                fed_by=after_recurrent, kind="after_recurrent", **evidence,
                fix="Nothing to fix unless the layers after it shrink the signal further; a LayerNorm on "
                    "the recurrent states re-scales them if needed.",
            )
        if renormalised:
            first = next(iter(renormalised))
            yield self.finding(
                f"{count(len(renormalised), 'layer')} {'has' if len(renormalised) == 1 else 'have'} a small "
                f"activation std ({listing([f'{p} ({fmt(stds[p])})' for p in renormalised])}), but a "
                f"normalisation layer right after each re-scales the signal into the band "
                f"(`{renormalised[first]}` at {fmt(median(per_layer[renormalised[first]]))}): a deliberate "
                f"design such as GPT-2's scaled residual projections, not a vanishing signal.",
                severity=Severity.INFO, where=first, layers=list(renormalised),
                renormalised_by=renormalised, kind="renormalised", **evidence,
                fix="Nothing to fix if the small init is deliberate (transformer residual branches); "
                    "otherwise use a scale-preserving init for the layer type.",
            )


def _log_distance(s: float, low: float, high: float) -> float:
    import math

    if s <= 0:
        return 1e9
    if s < low:
        return math.log10(low / s)
    if s > high:
        return math.log10(s / high)
    return 0.0


class DeadRelu(Check):
    """## What it measures
    For every `nn.ReLU`/`nn.ReLU6` module, and every functional ReLU (`F.relu`,
    `torch.relu`, `x.relu_()`) applied to a module's output (named `<module> -> relu`,
    found by a walk of the loss's autograd graph on sampled steps), the share of its
    units (channels of a conv output, features of a linear output) that were zero for
    every sample of every sampled training batch.

    ## Why it matters
    A ReLU unit that is never positive passes no signal forward and no gradient back, so
    it never recovers: its capacity is lost. Whole dead layers stop training entirely.
    The usual causes are a large negative bias, a bad init, or one huge update from a
    too-high learning rate.

    ## How to fix
    - Check the layer before the ReLU: its bias (zero, not negative) and its init (Kaiming); normalise the inputs. Units dead from the first watched step were never alive: the learning rate did not kill them.
    - If units die later in a long run, lower the learning rate (a single large update often kills units).
    - Put BatchNorm before the ReLU, or use LeakyReLU/GELU.

    ## Known false positives
    - Very small batches: a unit can be inactive on a handful of samples by chance; the
      check waits for `min_samples` samples.
    - ReLUs applied to deliberately sparse signals.

    ## Example
    `nn.Linear(64, 128)` with its bias filled with -10 followed by `nn.ReLU()`: every
    unit outputs 0 from the first step on.

    ## References
    - He et al., "Delving Deep into Rectifiers", ICCV 2015.
    - Amazon SageMaker Debugger DeadRelu rule (50% of units per layer).
    - Lu et al., "Dying ReLU and Initialization: Theory and Numerical Examples", 2019.
    """

    id = "dead-relu"
    title = "Most units of a ReLU layer never activate"
    family = "activations"
    severity = Severity.ERROR
    needs = ("relu_units",)
    thresholds = (
        Threshold("max_dead_fraction", 0.5, "share of dead units above which the layer is flagged (warning)", "fraction"),
        Threshold("all_dead_fraction", 0.99, "share of dead units at which the layer is broken (error)", "fraction"),
        Threshold("min_samples", 16, "samples a unit must have seen before it can be called dead", "samples"),
    )
    citations = (Citation("He et al., ICCV 2015"), Citation("SageMaker Debugger DeadRelu rule"), CHECKLIST)

    def evaluate(self, obs) -> Iterable[Finding]:
        if not obs.relu_units:
            raise Skip("no ReLU was observed on a sampled step (neither an nn.ReLU module nor a functional "
                       "relu applied to a module's output)")
        judged = {p: u for p, u in obs.relu_units.items() if u["samples"] >= self.min_samples and u["units"] > 0}
        if not judged:
            raise Skip(f"fewer than {int(self.min_samples)} samples per ReLU unit were observed")
        for path, u in judged.items():
            frac = u["dead"] / u["units"]
            if frac <= self.max_dead_fraction:
                continue
            sev = Severity.ERROR if frac >= self.all_dead_fraction else Severity.WARNING
            yield self.finding(
                f"{frac:.0%} of the units of `{path}` ({u['dead']}/{u['units']}) were zero for "
                f"all {count(u['samples'], 'sample')} seen; they pass no gradient.",
                severity=sev, where=path, dead_fraction=frac, dead_units=u["dead"],
                units=u["units"], samples=u["samples"],
            )


class SaturatedActivation(Check):
    """## What it measures
    For every `nn.Sigmoid` and `nn.Tanh` module, the share of output values stuck at the
    rails: sigmoid outputs within 0.0025 of 0 or 1, tanh outputs beyond +/-0.995 — where
    the local derivative is below 1% of its maximum. Median over sampled steps.

    ## Why it matters
    Saturated units have a near-zero derivative: gradients through them vanish and the
    layers below stop learning. Saturation usually comes from unnormalised inputs,
    too-large weights, or a too-high learning rate.

    ## How to fix
    - Normalise the inputs and use Xavier/Glorot init for sigmoid/tanh layers.
    - Lower the learning rate; add normalisation before the non-linearity.
    - Prefer ReLU-family activations in hidden layers.

    ## Known false positives
    - Gates that are meant to be (almost) binary, e.g. late in training of an attention
      or LSTM gate; output sigmoids of a confident, well-trained classifier.

    ## Example
    `nn.Linear(100, 100)` with weights at N(0, 1) feeding `nn.Tanh()` on unit-variance
    inputs: pre-activations have std ~10 and most outputs are +/-1.

    ## References
    - Glorot & Bengio, AISTATS 2010 (saturation of sigmoid networks).
    - Amazon SageMaker Debugger SaturatedActivation rule; DeepDiagnosis (50% of nodes).
    """

    id = "saturated-activation"
    title = "Sigmoid/tanh units stuck at their extremes"
    family = "activations"
    severity = Severity.WARNING
    needs = ("steps", "modules")
    thresholds = (
        Threshold("max_saturated_fraction", 0.5, "share of saturated outputs above which the layer is flagged", "fraction"),
    )
    citations = (Citation("Glorot & Bengio, AISTATS 2010"), Citation("SageMaker Debugger SaturatedActivation rule"))

    def evaluate(self, obs) -> Iterable[Finding]:
        per: dict[str, list[float]] = {}
        for rec in obs.sampled:
            for a in rec.activations:
                if a.saturated_fraction is not None:
                    per.setdefault(a.path, []).append(a.saturated_fraction)
        if not per:
            raise Skip("no nn.Sigmoid or nn.Tanh module was observed")
        for path, fracs in per.items():
            frac = median(fracs)
            if frac > self.max_saturated_fraction:
                kind = obs.modules[path].class_name if path in obs.modules else "activation"
                yield self.finding(
                    f"{frac:.0%} of the outputs of `{path}` ({kind}) sit at the rails, where the "
                    f"derivative is < 1% of its maximum; gradients through it vanish.",
                    where=path, saturated_fraction=frac,
                )
