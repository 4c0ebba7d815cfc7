"""Probes: the same copy trained at LR x0.1 / x1 / x10, and Smith's LR range test with
fastai's estimators of a good LR."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from .._probe_records import LrRangeTest, LrSweepRun, LrTrial
from .context import ProbeContext, call, optimizer_step, train_curve

__all__ = ["measure_sweep", "measure_range", "lr_suggestions"]


def measure_sweep(ctx: ProbeContext, *, n_samples: int = 16, steps: int = 25,
                  x10_unneeded: Callable[[LrSweepRun], str | None] | None = None) -> LrSweepRun:
    """The x1 and x0.1 trials, then x10 unless ``x10_unneeded`` (the check's own reading
    of the first two) gives a reason it cannot change the verdict: x0.1 already trains
    clearly better, or x1 already trains (only a stalled x1 makes x10 evidence). Each
    trial starts from the same copy and seed, so the order changes no curve. The reason
    goes to ``ctx.notes``."""
    n = min(int(n_samples), ctx.batch_size)
    inputs, targets = ctx.take(0, n)
    steps = int(steps)
    record = LrSweepRun(base_lr=ctx.base_lr, optimizer=ctx.optimizer_type, steps=steps, n_samples=n)
    trials: dict[str, LrTrial] = {}
    for label, scale in (("1", 1.0), ("0.1", 0.1), ("10", 10.0)):
        if label == "10" and x10_unneeded is not None:
            record.trials = {k: trials[k] for k in ("0.1", "1")}
            reason = x10_unneeded(record)
            if reason:
                ctx.notes.append(f"the LR sweep's x10 trial was not run: {reason}")
                break
        torch.manual_seed(ctx.seed)
        clone = ctx.copy_model()
        opt = ctx.make_optimizer(clone, lr_scale=scale)
        losses, _ = train_curve(ctx, clone, opt, inputs, targets, steps)
        del clone, opt
        trials[label] = LrTrial(lr=ctx.base_lr * scale, losses=losses)
    record.trials = {k: trials[k] for k in ("0.1", "1", "10") if k in trials}
    return record


def measure_range(
    ctx: ProbeContext,
    *,
    iters: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    batch: int = 8,
    smoothing: float = 0.95,  # EMA weight of the old value (torch-lr-finder's 0.05 on the new)
    stop_factor: float = 4.0,  # stop when the smoothed loss exceeds 4x the best (fastai, Lightning)
) -> LrRangeTest:
    iters = int(iters)
    lo, hi, beta = float(start_lr), float(end_lr), float(smoothing)
    size = max(1, min(int(batch), ctx.batch_size))
    chunks = [ctx.take(i, i + size) for i in range(0, ctx.batch_size - size + 1, size)] or [ctx.take(0, size)]
    torch.manual_seed(ctx.seed)
    clone = ctx.copy_model()
    opt = ctx.make_optimizer(clone, lr=lo)
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best, stopped = 0.0, math.inf, False
    for i in range(iters):
        lr = lo * (hi / lo) ** (i / max(1, iters - 1))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = chunks[i % len(chunks)]
        opt.zero_grad(set_to_none=True)
        loss = ctx.loss(call(clone, x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            stopped = True
            break
        avg = beta * avg + (1 - beta) * value
        smoothed = avg / (1 - beta ** (i + 1))
        lrs.append(lr)
        raw.append(value)
        smooth.append(smoothed)
        best = min(best, smoothed)
        if i > 0 and smoothed > float(stop_factor) * best:
            stopped = True
            break
        loss.backward()
        optimizer_step(ctx, clone, opt, x, y, loss)  # LBFGS: with a closure
    return LrRangeTest(
        lrs=lrs, losses=raw, smoothed=smooth, stopped_early=stopped,
        diverged_at=lrs[-1] if stopped and lrs else None, base_lr=ctx.base_lr, optimizer=ctx.optimizer_type,
        start_lr=lo, end_lr=hi, smoothing=beta, stop_factor=float(stop_factor),
        **lr_suggestions(lrs, smooth),
    )


def lr_suggestions(lrs: list[float], smoothed: list[float]) -> dict[str, Any]:
    """Three estimators on the smoothed range-test curve, skipping the first tenth and the
    last 5 points (fastai's window): steepest descent against log10(LR), fastai's valley
    (the longest descending run, a third plus a sixth into it) and the minimum / 10; with
    their spread in decades and the median as the suggestion."""
    n = len(smoothed)
    start, end = n // 10, n - 5
    if end - start < 6:
        return {"suggestions": {}, "spread_decades": None, "suggested_lr": None}
    lr = np.asarray(lrs[start:end], dtype=np.float64)
    loss = np.asarray(smoothed[start:end], dtype=np.float64)
    slope = np.gradient(loss, np.log10(lr))
    steep = float(lr[int(np.argmin(slope))])
    minimum = float(lr[int(np.argmin(loss))] / 10.0)
    # valley: longest strictly descending subsequence (fastai, O(n^2) on <= 100 points)
    m = len(loss)
    lds = [1] * m
    max_start, max_end = 0, 0
    for i in range(1, m):
        for j in range(i):
            if loss[i] < loss[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    valley = float(lr[max(0, min(m - 1, max_start + int(sections) + int(sections / 2)))])
    suggestions = {"steep": steep, "valley": valley, "minimum/10": minimum}
    values = sorted(suggestions.values())
    return {
        "suggestions": suggestions,
        "spread_decades": float(math.log10(values[-1] / values[0])),
        "suggested_lr": float(values[1]),
    }
