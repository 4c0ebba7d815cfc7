"""Numerics and gradient checks: NaN/Inf tracing, exploding/vanishing gradients,
gradients that are never reset."""

from __future__ import annotations

import math
from typing import Iterable

from .._report import Finding, Severity
from ._base import CHECKLIST, Check, Citation, Skip, Threshold
from ._util import count, fmt, listing, median, number


class NanTrace(Check):
    """## What it measures
    Whether NaN or Inf appear anywhere: in a layer's output (forward), in a parameter's
    gradient (backward) or in the loss. For the forward pass it names the *producer*:
    the first module, in call order, whose output is non-finite while its inputs were
    finite (modules that only pass the value on are listed apart). Tuple, list and dict
    outputs are inspected element by element. Non-finite values already in the input
    batch (seen first by the first module the model runs, which made none of them) are
    named as the input's. For the backward pass it names the first parameter gradient,
    in backward order, that is non-finite.

    ## Why it matters
    One non-finite value spreads to every weight at the next update and training is
    over. The checklist: NaN comes from division by zero, log of 0 or of a negative
    number, or a too-high learning rate; it may take a layer-by-layer search to find
    where it starts — this check does that search.

    ## How to fix
    - If the input batch carries them: check the data and its preprocessing (`(x - mean) / (std + 1e-8)`, constant features, missing values).
    - If the producer is your own code: guard log/sqrt/division (`log(x.clamp_min(1e-8))`, `x / (y + eps)`).
    - If the weights already were non-finite: an earlier update blew up; lower the learning rate, clip gradients (`torch.nn.utils.clip_grad_norm_`).
    - With fp16 autocast: keep the loss in fp32 and use GradScaler.

    ## Known false positives
    - Masked attention that fills with -inf on purpose and never lets it reach a
      reduction (the -inf stays inside the layer and never reaches its output).
    - Steps skipped by a GradScaler after an overflow (the scaler handles those).

    ## Example
    A custom loss `-(y * torch.log(p)).sum()` where `p` contains an exact 0: the loss is
    `inf`, then every gradient is NaN.

    ## References
    - The training checklist ("NaN during training ... it may take a layer-by-layer search").
    - `torch.autograd.detect_anomaly`, which checks NaN in backward only, at 1.5-3x the cost.
    """

    id = "nan-trace"
    title = "Non-finite values (NaN/Inf) appear in training"
    family = "numerics"
    severity = Severity.ERROR
    needs = ("nonfinite", "steps")
    thresholds = (
        Threshold("max_skipped_fraction", 0.5, "share of AMP steps the GradScaler may skip (inf/NaN gradients) before it is a problem (warning)", "fraction"),
        Threshold("max_skipped_run", 8, "consecutive skipped AMP steps at which the overflow persists (error); a few skips while the scale calibrates are normal", "steps"),
    )
    citations = (CHECKLIST, Citation("PyTorch torch.autograd.detect_anomaly documentation"),
                 Citation("PyTorch AMP docs, GradScaler (skipped steps)"))

    def evaluate(self, obs) -> Iterable[Finding]:
        if not obs.steps:
            raise Skip("no training step was observed")
        yield from self._skipped_steps(obs)
        events = {e.direction: e for e in obs.nonfinite}
        if not events:
            return
        fwd, bwd, loss = events.get("forward"), events.get("backward"), events.get("loss")
        evidence: dict = {"events": [
            {"direction": e.direction, "step": e.step, "where": e.where, **e.detail} for e in obs.nonfinite
        ]}
        first = min(e.step for e in obs.nonfinite)
        traced = {r.step for r in obs.steps if r.sampled and r.activations}
        if fwd is not None and fwd.step == first and fwd.detail.get("producer_found"):
            layer = fwd.detail["first_bad_layer"]
            cls = fwd.detail.get("class") or "module"
            passed = [p for p in fwd.detail.get("passed_on_by", []) if p != layer]
            fix = None
            origin = ""
            if fwd.detail.get("params_nonfinite"):
                origin = " Its own parameters were already non-finite: an earlier update blew them up."
                fix = ("An update made the weights non-finite: lower the learning rate, clip gradients "
                       "(torch.nn.utils.clip_grad_norm_), and check the loss for log(0) or x/0.")
            elif fwd.detail.get("own_code"):
                origin = (f" The value is made by `{layer}`'s own forward code (not by a child module): "
                          f"look for log, sqrt, division or exp there.")
                fix = ("Guard the operation in that forward: clamp before log/sqrt, add eps to denominators, "
                       "use log_softmax/logsumexp instead of log(softmax)/log(sum(exp)).")
            where_el = f" (output element {fwd.detail['output_index']})" if fwd.detail.get("output_index") else ""
            message = (
                f"NaN/Inf first appears in the output of `{layer}` ({cls}){where_el} at step {fwd.step}"
                f"; its inputs were finite.{origin}"
                + (f" Passed on by {listing(passed, 3)}." if passed else "")
            )
            yield self.finding(message, where=layer, step=fwd.step, fix=fix, direction="forward",
                               first_bad_layer=layer, **evidence)
            return
        if fwd is not None and fwd.step == first:
            yield self._unproduced(obs, fwd, evidence)
            return
        later = ""
        if fwd is not None and fwd.step > first:
            later = f" From step {fwd.step} on, the forward pass is non-finite from `{fwd.where}` on."
        if loss is not None and loss.step == first:
            if loss.step in traced:
                message = (f"The loss is {loss.kind} at step {loss.step} while the model's outputs were finite: "
                           f"the loss computation produced it (log of 0 or of a negative number, division by zero).")
            else:
                message = (f"The loss is {loss.kind} at step {loss.step}; that step was not traced layer by layer "
                           f"(watch with Doctor(sample_every=1), as `nndoctor check` does, to trace every step).")
            yield self.finding(
                message + later, where="loss", step=loss.step, direction="loss",
                fix="Compute the loss from logits with the fused losses (CrossEntropyLoss, BCEWithLogitsLoss), "
                    "or clamp before log: torch.log(p.clamp_min(1e-8)); if it only happens after some steps, "
                    "lower the learning rate.",
                **evidence,
            )
            return
        if bwd is not None and bwd.step == first:
            yield self.finding(
                f"The first non-finite gradient (in backward order) is `{bwd.where}` at step {bwd.step}"
                + (" while the loss was finite: the backward pass itself overflowed or divided by zero"
                   " (e.g. sqrt at 0, a custom backward)." if bwd.detail.get("loss_finite") else ".")
                + f" {count(bwd.detail.get('n_bad', 1), 'parameter tensor')} had non-finite gradients." + later,
                where=bwd.where, step=bwd.step, direction="backward", first_bad_gradient=bwd.where,
                **evidence,
            )
            return
        assert fwd is not None
        yield self._unproduced(obs, fwd, evidence)

    def _unproduced(self, obs, fwd, evidence: dict) -> Finding:
        """Non-finite values that no module made from finite inputs: at the first module
        the model runs, the input batch itself; deeper, code between modules."""
        if obs.forward_order and fwd.where == obs.forward_order[0]:
            return self.finding(
                f"The input batch already contains NaN/Inf at step {fwd.step}: `{fwd.where}`, the first "
                f"module the model runs, receives it, and everything after it is non-finite. The data or "
                f"its preprocessing made it (a division by a zero std of a constant feature, log of 0, a "
                f"missing value read as NaN).",
                where=fwd.where, step=fwd.step, direction="input", **evidence,
                fix="Check a batch with torch.isfinite(x).all(); standardise with (x - mean) / (std + 1e-8) or "
                    "drop constant features; fill or drop missing values before training.",
            )
        return self.finding(
            f"NaN/Inf reaches the output of `{fwd.where}` at step {fwd.step}, but no module "
            f"produced it from finite inputs: it comes from the input batch or from code "
            f"between modules.",
            where=fwd.where, step=fwd.step, direction="forward", **evidence,
        )


    def _skipped_steps(self, obs) -> Iterable[Finding]:
        """GradScaler skips steps with inf/NaN gradients and lowers its scale: a few skips
        are how it calibrates; skipping that persists means the overflow is real."""
        steps = [r for r in obs.steps if r.backward_calls > 0]
        skipped = [r.step for r in steps if r.skipped]
        if not skipped:
            return
        run = best = 0
        for r in steps:
            run = run + 1 if r.skipped else 0
            best = max(best, run)
        frac = len(skipped) / len(steps)
        evidence = {"skipped_steps": skipped[:100], "skipped_fraction": frac, "longest_run": best}
        if best >= self.max_skipped_run:
            yield self.finding(
                f"The GradScaler skipped {count(best, 'consecutive step')} ({len(skipped)} of {number(len(steps))} in all): "
                f"the gradients overflow at every loss scale, so the model is not training.",
                severity=Severity.ERROR, step=skipped[0], direction="amp", **evidence,
                fix="Find the layer that overflows in fp16 (run `nndoctor check` or Doctor(sample_every=1)); "
                    "keep the loss in fp32, lower the learning rate, or use bf16 autocast.")
        elif frac > self.max_skipped_fraction:
            yield self.finding(
                f"The GradScaler skipped {len(skipped)} of {count(len(steps), 'step')} because of inf/NaN gradients.",
                severity=Severity.WARNING, step=skipped[0], direction="amp", **evidence,
                fix="Check for fp16 overflow (large activations, exp/pow in the model), keep losses in fp32.")


