"""Parameter checks: update sizes, init scales, modes (frozen and unused parameters are in
``nndoctor.checks.frozen``, importable from here too)."""

from __future__ import annotations

import math
from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import (count, fmt, left_its_start, listing, median, next_norm_after, number, slope_t_statistic,
                    smallest_detectable_drop)
from .frozen import FrozenLayer, UnusedParameter, _s1  # noqa: F401  (re-exported)


class UpdateRatio(Check):
    """## What it measures
    For every weight matrix, the ratio ||update|| / ||weight|| of each measured update
    (the change the optimizer, or your hand-written rule, made in one step); the
    verdict uses the median over layers of the median over steps, and lists outliers.
    When the ratio is too low, it also compares the gradients' norm at the optimizer's
    step with their norm when backward() ended: scaled far down in between means
    gradient clipping with a max_norm far below the gradients' norm (the cause named).

    ## Why it matters
    The checklist: the ratio of the update size to the weight size should be about
    1e-3. Far above, the learning rate is too high and the weights are being rewritten
    each step (divergence, dead ReLUs); far below, nothing moves and training stalls.

    ## How to fix
    - Ratio too high: lower the learning rate (x0.1), add warm-up or gradient clipping.
    - Ratio too low: raise the learning rate (x10); check weight decay is not fighting the updates.
    - Clipped to nothing: raise `clip_grad_norm_`'s max_norm (1.0 is common) or remove the clipping.
    - Decay-driven (weight decay alone accounts for half the update or more): lower `weight_decay`.

    ## Known false positives
    - Adam's first steps update every weight by about the learning rate, so tiny
      layers with a small init show large ratios early; the band is wide (1e-6 to 1e-1).
    - Biases and norm parameters (zero-initialised) are not judged.
    - Weights initialised near zero (e.g. a tiny linear regression) change by a large
      share of their norm in the first updates, then settle. When only the first updates
      are above the band, the median over all updates is inside it, the weight norm grew
      at least `min_growth` times over the watched steps and the loss fell, the finding is
      info ("a near-zero start"), not a warning.
    - Linear models (a single weight tensor, e.g. a polynomial regression on unscaled
      features): the ~1e-3 rule of thumb is about deep networks, whose layers' updates
      compound. A linear model whose loss falls while its updates stay large over the
      whole run (but below `broken`) is reported as info, not a warning; so is one whose
      loss scatters too much to show a fall in a few steps (fresh random batches; only a
      fall of a fifth of its level or more would be significant) but shows no significant rise either:
      a linear model stepped too far overshoots further each step and its loss climbs.
      A flat loss with little scatter keeps the warning.

    ## Example
    SGD with lr=10 on a default-initialised MLP: each step changes the weights by more
    than their own norm (ratio > 1).

    ## References
    - The training checklist ("the ratio of update size to weight size should be about 0.001").
    - CS231n, "Neural Networks Part 3: ratio of weights:updates"; DL4J visualisation guide.
    """

    id = "update-ratio"
    title = "Update size / weight size far from ~1e-3"
    family = "parameters"
    severity = Severity.ERROR
    needs = ("steps", "params")
    thresholds = (
        Threshold("high", 1e-1, "median ratio above which the learning rate is likely too high (warning)", "ratio"),
        Threshold("broken", 1.0, "median ratio at which every update rewrites the weights (error)", "ratio"),
        Threshold("low", 1e-6, "median ratio below which updates are too small to matter (warning)", "ratio"),
        Threshold("early_updates", 5, "the first measured updates, also judged on their own (a too-high LR shows there before the weights inflate)", "updates"),
        Threshold("min_growth", 2.0, "growth of the weight norm over the watched steps (with a falling loss and a healthy median over all updates) at which large first updates are a near-zero start, reported as info", "factor"),
    )
    citations = (CHECKLIST, Citation("CS231n notes, 'Neural Networks Part 3'"))

    def evaluate(self, obs) -> Iterable[Finding]:
        per: dict[str, list[float]] = {}
        step_medians: list[float] = []
        for rec in obs.steps:
            this_step = []
            for name, upd in rec.update_norms.items():
                meta = obs.params.get(name)
                w = rec.weight_norms.get(name)
                if meta is None or meta.role != "weight" or not w or not math.isfinite(upd) or not math.isfinite(w):
                    continue
                per.setdefault(name, []).append(upd / w)
                if upd > 0:
                    this_step.append(upd / w)
            if this_step:
                step_medians.append(median(this_step))
        if not per:
            raise Skip("no weight update was measured (no sampled step with an update)")
        ratios = {n: median(v) for n, v in per.items()}
        moving = {n: r for n, r in ratios.items() if r > 0}
        if not moving:
            raise Skip("no weight changed in the measured updates (see frozen-layer)")
        # A too-high learning rate inflates the weights within a few steps, after which
        # the ratio shrinks again: the first updates are judged on their own as well.
        early = median(step_medians[: int(self.early_updates)])
        overall = max(median(moving.values()), early)
        evidence = {"median_ratio": overall, "early_median_ratio": early, "ratio_by_param": moving,
                    "ratio_by_step": step_medians[:50]}
        if overall >= self.broken or overall > self.high:
            worst = max(moving, key=moving.get)
            sev = Severity.ERROR if overall >= self.broken else Severity.WARNING
            whole = median(moving.values())
            n_early = min(len(step_medians), int(self.early_updates))
            when = (f"over the first {count(n_early, 'measured update')}; the median over all "
                    f"{len(step_medians)} is {fmt(whole)}" if early > whole else
                    f"median over {count(len(moving), 'weight tensor')} and {count(len(step_medians), 'update')}")
            growth = _weight_growth(obs, list(moving))
            if sev is Severity.WARNING and whole <= self.high and growth is not None \
                    and growth >= self.min_growth and _loss_fell(obs) and _started_small(obs, list(moving)):
                # Only the first updates are large, measured against weights that started near
                # zero and have since grown (a linear model fitted from a small init) while the
                # loss fell: the denominator was small, not the learning rate too high.
                yield self.finding(
                    f"The first updates change the weights by {fmt(early)} of their norm ({when}), but "
                    f"the weights started small and grew {fmt(growth)}x while the loss fell: a near-zero "
                    f"start, not a too-high learning rate.",
                    severity=Severity.INFO, where=obs.params[worst].module, direction="high",
                    kind="small_start", weight_growth=growth, **evidence,
                    fix="Nothing to fix if the loss keeps falling; the ratio settles as the weights grow.")
                return
            loss_moved = "fell" if _loss_fell(obs) else "did not rise" if _loss_did_not_rise(obs) else None
            if sev is Severity.WARNING and len(moving) == 1 and whole > self.high and loss_moved:
                # One weight tensor: a linear model. The ~1e-3 rule of thumb is about deep
                # nets, whose layers' updates compound; a linear model's ratio is set by the
                # scale of its features, and a falling loss says the steps are not too large;
                # so does one that does not rise (fresh random batches can scatter the loss
                # too much to see it fall in a few steps), since a linear model stepped too
                # far overshoots further each step and its loss climbs.
                # (Only when the ratio stays large over the whole run: large first updates
                # alone are the near-zero start's case above, which needs the weights to grow.)
                yield self.finding(
                    f"Each update changes the weights by {fmt(overall)} of their norm ({when}), but the "
                    f"model has a single weight tensor (a linear model) and the loss {loss_moved}: its step size "
                    f"is set by the scale of its inputs, and the ~1e-3 rule of thumb for deep networks "
                    f"does not apply.",
                    severity=Severity.INFO, where=obs.params[worst].module, direction="high",
                    kind="linear_model", **evidence,
                    fix="Nothing to fix while the loss keeps falling; if it oscillates, lower the learning "
                        "rate or standardise the input features.")
                return
            decay = _decay_per_step(obs)
            if decay is not None and decay[0] >= 0.5 * whole:
                shrink, wd, lr = decay
                yield self.finding(
                    f"Each update changes the weights by {fmt(overall)} of their norm ({when}; ~1e-3 is healthy), "
                    f"and weight decay alone accounts for {fmt(shrink)} of it (weight_decay={fmt(wd)} at lr "
                    f"{fmt(lr)}, momentum included): the decay, not the gradient, drives the weights, pulling "
                    f"them to zero every step.",
                    severity=sev, where=obs.params[worst].module, direction="high", mechanism="weight_decay",
                    weight_decay=wd, decay_per_step=shrink, **evidence,
                    fix="Lower weight_decay to the usual range (5e-4 for SGD on CNNs, 1e-4 to 1e-2 typically; "
                        "0.01-0.1 with AdamW, whose decay is not multiplied by the gradient's scale).")
                return
            yield self.finding(
                f"Each update changes the weights by {fmt(overall)} of their norm ({when}; ~1e-3 is healthy); "
                f"the most-changed tensor is `{worst}` ({fmt(moving[worst])} over all updates). "
                f"The learning rate is likely too high.",
                severity=sev, where=obs.params[worst].module, direction="high", **evidence)
        elif median(moving.values()) < self.low:
            overall = median(moving.values())
            worst = min(moving, key=moving.get)
            clip = _clip_factor(obs)
            if clip is not None and clip < 0.1:
                yield self.finding(
                    f"Each update changes the weights by only {fmt(overall)} of their norm (median; ~1e-3 is "
                    f"healthy), because the gradients are scaled to {fmt(clip)} of their norm between backward() "
                    f"and the optimizer's step: gradient clipping (clip_grad_norm_) with a max_norm far below "
                    f"the gradients' norm.",
                    severity=Severity.WARNING, where=obs.params[worst].module, direction="low",
                    mechanism="clipped", clip_factor=clip, **evidence,
                    fix="Raise clip_grad_norm_'s max_norm (1.0 is common; the tuning playbook clips at the 90th "
                        "percentile of the unclipped norms) or remove the clipping; the learning rate is not the "
                        "problem.")
                return
            yield self.finding(
                f"Each update changes the weights by only {fmt(overall)} of their norm (median; ~1e-3 "
                f"is healthy): the learning rate is likely too low to make progress.",
                severity=Severity.WARNING, where=obs.params[worst].module, direction="low", **evidence)


