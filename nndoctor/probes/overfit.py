"""Probe: train a copy on a tiny fixed batch with the user's optimizer (then Adam).

Settings come from the ``overfit-tiny-batch`` check's thresholds (``max_steps``, and the
target ``loss_fraction`` / ``min_accuracy`` the run may stop at); whether the batch was
fitted is the check's call (:meth:`OverfitCurve.fitted_at` with the same numbers).
"""

from __future__ import annotations

import torch

from .._probe_records import OverfitCurve, OverfitRun
from .context import ProbeContext, train_curve

__all__ = ["measure"]


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

    def reached(losses: list[float], accs: list[float | None]) -> bool:
        curve = OverfitCurve(losses=losses, accuracies=accs if accs[0] is not None else None)
        return curve.fitted_at(loss_fraction, min_accuracy, steps) is not None

    user = ctx.user_optimizer
    # The retry with Adam(lr=1e-3) tells a broken model from a badly set optimizer; it
    # would repeat the first run when the user's optimizer already is that Adam.
    same_as_retry = user is None or (
        type(user) is torch.optim.Adam
        and all(float(g.get("lr", 0)) == 1e-3 and not g.get("weight_decay") for g in user.param_groups)
    )
    record = OverfitRun(
        n_samples=n, max_steps=steps, task="classification" if ctx.classification else "regression",
        regularisation_off=["dropout"],
    )
    for adam in (False, True):
        if adam and same_as_retry:
            break
        torch.manual_seed(ctx.seed)
        clone = ctx.copy_model(dropout_off=True)
        opt = ctx.make_optimizer(clone, adam=adam)
        losses, accs = train_curve(ctx, clone, opt, inputs, targets, steps, stop=reached)
        record.runs.append(OverfitCurve(
            optimizer=ctx.optimizer_name(opt),
            is_user=not adam and user is not None,
            losses=losses,
            accuracies=accs if accs and accs[0] is not None else None,
        ))
        if reached(losses, accs):
            break
    return record
