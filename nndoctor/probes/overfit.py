"""Probe: train a copy on a tiny fixed batch with the user's optimizer (then Adam).

Settings come from the ``overfit-tiny-batch`` check's thresholds (``max_steps``, and the
target ``loss_fraction`` / ``min_accuracy`` the run may stop at); whether the batch was
fitted is the check's call (:meth:`OverfitCurve.fitted_at` with the same numbers).

The loss's floor on this batch (:func:`loss_floor`) is measured here and recorded: BCE
with soft targets cannot go below the targets' entropy, cross-entropy with label
smoothing below the smoothed target's entropy, so "fitted" is judged on the loss above
that floor (a conv autoencoder with ``Sigmoid`` + ``BCELoss`` on gray levels in [0, 1] is
not "unable to fit" because its loss stays at the pixels' entropy).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._probe_records import OverfitCurve, OverfitRun
from .context import ProbeContext, call, train_curve

__all__ = ["measure", "loss_floor", "warmup_lr", "label_entropy"]


def _binary_floor(targets: torch.Tensor, pos_weight: Any, weight: Any) -> torch.Tensor:
    """Per-element minimum of -(w t log p + (1 - t) log(1 - p)) over p in [0, 1]: at
    p = w t / (w t + 1 - t) (p = t without ``pos_weight``)."""
    t = targets.detach().double().clamp(0.0, 1.0)
    w = pos_weight.detach().double() if isinstance(pos_weight, torch.Tensor) else torch.ones((), dtype=torch.float64)
    w = w.to(t.device)
    p = (w * t / (w * t + (1 - t)).clamp_min(1e-300)).clamp(0.0, 1.0)
    per = -(w * torch.xlogy(t, p) + torch.xlogy(1 - t, 1 - p))
    if isinstance(weight, torch.Tensor):
        per = per * weight.detach().double().to(t.device)
    return per


def _entropy(q: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.xlogy(q, q).sum(dim)


def loss_floor(ctx: ProbeContext, inputs: Any, targets: Any) -> tuple[float, str | None]:
    """The lowest value ``ctx.loss`` can take on ``targets`` (whatever the model outputs),
    and a few words on why; (0.0, None) when the floor is 0 or unknown (a custom loss)."""
    fn, kind = ctx.loss_fn, ctx.loss_kind
    reduction = getattr(fn, "reduction", "mean")
    if reduction not in ("mean", "sum") or not isinstance(targets, torch.Tensor):
        return 0.0, None
    reduce = (lambda v: float(v.mean())) if reduction == "mean" else (lambda v: float(v.sum()))
    if kind in ("bce", "bce_logits") and targets.is_floating_point():
        soft = bool(((targets > 1e-6) & (targets < 1 - 1e-6)).any())
        if not soft:
            return 0.0, None
        per = _binary_floor(targets, getattr(fn, "pos_weight", None), getattr(fn, "weight", None))
        return reduce(per), "the entropy of the soft targets (BCE cannot go below it)"
    if kind == "cross_entropy":
        smoothing = float(getattr(fn, "label_smoothing", 0.0) or 0.0)
        if targets.is_floating_point() and targets.dim() >= 2:  # class probabilities
            k = targets.shape[1]
            q = targets.detach().double() * (1 - smoothing) + smoothing / k
            if getattr(fn, "weight", None) is not None:
                return 0.0, None
            per = _entropy(q, 1)
            return reduce(per), "the entropy of the target distributions (cross-entropy cannot go below it)"
        if smoothing <= 0 or targets.is_floating_point():
            return 0.0, None
        probe = ctx.copy_model()
        with torch.no_grad():
            out = call(probe, inputs)
        del probe
        if not isinstance(out, torch.Tensor) or out.dim() < 2:
            return 0.0, None
        k = int(out.shape[1])
        hit, miss = 1 - smoothing + smoothing / k, smoothing / k
        per_sample = -(hit * math.log(hit) + (k - 1) * (miss * math.log(miss) if miss > 0 else 0.0))
        ignore = getattr(fn, "ignore_index", -100)
        count = int((targets != ignore).sum())
        value = per_sample if reduction == "mean" else per_sample * count
        return float(value), f"label smoothing {smoothing:g} over {k} classes (the smoothed target's entropy)"
    return 0.0, None


def label_entropy(ctx: ProbeContext, targets: Any) -> float | None:
    """Entropy (nats) of the class frequencies of integer ``targets`` for a cross-entropy
    or NLL loss, targets equal to the loss's ``ignore_index`` left out; None otherwise."""
    if ctx.loss_kind not in ("cross_entropy", "nll") or not isinstance(targets, torch.Tensor) \
            or targets.is_floating_point() or targets.is_complex():
        return None
    flat = targets.detach().reshape(-1)
    ignore = getattr(ctx, "ignore_index", None)
    flat = flat[(flat != (-100 if ignore is None else ignore)) & (flat >= 0)]
    if flat.numel() == 0:
        return None
    counts = torch.bincount(flat.cpu()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def warmup_lr(ctx: ProbeContext) -> tuple[float, str | None, bool]:
    """(LR scale for the copy's optimizer, a note on it, warm-up seen).

    A scheduler keeps each group's base LR in ``initial_lr``; when the current LR is well
    below it (a warm-up that has not finished), the copy trains at the base LR: a tiny
    batch judged at the first steps of a warm-up would be judged at an LR the script
    itself uses only briefly. The evidence of a warm-up is the LRs the watch saw
    (``ctx.lr_history``, when the caller gives them) rising step after step; a scheduler
    that decays the LR also leaves it below ``initial_lr``, so without that evidence the
    copy keeps the current LR. A script that sets the LR by hand (nanoGPT) has no
    ``initial_lr``: the note then says the copy trained at an early, small rate."""
    user = ctx.user_optimizer
    if user is None or not user.param_groups:
        return 1.0, None, False
    group = user.param_groups[0]
    lr, base = group.get("lr"), group.get("initial_lr")
    history = [float(v) for v in (getattr(ctx, "lr_history", None) or []) if isinstance(v, (int, float))]
    rising = (
        len(history) >= 3 and history[0] >= 0 and history[-1] > 1.5 * history[0]
        and all(b >= a * (1 - 1e-9) for a, b in zip(history, history[1:]))
    )
    below_base = isinstance(lr, (int, float)) and isinstance(base, (int, float)) and 0 < 2 * lr < base
    if rising and below_base:
        return float(base) / float(lr), (
            f"trained at the scheduler's base learning rate {base:.3g}, not the {lr:.3g} of the "
            f"warm-up step the script was at (its LR rose {history[0]:.3g} -> {history[-1]:.3g} "
            f"over the watched steps)"), True
    if rising:
        return 1.0, (
            f"the script's learning rate was rising over the watched steps, {history[0]:.3g} -> "
            f"{history[-1]:.3g}: a warm-up, so the copy trained at an early, small rate"), True
    if below_base:
        # A scheduler has the LR below its base: a warm-up or a decay; without the watched
        # LRs it is not known which, so the copy keeps the current LR and the note says so.
        return 1.0, f"a scheduler has the learning rate at {lr:.3g}, below its base {base:.3g}", False
    return 1.0, None, False


def measure(
    ctx: ProbeContext,
    *,
    n_samples: int = 8,
    max_steps: int = 100,
    loss_fraction: float = 0.1,
    min_accuracy: float = 1.0,
) -> OverfitRun:
    n = min(int(n_samples), ctx.batch_size)
    inputs, targets = ctx.take(0, n)
    steps = int(max_steps)
    floor, why = loss_floor(ctx, inputs, targets)
    # Soft binary targets (gray levels, mixup): thresholded "accuracy" says nothing about
    # fitting them; only the loss above its floor does.
    use_accuracy = why is None or ctx.loss_kind not in ("bce", "bce_logits")

    def reached(losses: list[float], accs: list[float | None]) -> bool:
        keep = accs if use_accuracy and accs and accs[0] is not None else None
        curve = OverfitCurve(losses=losses, accuracies=keep)
        return curve.fitted_at(loss_fraction, min_accuracy, steps, floor) is not None

    user = ctx.user_optimizer
    # The retry with Adam(lr=1e-3) tells a broken model from a badly set optimizer; it
    # would repeat the first run when the user's optimizer already is that Adam.
    same_as_retry = user is None or (
        type(user) is torch.optim.Adam
        and all(float(g.get("lr", 0)) == 1e-3 and not g.get("weight_decay") for g in user.param_groups)
    )
    record = OverfitRun(
        n_samples=n, max_steps=steps, task="classification" if ctx.classification and use_accuracy else "regression",
        regularisation_off=["dropout"], loss_floor=floor, loss_floor_reason=why,
    )
    record.label_entropy = label_entropy(ctx, targets)
    lr_scale, record.lr_note, record.warmup = warmup_lr(ctx)
    if user is not None and user.param_groups:
        built = (getattr(user, "defaults", None) or {}).get("lr")
        now = user.param_groups[0].get("lr")
        if isinstance(built, (int, float)) and isinstance(now, (int, float)) and 0 <= 2 * now * lr_scale < built:
            record.lr_lowered = True
            if record.lr_note is None:
                record.lr_note = (f"the script has the learning rate at {now:.3g}, below the {built:.3g} it "
                                  f"built the optimizer with: a warm-up or a decay")
    for adam in (False, True):
        if adam and same_as_retry:
            break
        torch.manual_seed(ctx.seed)
        clone = ctx.copy_model(dropout_off=True)
        opt = ctx.make_optimizer(clone, adam=adam, lr_scale=1.0 if adam else lr_scale)
        losses, accs = train_curve(ctx, clone, opt, inputs, targets, steps, stop=reached)
        if not adam and lr_scale == 1.0 and len(losses) == steps + 1:
            # The full run with your optimizer: the "before" of an intervention is this same
            # run (same copy, seed, samples and steps), so it is kept rather than trained again.
            ctx.full_overfit_runs[(n, steps)] = (list(losses), ctx.optimizer_name(opt))
        record.runs.append(OverfitCurve(
            optimizer=ctx.optimizer_name(opt),
            is_user=not adam and user is not None,
            losses=losses,
            accuracies=accs if use_accuracy and accs and accs[0] is not None else None,
        ))
        if reached(losses, accs):
            break
    return record