def _decay_per_step(obs) -> tuple[float, float, float] | None:
    """(share of the weights that weight decay removes per step, weight_decay, lr) of an
    SGD or AdamW optimizer whose decay is >= 0.01: lr * wd for AdamW (decoupled),
    lr * wd / (1 - momentum) for SGD (the decay term rides the momentum). None for other
    optimizers (Adam's coupled L2 is rescaled by its second moment)."""
    worst = None
    for opt in obs.optimizers:
        cls = opt.get("class")
        for g in opt.get("groups", []):
            wd, lr = g.get("weight_decay") or 0.0, g.get("lr")
            if not isinstance(lr, (int, float)) or not isinstance(wd, (int, float)) or wd < 0.01:
                continue
            if cls == "SGD":
                m = g.get("momentum") or 0.0
                shrink = lr * wd / max(1.0 - m, 1e-3)
            elif cls == "AdamW":
                shrink = lr * wd
            else:
                continue
            if worst is None or shrink > worst[0]:
                worst = (shrink, float(wd), float(lr))
    return worst


def _clip_factor(obs) -> float | None:
    """Median over sampled steps of the gradient norm at the optimizer's step over the
    norm at the end of backward (1: untouched; clipping scales it down; 0: wiped)."""
    factors = []
    for r in obs.steps:
        names = [n for n in r.grad_norms_at_backward if n in r.grad_norms]
        if not names:
            continue
        before = math.sqrt(math.fsum(r.grad_norms_at_backward[n] ** 2 for n in names))
        after = math.sqrt(math.fsum(r.grad_norms[n] ** 2 for n in names))
        if before > 0 and math.isfinite(before) and math.isfinite(after) and after > 0:
            factors.append(after / before)
    return median(factors) if factors else None


