"""Probe: real inputs against noise and all-zero inputs (Karpathy's input-independent
baseline; held-out samples when the batch is big enough, after Zhang et al. 2017)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .._probe_records import RandomInputRun
from .._tree import map_tensors, tensors
from ._rng import SameDraws
from .context import ModelCall, ProbeContext, call, float_outputs, train_curve

__all__ = ["measure"]


def _noise_like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if t.is_floating_point():
        std, mean = torch.std_mean(t.double()) if t.numel() > 1 else (torch.tensor(1.0), t.double().mean())
        if not math.isfinite(float(std)) or float(std) == 0:
            std = torch.tensor(1.0, dtype=torch.float64)
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64) * std + mean
        return noise.to(dtype=t.dtype, device=t.device)
    if t.dtype == torch.bool:
        return torch.randint(0, 2, t.shape, generator=gen).bool().to(t.device)
    lo, hi = int(t.min()), int(t.max())
    return torch.randint(lo, hi + 1, t.shape, generator=gen, dtype=torch.int64).to(dtype=t.dtype, device=t.device)


# Keyword arguments that carry the targets into a model that computes its own loss
# (``model(x, targets=y)``, HuggingFace ``labels=``): never replaced by noise.
TARGET_KEYWORDS = frozenset({"targets", "target", "labels", "label", "y", "y_true"})


def _inputs_only(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor], loss_inside: bool) -> Any:
    """``inputs`` with ``fn`` applied to the model's inputs but not to targets passed into
    the model: keyword arguments named like targets, and, when the model computes its own
    loss (the loss takes no targets of its own), every positional argument after the first
    (``model(X, Y)`` returning ``(logits, loss)``: only X is the input)."""
    if isinstance(inputs, ModelCall):
        args = tuple(map_tensors(a, fn) if i == 0 or not loss_inside else a for i, a in enumerate(inputs.args))
        kwargs = {k: v if k in TARGET_KEYWORDS or (loss_inside and inputs.args) else map_tensors(v, fn)
                  for k, v in inputs.kwargs.items()}
        return ModelCall(args, kwargs)
    if isinstance(inputs, dict):
        return {k: v if k in TARGET_KEYWORDS else map_tensors(v, fn) for k, v in inputs.items()}
    return map_tensors(inputs, fn)


def _relative_change(a: Any, b: Any) -> float:
    ta, tb = float_outputs(a), float_outputs(b)
    if not ta or len(ta) != len(tb):
        return math.inf
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return math.inf
        scale = float(x.detach().abs().max()) if x.numel() else 0.0
        diff = float((x.detach() - y.detach()).abs().max()) if x.numel() else 0.0
        if not math.isfinite(diff):
            return math.inf
        worst = max(worst, diff / (scale + 1e-30) if scale > 0 else (math.inf if diff > 0 else 0.0))
    return worst


def _first_dim(*objs: Any) -> int:
    for obj in objs:
        for t in tensors(obj):
            if t.dim() > 0:
                return int(t.shape[0])
    return 0


def measure(ctx: ProbeContext, *, n_samples: int = 16, steps: int = 30, eval_every: int = 3) -> RandomInputRun:
    n_train = min(int(n_samples), ctx.batch_size)
    holdout = ctx.batch_size >= 16
    if holdout:
        n_train = min(n_train, ctx.batch_size // 2)
    x_train, y_train = ctx.take(0, n_train)
    x_hold, y_hold = ctx.take(n_train, 2 * n_train) if holdout else (None, None)
    n_hold = _first_dim(y_hold, x_hold) if holdout else 0
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    inside = ctx.targets is None or not tensors(ctx.targets)  # the model computes its own loss
    # Every variant sees the same torch, Python and numpy draws (a forward that picks its
    # depth with random.randint must run the same graphs for real, noise and zero inputs).
    draws = SameDraws(ctx.seed)
    variants: dict[str, tuple[Any, Any]] = {
        "real": (x_train, x_hold),
        "noise": (
            _inputs_only(x_train, lambda t: _noise_like(t, gen), inside),
            _inputs_only(x_hold, lambda t: _noise_like(t, gen), inside) if holdout else None,
        ),
        "zeros": (
            _inputs_only(x_train, torch.zeros_like, inside),
            _inputs_only(x_hold, torch.zeros_like, inside) if holdout else None,
        ),
    }
    # 1. do the outputs depend on the input at all? (eval mode: no batch statistics)
    probe = ctx.copy_model()
    probe.eval()
    with torch.no_grad():
        draws()
        ref = call(probe, x_train)
        change = {}
        for name in ("noise", "zeros"):
            draws()
            change[name] = _relative_change(ref, call(probe, variants[name][0]))
    del probe
    # 2./3. train on each variant, same seed and optimizer, evaluate held-out samples
    steps = int(steps)
    every_n = max(1, int(eval_every))
    train_loss: dict[str, list[float]] = {}
    hold_loss: dict[str, list[float]] = {}
    for name, (xt, xh) in variants.items():
        draws()
        clone = ctx.copy_model(dropout_off=True)
        opt = ctx.make_optimizer(clone, adam=True)
        curve: list[float] = []

        def evaluate(step: int, clone: nn.Module = clone, xh: Any = xh, curve: list[float] = curve) -> None:
            if not holdout or (step % every_n and step != steps):
                return
            with torch.no_grad():  # train-mode forward: BatchNorm uses this batch's statistics
                curve.append(float(ctx.loss(call(clone, xh), y_hold)))

        losses, _ = train_curve(ctx, clone, opt, xt, y_train, steps, every=evaluate)
        train_loss[name] = losses
        if holdout:
            hold_loss[name] = curve
    entropy = None
    if ctx.classification and isinstance(y_train, torch.Tensor) and not y_train.is_floating_point():
        counts = torch.bincount(y_train.reshape(-1).clamp_min(0)).double()
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * p.log()).sum())
    return RandomInputRun(
        output_change=change, steps=steps, n_train=n_train, n_holdout=n_hold, optimizer="Adam(lr=0.001)",
        train_loss=train_loss, holdout_loss=hold_loss if holdout else None, label_entropy=entropy,
    )