def _total_norms(obs) -> list[tuple[int, float]]:
    out = []
    for rec in obs.steps:
        if rec.grad_total is not None:
            out.append((rec.step, rec.grad_total))
        elif rec.grad_norms:
            total = math.sqrt(sum(v * v for v in rec.grad_norms.values())) if all(
                math.isfinite(v) for v in rec.grad_norms.values()) else math.inf
            out.append((rec.step, total))
    return out


class ExplodingGradient(Check):
    """## What it measures
    The global gradient L2 norm (all parameters) at every watched step: how much it
    grows from the first steps to its peak, and its absolute size.

    ## Why it matters
    Gradients that grow step after step make each update larger than the last until the
    loss diverges or turns NaN. The checklist: exploding gradients call for gradient
    clipping or a lower learning rate.

    ## How to fix
    - Lower the learning rate (try x0.1).
    - Clip the gradient norm: `torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`; the tuning playbook sets the threshold at the 90th percentile of unclipped norms.
    - Add normalisation layers, check the init scale, add LR warm-up.

    ## Known false positives
    - The very first steps of a network whose last layer is initialised at zero (the
      norm rises from ~0); the growth is measured against the median of the first steps,
      and a spike must be large.
    - Losses with `reduction="sum"` have large but stable norms (growth, not size,
      drives the warning).

    ## Example
    SGD with lr=10 on a small MLP: the gradient norm grows by 100x within ten steps,
    then the loss becomes NaN.

    ## References
    - The training checklist (exploding/vanishing gradients; gradient clipping).
    - Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
    - Google deep learning tuning playbook (clipping at the 90th percentile).
    """

    id = "exploding-gradient"
    title = "Gradient norms grow out of bounds"
    family = "gradients"
    severity = Severity.ERROR
    needs = ("steps",)
    thresholds = (
        Threshold("max_growth", 100.0, "peak global grad norm / median of the first 3 steps above which it is exploding (warning)", "ratio"),
        Threshold("max_norm", 1e6, "absolute global gradient norm above which training is broken (error)", "L2 norm"),
    )
    citations = (CHECKLIST, Citation("Pascanu et al., ICML 2013"))

    def evaluate(self, obs) -> Iterable[Finding]:
        norms = _total_norms(obs)
        if len(norms) < 4:
            raise Skip(f"needs gradient norms of at least 4 steps, saw {len(norms)}")
        finite_norms = [(s, n) for s, n in norms if math.isfinite(n)]
        if len(finite_norms) < 4:
            raise Skip("the gradients were non-finite almost from the start (see nan-trace)")
        base = median(n for _, n in finite_norms[:3])
        peak_step, peak = max(finite_norms[3:], key=lambda t: t[1])
        growth = peak / base if base > 0 else (math.inf if peak > 0 else 1.0)
        evidence = {"first_norm": base, "peak_norm": peak, "peak_step": peak_step, "growth": growth,
                    "norms": [n for _, n in finite_norms][:200]}
        if peak > self.max_norm:
            yield self.finding(
                f"The global gradient norm reaches {fmt(peak)} at step {peak_step} "
                f"(started at {fmt(base)}).", severity=Severity.ERROR, step=peak_step, **evidence)
        elif growth > self.max_growth:
            yield self.finding(
                f"The global gradient norm grew {fmt(growth)}x, from {fmt(base)} in the first steps "
                f"to {fmt(peak)} at step {peak_step}.", severity=Severity.WARNING, step=peak_step, **evidence)


