"""Probe: confirm a root cause by intervention. Apply the fix its finding proposes to a
copy (standardise the inputs, drop the final softmax, unfreeze, re-initialise, scale the
learning rate) and re-run the probe that shows the symptom, overfitting the tiny batch of
``overfit-tiny-batch`` (same samples, seed and step budget), without and with the fix.

This module measures only: it returns an :class:`InterventionTrial` with both curves.
Whether the fix removed the symptom is decided by the pure function
:func:`nndoctor._diagnosis.judge_intervention`.

=======================  ======================  ==========================================
cause (check id)         when                    intervention on the copy
=======================  ======================  ==========================================
``input-normalization``  inputs not normalised   inputs standardised (per feature/channel)
``loss-input-format``    softmax/sigmoid output  that final module dropped, else the loss fed
                         fed to a logits loss    log(p) (softmax) or logit(p) (sigmoid)
``loss-input-format``    raw outputs to NLLLoss  log_softmax applied before the loss
``frozen-layer``         cannot train            every parameter unfrozen and optimised
``weight-init``          large / small / equal   every layer re-initialised (PyTorch default)
``lr-sweep``,            LR too high / too low   LR x0.1 / x10
``update-ratio``
=======================  ======================  ==========================================

Causes without a fix that can be applied to a copy (a graph cut, labels not paired with
their inputs, a non-finite loss...), or whose symptom the tiny batch does not show
(gradients never zeroed: summed stale gradients act like momentum on a fixed batch and fit
it faster), get no intervention (:func:`plan` returns None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .._probe_records import InterventionTrial, OverfitCurve
from .._tree import map_tensors
from .context import ProbeContext, call, needs_closure
from .isolation import ProbeSkip
from .overfit import loss_floor

__all__ = ["Fix", "plan", "measure", "standardise"]

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class Fix:
    """What to change on the copy; every part optional."""

    intervention: str
    inputs: Callable[[Any], Any] | None = None
    model: Callable[[nn.Module], None] | None = None  # edits the copy in place
    loss: Callable[[ProbeContext, Any, Any], torch.Tensor] | None = None
    optimizer: Callable[[ProbeContext, nn.Module], torch.optim.Optimizer] | None = None
    before_zero_grad: bool = True  # False: the "before" run replays a loop without zero_grad
    lr_scales: tuple[float, ...] = ()  # a learning-rate fix: the scales to try in turn


# ------------------------------------------------------------------------------ the fixes
def standardise(inputs: Any) -> Any:
    """Float tensors standardised per feature (2-D) or per channel (dim 1 of N-D), with
    the batch's own mean and std; other tensors unchanged."""

    def one(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point() or t.numel() < 2:
            return t
        dims = [d for d in range(t.dim()) if d != 1] if t.dim() >= 2 else [0]
        mean = t.mean(dim=dims, keepdim=True)
        std = t.std(dim=dims, keepdim=True).clamp_min(1e-8)
        return (t - mean) / std

    return map_tensors(inputs, one)


_SQUASH = {"softmax": (nn.Softmax, nn.LogSoftmax), "sigmoid": (nn.Sigmoid,), "relu": (nn.ReLU,)}


def _final_module(model: nn.Module, inputs: Any, kinds: tuple[type, ...]) -> str | None:
    """The name of the leaf module of one of ``kinds`` whose output *is* the model's output
    (the final squashing layer), or None (the squashing happens in functional code)."""
    outputs: dict[str, Any] = {}
    handles = []
    for name, m in model.named_modules():
        if name and isinstance(m, kinds):
            handles.append(m.register_forward_hook(
                lambda _m, _a, out, name=name: outputs.__setitem__(name, out)))
    try:
        with torch.no_grad():
            out = call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return next((name for name, o in outputs.items() if o is out), None)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _loss_on(transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[ProbeContext, Any, Any], torch.Tensor]:
    def loss(ctx: ProbeContext, out: Any, targets: Any) -> torch.Tensor:
        return ctx.loss(transform(out) if isinstance(out, torch.Tensor) else out, targets)

    return loss


def _all_parameters_optimizer(ctx: ProbeContext, clone: nn.Module) -> torch.optim.Optimizer:
    """The user's optimizer type and first group's hyper-parameters over *every* parameter
    of the copy (Adam(lr=1e-3) when there is none, or its learning rate is 0)."""
    params = list(clone.parameters())
    user = ctx.user_optimizer
    if user is None or not user.param_groups:
        return torch.optim.Adam(params, lr=1e-3)
    hp = {k: v for k, v in user.param_groups[0].items() if k not in ("params", "initial_lr")}
    if not float(hp.get("lr", 1e-3) or 0.0):
        return torch.optim.Adam(params, lr=1e-3)
    try:
        return type(user)(params, **hp)
    except TypeError:
        return torch.optim.Adam(params, lr=1e-3)


def _unfreeze(clone: nn.Module) -> None:
    for p in clone.parameters():
        p.requires_grad_(True)


def _reinit(clone: nn.Module) -> None:
    for m in clone.modules():
        reset = getattr(m, "reset_parameters", None)
        if m is not clone and callable(reset) and any(True for _ in m.parameters(recurse=False)):
            reset()


def _lr(scale: float) -> Callable[[ProbeContext, nn.Module], torch.optim.Optimizer]:
    return lambda ctx, clone: ctx.make_optimizer(clone, lr_scale=scale)


def _direction(check: str, ev: dict[str, Any]) -> str | None:
    if check == "lr-sweep":
        better = ev.get("better")
        if better == "x0.1" or (better == "range-test" and "diverged_at" in ev):
            return "high"
        if better == "x10" or (better == "range-test" and "decades_below" in ev):
            return "low"
        return None
    d = ev.get("direction")
    if d in ("high", "low"):
        return d
    try:
        return "high" if float(ev.get("median_ratio")) > 1e-3 else "low"
    except (TypeError, ValueError):
        return None


def plan(ctx: ProbeContext, check: str, evidence: dict[str, Any] | None, inputs: Any = None) -> Fix | None:
    """The fix that a finding of ``check`` with ``evidence`` proposes, as an edit of a
    copy; None when there is none to apply (``inputs``: the samples, to locate a final
    squashing module)."""
    ev = dict(evidence or {})
    if check == "input-normalization":
        if "min" in ev and "zero_fraction" not in ev:  # unscaled (not zero/constant) inputs
            return Fix("inputs standardised", inputs=standardise)
        return None
    if check == "loss-input-format":
        fed_by, kind = ev.get("fed_by"), ev.get("loss_kind")
        if kind == "nll" and fed_by == "logits":
            return Fix("log_softmax applied before NLLLoss",
                       loss=_loss_on(lambda out: torch.log_softmax(out, dim=1)))
        if fed_by in _SQUASH:
            name = _final_module(ctx.copy_model(), inputs, _SQUASH[fed_by]) if inputs is not None else None
            if name is not None:
                return Fix(f"the final {fed_by} (`{name}`) removed",
                           model=lambda clone, name=name: _replace(clone, name, nn.Identity()))
            if fed_by == "softmax":
                return Fix("the loss fed log(outputs), undoing the final softmax",
                           loss=_loss_on(lambda p: torch.log(p.clamp_min(1e-30))))
            if fed_by == "sigmoid":
                return Fix("the loss fed logit(outputs), undoing the final sigmoid",
                           loss=_loss_on(lambda p: torch.logit(p, eps=1e-7)))
        return None
    if check == "frozen-layer":
        if ev.get("kind") in ("no_gradient", "zero_gradient"):
            return None  # a graph cut or a dead path: no switch on a copy undoes it
        return Fix("every parameter unfrozen and optimised", model=_unfreeze, optimizer=_all_parameters_optimizer)
    if check == "weight-init":
        return Fix("weights re-initialised with PyTorch's default scheme", model=_reinit)
    if check in ("lr-sweep", "update-ratio"):
        if ev.get("mechanism") in ("clipped", "weight_decay"):
            return None  # not the LR's doing (clipping is not replayed on the copy; decay is its own knob)
        direction = _direction(check, ev)
        if direction == "high":
            return Fix("learning rate x0.1", optimizer=_lr(0.1), lr_scales=(0.1, 0.01, 0.001))
        if direction == "low":
            return Fix("learning rate x10", optimizer=_lr(10.0), lr_scales=(10.0, 100.0, 1000.0))
        return None
    # grad-not-zeroed: no intervention. On a fixed tiny batch, summed stale gradients act
    # like momentum and fit it *faster* (measured: 18 steps against 65 with zeroing), so
    # this probe cannot show the symptom.
    return None


# ------------------------------------------------------------------------------ the probe
def _fit(
    ctx: ProbeContext, clone: nn.Module, opt: torch.optim.Optimizer, inputs: Any, targets: Any, steps: int, *,
    loss: Callable[[ProbeContext, Any, Any], torch.Tensor] | None, zero_grad: bool,
    reached: Callable[[list[float], list[float | None]], bool],
) -> tuple[list[float], list[float | None]]:
    """``context.train_curve`` with a replaceable loss and an optional missing zero_grad."""
    losses: list[float] = []
    accs: list[float | None] = []
    opt.zero_grad(set_to_none=True)
    for step in range(steps + 1):
        if zero_grad:
            opt.zero_grad(set_to_none=True)
        out = call(clone, inputs)
        value_t = loss(ctx, out, targets) if loss is not None else ctx.loss(out, targets)
        value = float(value_t.detach())
        losses.append(value)
        accs.append(ctx.accuracy(out, targets))
        if not math.isfinite(value) or step == steps or reached(losses, accs):
            break
        value_t.backward()
        ctx.check_deadline()
        ctx.train_steps += 1
        if needs_closure(opt):  # LBFGS: one step re-evaluates the same (replaced) loss
            ready = [value_t]  # its first evaluation is the one just back-propagated

            def closure() -> torch.Tensor:
                if ready[0] is not None:
                    value, ready[0] = ready[0], None
                    return value
                ctx.train_steps += 1
                if zero_grad:
                    opt.zero_grad(set_to_none=True)
                out = call(clone, inputs)
                value = loss(ctx, out, targets) if loss is not None else ctx.loss(out, targets)
                value.backward()
                return value

            opt.step(closure)
        else:
            opt.step()
    return losses, accs


def measure(
    ctx: ProbeContext,
    check: str,
    evidence: dict[str, Any] | None,
    *,
    n_samples: int = 8,
    max_steps: int = 100,
    loss_fraction: float = 0.1,
    min_accuracy: float = 1.0,
) -> InterventionTrial:
    """Overfit the tiny batch without and with the fix for ``check``, each for the full
    ``max_steps`` (the judge compares both curves against one common target, so neither
    may stop early). A learning-rate fix tries x0.1, x0.01, x0.001 (x10, x100, x1000) and
    keeps the first that ends finite and below the unfixed run. Other fixes are also
    measured with Adam(lr=1e-3) (``retry_before`` / ``retry_after``)."""
    n = min(int(n_samples), ctx.batch_size)
    inputs, targets = ctx.take(0, n)
    fix = plan(ctx, check, evidence, inputs)
    if fix is None:
        raise ProbeSkip(f"no intervention applies to `{check}`")
    steps = int(max_steps)
    floor, _ = loss_floor(ctx, inputs, targets)

    def run(fixed: bool, optimizer: Any = None, adam: bool = False) -> OverfitCurve:
        done = ctx.full_overfit_runs.get((n, steps))
        if not fixed and optimizer is None and not adam and fix.before_zero_grad and done is not None:
            # The overfit probe trained this very run (same copy, seed, samples, optimizer
            # and steps, every step zeroing the gradients): its curve, not a second run.
            return OverfitCurve(optimizer=done[1], is_user=ctx.user_optimizer is not None,
                                losses=list(done[0]), accuracies=None)
        torch.manual_seed(ctx.seed)
        clone = ctx.copy_model(dropout_off=True)
        if fixed and fix.model is not None:
            fix.model(clone)
        make = optimizer or (fix.optimizer if fixed else None)
        if make is not None:
            opt = make(ctx, clone)
        elif adam:
            opt = torch.optim.Adam([p for p in clone.parameters() if p.requires_grad], lr=1e-3)
        else:
            opt = ctx.make_optimizer(clone)
        x = fix.inputs(inputs) if fixed and fix.inputs is not None else inputs
        losses, accs = _fit(ctx, clone, opt, x, targets, steps, loss=fix.loss if fixed else None,
                            zero_grad=fixed or fix.before_zero_grad, reached=lambda *_: False)
        return OverfitCurve(optimizer=ctx.optimizer_name(opt), is_user=ctx.user_optimizer is not None,
                            losses=losses, accuracies=None)

    before = run(False)
    after = run(True)
    intervention = fix.intervention
    if fix.lr_scales:
        for scale in fix.lr_scales[1:]:
            end_b, end_a = before.losses[-1], after.losses[-1]
            if math.isfinite(end_a) and (not math.isfinite(end_b) or end_a <= end_b):
                break
            after = run(True, _lr(scale))
            intervention = f"learning rate x{scale:g}"
    trial = InterventionTrial(
        cause=check, intervention=intervention, probe="overfit-tiny-batch", n_samples=n, max_steps=steps,
        loss_fraction=float(loss_fraction), min_accuracy=float(min_accuracy), loss_floor=floor,
        before=before, after=after,
    )
    user = ctx.user_optimizer
    same_as_adam = user is None or (
        type(user) is torch.optim.Adam
        and all(float(g.get("lr", 0)) == 1e-3 and not g.get("weight_decay") for g in user.param_groups))
    if not fix.lr_scales and fix.optimizer is None and not same_as_adam:
        trial.retry_before = run(False, adam=True)
        trial.retry_after = run(True, adam=True)
    return trial
