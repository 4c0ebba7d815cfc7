"""Linear evaluation of a pretrained trunk ("freeze up to convN, train a linear classifier").

The protocol of the pretext-task papers (Zhang et al. 2016; Noroozi & Favaro 2016; Gidaris et al.
2018; Caron et al. 2018): freeze the trunk up to a chosen stage, reduce that stage's activation to
about 9,000 dimensions by pooling, and train only a linear (logistic-regression) classifier on
labelled data. Reported setting: batch 192, SGD momentum 0.9, weight decay 5e-4, LR 0.01, 30
epochs, LR ×0.1 at epochs 10 and 20. RotNet's head: AdaptiveMaxPool → BatchNorm (affine=False)
→ Linear, as here.

"Frozen" means ``requires_grad=False`` *and* eval mode: BatchNorm running statistics update in
train mode even without gradients, so :meth:`LinearProbe.train` keeps the trunk in eval mode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LinearProbe", "linear_eval_optimizer", "LR_MILESTONES"]

LR_MILESTONES = (10, 20)  # epochs at which the LR is multiplied by 0.1 (30 epochs in all)


class LinearProbe(nn.Module):
    """Frozen ``trunk`` up to ``layer`` + pooled linear classifier. Input images, output logits ``(B, classes)``.

    ``trunk`` must accept ``trunk(x, upto=layer)`` and have ``stage_channels`` (every trunk in
    :mod:`nndoctor.zoo.backbones` does).
    """

    def __init__(self, trunk: nn.Module, layer: str, num_classes: int, target_dims: int = 9000) -> None:
        super().__init__()
        if layer not in getattr(trunk, "stage_channels", {}):
            raise ValueError(f"unknown layer {layer!r}; the trunk has {list(getattr(trunk, 'stage_channels', {}))}")
        self.trunk = trunk
        self.layer = layer
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        channels = trunk.stage_channels[layer]
        side = max(1, int(round(math.sqrt(target_dims / channels))))
        self.pool = nn.AdaptiveMaxPool2d(side)
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.classifier = nn.Linear(channels * side * side, num_classes)
        self.trunk.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen: BN statistics and dropout stay as pretrained
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.trunk(images, upto=self.layer)
        return self.classifier(self.norm(self.pool(features)).flatten(1))


def linear_eval_optimizer(probe: LinearProbe, lr: float = 0.01, weight_decay: float = 5e-4):
    """SGD (momentum 0.9) on the classifier only, with the ×0.1 step schedule at epochs 10 and 20."""
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(LR_MILESTONES), gamma=0.1)
    return opt, sched