class VanishingGradient(Check):
    """## What it measures
    The gradient RMS (L2 norm / sqrt(size)) of each weight matrix, median over the
    watched steps, comparing the earliest layers (in forward order) with the last one.

    ## Why it matters
    When the gradient reaching the first layers is a thousand times smaller than at the
    output, those layers effectively stop learning: deep sigmoid/tanh stacks and badly
    initialised deep nets show this.

    ## How to fix
    - Use ReLU-family activations and He init; add residual connections.
    - Add normalisation layers (BatchNorm/LayerNorm).
    - Avoid long chains of saturating non-linearities.

    ## Known false positives
    - Embedding tables with sparse updates (only the rows used get gradient).
    - Frozen early layers (reported by frozen-layer instead: parameters without gradient are excluded).

    ## Example
    A 10-layer MLP with sigmoid activations: each layer scales the gradient by at most
    0.25x its weights, and the first layer's gradient is ~1e-6 of the last layer's.

    ## References
    - The training checklist (exploding/vanishing gradients).
    - Hochreiter, "Untersuchungen zu dynamischen neuronalen Netzen", 1991; Glorot & Bengio, AISTATS 2010.
    - AUTOTRAINER (Zhang et al., ICSE 2021): first/last layer gradient ratio < 1e-3.
    """

    id = "vanishing-gradient"
    title = "Gradients vanish before reaching the early layers"
    family = "gradients"
    severity = Severity.WARNING
    needs = ("steps", "params", "forward_order")
    thresholds = (
        Threshold("min_ratio", 1e-3, "gradient RMS of the first layer / the last layer below which gradients vanish", "ratio"),
    )
    citations = (CHECKLIST, Citation("Glorot & Bengio, AISTATS 2010"), Citation("Zhang et al., AUTOTRAINER, ICSE 2021"))

    def evaluate(self, obs) -> Iterable[Finding]:
        order = {p: i for i, p in enumerate(obs.forward_order)}
        rms: dict[str, list[float]] = {}
        for rec in obs.steps:
            for name, norm in rec.grad_norms.items():
                meta = obs.params.get(name)
                if meta is None or meta.role != "weight" or meta.category == "embedding" or not math.isfinite(norm):
                    continue
                rms.setdefault(name, []).append(norm / math.sqrt(max(meta.numel, 1)))
        layers = [(name, median(v)) for name, v in rms.items() if obs.params[name].module in order]
        layers = [(n, v) for n, v in layers if v > 0]
        if len(layers) < 3:
            raise Skip("needs gradients of at least 3 weight layers whose forward order is known")
        layers.sort(key=lambda t: order[obs.params[t[0]].module])
        first_name, first = layers[0]
        last_name, last = layers[-1]
        ratio = first / last if last > 0 else math.inf
        if ratio < self.min_ratio:
            yield self.finding(
                f"The gradient reaching `{first_name}` (RMS {fmt(first)}) is {fmt(ratio)}x the gradient "
                f"at `{last_name}` (RMS {fmt(last)}): the early layers barely learn.",
                where=obs.params[first_name].module, ratio=ratio,
                rms_by_layer={n: v for n, v in layers},
            )