def _weight_growth(obs, names: list[str]) -> float | None:
    """Median over the judged weights of (last measured norm / first measured norm)."""
    growth = []
    for n in names:
        norms = [r.weight_norms[n] for r in obs.steps if n in r.weight_norms and math.isfinite(r.weight_norms[n])]
        if len(norms) >= 2 and norms[0] > 0:
            growth.append(norms[-1] / norms[0])
    return median(growth) if growth else None


def _started_small(obs, names: list[str]) -> bool:
    """A near-zero start: a single weight tensor (a linear model, whose weights grow to
    the scale of its solution), or weights that started below 0.1/sqrt(fan_in). Deep
    layers at a normal init that grow many-fold in a few steps were blown up by the
    learning rate (Adam at lr 1 on a CNN: x92 in 20 steps)."""
    if len(names) == 1:
        return True
    scales = [obs.params[n].init_std * math.sqrt(obs.params[n].fan_in) for n in names
              if n in obs.params and obs.params[n].init_std is not None and obs.params[n].fan_in]
    return bool(scales) and max(scales) < 0.1


def _loss_did_not_rise(obs) -> bool:
    """The watched losses scatter too much to show a fall (only one of a fifth of their
    starting level or more would be significant, loss-not-decreasing's bar), yet show no significant rise (least-squares slope
    t < 2; two medians of scattered batches may differ by half on noise alone), and did not
    jump away from the first loss for good (every later loss 50% above it: a divergence). A
    loss that is flat with little scatter is not this case: a fall would have shown."""
    values = [v for _, v in obs.losses if v is not None and math.isfinite(v)]
    if len(values) < 6:
        return False
    first = median(values[: len(values) // 3])
    _, t = slope_t_statistic(values)
    return smallest_detectable_drop(values) > 0.2 * abs(first) and t < 2.0 and not left_its_start(values, 0.5)


def _loss_fell(obs) -> bool:
    """The median loss of the last third of the watched steps is below that of the first third."""
    values = [v for _, v in obs.losses if v is not None and math.isfinite(v)]
    if len(values) < 6:
        return False
    third = len(values) // 3
    return median(values[-third:]) < median(values[:third])


class WeightInit(Check):
    """## What it measures
    At the start of watching, the standard deviation of every Linear/Conv weight,
    expressed in units of 1/sqrt(fan_in) (LeCun). PyTorch's default init gives 0.58,
    Xavier 0.3-1.4 depending on fan-out, He 1.41. Also weights that are all equal
    (zero or constant) in a hidden layer.

    ## Why it matters
    The checklist: initialisation matters; use Xavier/Glorot or He. A scale far above
    He explodes the activations layer after layer; far below vanishes them. Identical
    weights make every unit of a layer compute the same thing forever (symmetry is
    never broken).

    ## How to fix
    - Use `nn.init.kaiming_normal_(w, nonlinearity="relu")` for ReLU nets, `nn.init.xavier_uniform_` for tanh/sigmoid, or keep PyTorch's defaults.
    - Never initialise hidden weights to a constant; zero init is fine only for the last layer or residual branches.

    ## Known false positives
    - Pre-trained weights can legitimately have other scales (then activation-std tells
      whether it matters).
    - Zero-initialised last layers or residual-branch outputs (a known good practice) are
      not flagged: only layers before the last one are. A small-scale output layer is info.
    - Transformers with GPT-2-style init: every Linear at std 0.02 and the residual
      projections (`c_proj`) at 0.02/sqrt(2 n_layer), embeddings at 0.02. At small widths
      these fall below 0.1/sqrt(fan_in), yet they are deliberate: the projection writes
      into a residual stream that the next LayerNorm re-normalises. A small weight whose
      module reaches a normalisation layer (torch's, or a custom leaf class named `*Norm`)
      within three layers in forward order is reported as info, not a warning; the advice
      "use kaiming_normal_" does not apply there.

    ## Example
    `nn.init.normal_(layer.weight, std=1.0)` on a `Linear(512, 512)`: the std is 22.6x
    LeCun's, and activations grow ~16x per layer.

    ## References
    - The training checklist ("initialisation matters: Xavier/Glorot or He").
    - He et al., ICCV 2015; Glorot & Bengio, AISTATS 2010; LeCun et al., "Efficient BackProp", 1998.
    """

    id = "weight-init"
    title = "Initial weight scale far from Xavier/He"
    family = "parameters"
    severity = Severity.ERROR
    needs = ("params", "forward_order", "modules")
    thresholds = (
        Threshold("low", 0.1, "std x sqrt(fan_in) below which the init is too small (warning)", "LeCun units"),
        Threshold("high", 4.0, "std x sqrt(fan_in) above which the init is too large (warning; He is 1.41)", "LeCun units"),
    )
    citations = (CHECKLIST, Citation("He et al., ICCV 2015"), Citation("Glorot & Bengio, AISTATS 2010"))

    def evaluate(self, obs) -> Iterable[Finding]:
        weights = [m for m in obs.params.values() if m.role == "weight" and m.init_std is not None and m.fan_in]
        if not weights:
            raise Skip("no Linear/Conv weight to judge")
        order = {p: i for i, p in enumerate(obs.forward_order)}
        ordered = sorted(weights, key=lambda m: order.get(m.module, 10**9))
        last_module = ordered[-1].module if order else None
        symmetric, small, large = [], [], []
        scale = {}
        for m in weights:
            s = m.init_std * math.sqrt(m.fan_in)
            scale[m.name] = s
            if m.init_all_equal:
                if m.module != last_module:
                    symmetric.append(m)
                continue
            if s < self.low:
                small.append(m)
            elif s > self.high:
                large.append(m)
        evidence = {"scale_by_weight": scale}
        if symmetric:
            names = [m.name for m in symmetric]
            yield self.finding(
                f"{listing(names)} start with all weights equal (value {fmt(symmetric[0].init_mean)}): every "
                f"unit of the layer computes the same thing and symmetry is never broken.",
                severity=Severity.ERROR, where=symmetric[0].module, weights=names, kind="symmetric", **evidence,
            )
        # Deliberately small scales: the output layer (a small or zero last layer is good
        # practice), and transformer-style init (GPT-2: Linear std 0.02, residual projections
        # 0.02/sqrt(2 n_layer)) of a layer whose output a normalisation layer re-scales right
        # after. Reported as info: "use kaiming_normal_" would be wrong advice there.
        leaf_order = [p for p in obs.forward_order if p in obs.modules and obs.modules[p].is_leaf]
        designed = {}
        for m in small:
            if m.module == last_module:
                designed[m.name] = "the output layer"
            else:
                norm = next_norm_after(obs, m.module, leaf_order)
                if norm:
                    designed[m.name] = f"`{norm}` re-normalises its output"
        small = [m for m in small if m.name not in designed]
        for group, word in ((large, "large"), (small, "small")):
            if not group:
                continue
            worst = max(group, key=lambda m: abs(math.log(max(scale[m.name], 1e-30))))
            yield self.finding(
                f"{count(len(group), 'weight tensor')} start{'s' if len(group) == 1 else ''} with a {word} scale: "
                f"{listing([m.name for m in group])}; "
                f"`{worst.name}` has std {fmt(worst.init_std)} = {fmt(scale[worst.name])}/sqrt(fan_in={number(worst.fan_in)}) "
                f"(He is 1.41/sqrt(fan_in), PyTorch's default 0.58/sqrt(fan_in)).",
                severity=Severity.WARNING, where=worst.module, weights=[m.name for m in group], kind=word, **evidence,
            )
        if designed:
            names = list(designed)
            first = obs.params[names[0]]
            yield self.finding(
                f"{count(len(names), 'weight tensor')} start{'s' if len(names) == 1 else ''} with a small scale "
                f"by design: {listing([f'{n} ({fmt(scale[n])}/sqrt(fan_in); {designed[n]})' for n in names], 3)}. "
                + ("Small residual projections before a LayerNorm (GPT-2's 0.02/sqrt(2 n_layer)) are a "
                   "deliberate choice, not a bad init."
                   if any(r != "the output layer" for r in designed.values()) else
                   "A small output layer is a deliberate choice (the first predictions start near "
                   "neutral), not a bad init."),
                severity=Severity.INFO, where=first.module, weights=names, kind="small_by_design",
                reasons=designed, **evidence,
                fix="Nothing to fix if the small init is deliberate; Kaiming/Xavier advice does not apply "
                    "to transformer residual projections.",
            )


class TrainEvalMode(Check):
    """## What it measures
    Whether the model was in `eval()` mode during training steps (steps with a
    backward), and whether a BatchNorm layer in training mode saw batches of one sample.

    ## Why it matters
    The checklist: frameworks behave differently in train and eval phase. In eval mode
    dropout is off and BatchNorm uses its running statistics, which are never updated:
    a model left in eval mode after validation trains without its regularisers and with
    frozen normalisation. A BatchNorm batch of one has zero variance: its output is
    pure noise around the bias.

    ## How to fix
    - Call `model.train()` at the start of every training epoch (after any `model.eval()`).
    - Use batches of at least 2 (drop_last=True in the DataLoader) or GroupNorm/LayerNorm for tiny batches.

    ## Known false positives
    - Fine-tuning with BatchNorm deliberately frozen in eval mode (reported as a warning
      only when the model has dropout or BatchNorm; otherwise eval mode changes nothing
      and it is info).

    ## Example
    `model.eval(); validate(); for x, y in loader: ...` with no `model.train()` in the
    next epoch.

    ## References
    - The training checklist ("frameworks behave differently in train and eval phase").
    - Ioffe & Szegedy, "Batch Normalization", ICML 2015.
    """

    id = "train-eval-mode"
    title = "Training in eval mode, or BatchNorm on batches of one"
    family = "modes"
    severity = Severity.WARNING
    needs = ("steps", "modules")
    citations = (CHECKLIST, Citation("Ioffe & Szegedy, ICML 2015"))

    def evaluate(self, obs) -> Iterable[Finding]:
        steps = [r for r in obs.steps if r.backward_calls > 0 and r.training is not None]
        if not steps:
            raise Skip("no training step was observed")
        in_eval = [r.step for r in steps if r.training is False]
        if in_eval:
            mode_sensitive = [p for p, m in obs.modules.items() if m.category in ("dropout", "batchnorm")]
            sev = Severity.WARNING if mode_sensitive else Severity.INFO
            yield self.finding(
                f"The model was in eval mode during {len(in_eval)} of {count(len(steps), 'training step')}"
                + (f"; {count(len(mode_sensitive), 'Dropout/BatchNorm layer')} behave{_s1(mode_sensitive)} differently there "
                   f"({listing(mode_sensitive, 3)})." if mode_sensitive else
                   " (it has no Dropout/BatchNorm, so this changes nothing yet)."),
                severity=sev, step=in_eval[0], eval_steps=in_eval[:50], mode_sensitive_layers=mode_sensitive,
            )
        bn_one = sorted({p for r in obs.steps for p in r.bn_batch_one})
        if bn_one:
            yield self.finding(
                f"{'BatchNorm layer' if len(bn_one) == 1 else 'BatchNorm layers'} {listing(bn_one)} received a batch of one sample in training mode: "
                f"the batch statistics are meaningless.",
                severity=Severity.WARNING, where=bn_one[0], layers=bn_one,
            )
