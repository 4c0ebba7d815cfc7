"""Probe: the loss of an untouched copy on the batch, and the prior it predicts."""

from __future__ import annotations

import torch
from torch import nn

from .._losskinds import BINARY_KINDS, CLASS_KINDS
from .._probe_records import InitLoss
from .context import ProbeContext, call

__all__ = ["measure"]


def measure(ctx: ProbeContext) -> InitLoss:
    clone = ctx.copy_model()
    order: list[tuple[str, nn.Module]] = []
    handles = []
    for name, m in clone.named_modules():
        bias = getattr(m, "bias", None)
        if isinstance(bias, torch.Tensor) and not list(m.children()):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: order.append((name, mod))))
    try:
        with torch.no_grad():
            out = call(clone, ctx.inputs)
            loss = float(ctx.loss(out, ctx.targets))
    finally:
        for h in handles:
            h.remove()
    record = InitLoss(loss=loss, loss_kind=ctx.loss_kind, mode="train" if ctx.model.training else "eval")
    logits = out if isinstance(out, torch.Tensor) else None
    targets = ctx.targets if isinstance(ctx.targets, torch.Tensor) else None
    k = None
    if logits is not None and logits.is_floating_point():
        with torch.no_grad():
            if ctx.loss_kind in CLASS_KINDS and logits.dim() >= 2:
                k = int(logits.shape[1])
                moved = logits.movedim(1, -1).reshape(-1, k).double()
                probs = moved.softmax(-1) if ctx.loss_kind == "cross_entropy" else moved.exp()
                record.predicted_prior = [float(v) for v in probs.mean(0)]
                if targets is not None and not targets.is_floating_point():
                    flat = targets.reshape(-1)
                    ign = ctx.ignore_index if ctx.ignore_index is not None else -100
                    flat = flat[(flat != ign) & (flat >= 0) & (flat < k)]
                    if flat.numel():
                        counts = torch.bincount(flat, minlength=k).double()
                        record.label_prior = [float(v) for v in counts / counts.sum()]
            elif ctx.loss_kind in BINARY_KINDS:
                k = int(logits.shape[-1]) if logits.dim() >= 2 else 1
                probs = logits.double().sigmoid() if ctx.loss_kind == "bce_logits" else logits.double()
                record.predicted_prior = [float(v) for v in probs.reshape(-1, k).mean(0)]
                if targets is not None and targets.shape == logits.shape:
                    record.label_prior = [float(v) for v in targets.double().reshape(-1, k).mean(0)]
    record.n_classes = k
    if k is not None:
        for name, mod in reversed(order):
            bias = getattr(mod, "bias", None)
            if isinstance(bias, torch.Tensor) and bias.numel() == k:
                record.final_bias = [float(v) for v in bias.detach().reshape(-1)]
                record.final_layer = name
                break
    return record