class GradNotZeroed(Check):
    """## What it measures
    At the first backward after each weight update (an optimizer step, or an in-place
    change of the parameters by hand), whether the parameters' `.grad` still hold the
    previous step's gradients (non-zero) instead of being reset.

    ## Why it matters
    PyTorch accumulates gradients into `.grad`. Without `optimizer.zero_grad()` (or
    `p.grad = None`) every step applies the sum of all past gradients: the effective
    step size keeps growing and the direction is stale. Deliberate gradient
    accumulation is different: gradients build up over several backwards *between*
    updates and are reset after the update — that pattern is not flagged.

    ## How to fix
    - Call `optimizer.zero_grad(set_to_none=True)` once per update, before or after the step.
    - For hand-written updates: `p.grad = None` (or `p.grad.zero_()`) after updating.

    ## Known false positives
    - Algorithms that carry gradients across updates on purpose (rare; e.g. some
      meta-learning code). Ignore the check there.

    ## Example
    A loop with `loss.backward(); opt.step()` and no `zero_grad()`: at step 2 the
    gradient applied is g1 + g2, at step 10 the sum of ten gradients.

    ## References
    - PyTorch docs, "torch.optim.Optimizer.zero_grad".
    - The training checklist (silly mistakes in the training loop).
    """

    id = "grad-not-zeroed"
    title = "Gradients accumulate across updates without being reset"
    family = "gradients"
    severity = Severity.ERROR
    needs = ("steps", "updates_seen")
    thresholds = (
        Threshold("min_stale_fraction", 0.5, "share of checked updates after which stale gradients were found, to call it systematic", "fraction"),
    )
    citations = (Citation("PyTorch documentation, Optimizer.zero_grad"), CHECKLIST)

    def evaluate(self, obs) -> Iterable[Finding]:
        checked = [r for r in obs.steps if r.stale_grad_norm is not None]
        if not checked:
            raise Skip("no backward after a weight update was observed on a sampled step")
        stale = [r for r in checked if r.stale_grad_norm and r.stale_grad_norm > 0 and math.isfinite(r.stale_grad_norm)]
        frac = len(stale) / len(checked)
        if stale and frac >= self.min_stale_fraction:
            first = stale[0]
            yield self.finding(
                f"At {len(stale)} of {count(len(checked), 'checked step')} the gradients of the previous step "
                f"were still in `.grad` when the next backward started (norm {fmt(first.stale_grad_norm)} "
                f"at step {first.step}): zero_grad() is missing, so gradients add up across updates.",
                step=first.step, stale_steps=[r.step for r in stale], checked_steps=len(checked),
                stale_norm=first.stale_grad_norm,
            )
