"""Counting visual primitives.

Noroozi, Pirsiavash & Favaro, "Representation Learning by Learning to Count", ICCV 2017. A
feature vector φ "counts" visual primitives, so the counts of the four tiles of an image must add
up to the counts of the whole image down-sampled to tile size:
``ℓ = ‖φ(D∘x) − Σ_j φ(T_j∘x)‖² + max(0, M − ‖φ(D∘y) − Σ_j φ(T_j∘x)‖²)``. The second,
contrastive term (y another image, margin M = 10) rules out the trivial solution φ ≡ 0. The down-
sampling filter is switched at random so the network cannot tell which input was down-sampled.

Full size: AlexNet with BN on 114 px inputs (conv1 stride 2), fc6/fc7 4096, fc8 1000 counts with a
ReLU so counts are ≥ 0: 62,381,096 parameters.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import AlexNetTrunk, MLPHead, build_trunk

__all__ = ["CountingNet", "counting_views", "make_batch", "CountingLoss", "CONFIGS"]

VIEWS = 6  # per image: [down-sampled x, 4 tiles of x, down-sampled other image y]
DOWNSAMPLE_MODES = ("bilinear", "bicubic", "area", "nearest-exact")

CONFIGS = {
    # no dropout at tiny size: with 64 counts and 128-wide FCs, dropout noise in the counts keeps the
    # equivariance term from ever beating the contrastive margin (the φ ≈ 0 collapse, pitfall CT1)
    "tiny": {"backbone": "alexnet", "tile_size": 32, "num_counts": 64, "fc": 128, "dropout": 0.0},
    "full": {"backbone": "alexnet", "tile_size": 114, "num_counts": 1000, "fc": 4096, "dropout": 0.5},
}


class CountingNet(nn.Module):
    """Input ``(B, 6, C, s, s)`` views from :func:`counting_views`, output counts ``(B, 6, K)`` ≥ 0."""

    def __init__(
        self,
        backbone: str = "alexnet",
        size: str = "full",
        tile_size: int = 114,
        num_counts: int = 1000,
        fc: int = 4096,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.tile_size = tile_size
        if backbone == "alexnet" and size == "full":
            self.trunk = AlexNetTrunk(in_channels, conv1_stride=2)
            pool = 6
        else:
            self.trunk = build_trunk(backbone, size, in_channels)
            pool = 3 if backbone == "alexnet" else 1
        self.head = nn.Sequential(MLPHead(self.trunk.out_channels, pool, (fc, fc), num_counts, dropout=dropout), nn.ReLU())

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.dim() != 5 or views.shape[1] != VIEWS:
            raise ValueError(f"CountingNet expects views (B, 6, C, s, s), got {tuple(views.shape)}")
        b = views.shape[0]
        return self.head(self.trunk(views.flatten(0, 1))).reshape(b, VIEWS, -1)


def counting_views(images: torch.Tensor, *, mode: str | None = None) -> torch.Tensor:
    """``images`` ``(B, C, 2s, 2s)``, B ≥ 2 → views ``(B, 6, C, s, s)``.

    View 0 is the image down-sampled ×2 (filter ``mode``, random if None), views 1–4 its 2×2
    tiles in reading order, view 5 the down-sampled image of the next sample in the batch (the
    contrastive "other image").
    """
    b, c, h, w = images.shape
    if b < 2:
        raise ValueError("counting needs at least 2 images per batch (the contrastive term compares two images)")
    if h % 2 or w % 2 or h != w:
        raise ValueError(f"counting needs square images of even size, got {h}x{w}")
    s = h // 2
    mode = mode or random.choice(DOWNSAMPLE_MODES)
    kwargs = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
    down = F.interpolate(images, size=(s, s), mode=mode, **kwargs)
    tiles = images.unfold(2, s, s).unfold(3, s, s)  # (B, C, 2, 2, s, s)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b, 4, c, s, s)
    other = down.roll(1, dims=0)
    return torch.cat([down[:, None], tiles, other[:, None]], dim=1)


def make_batch(images: torch.Tensor, generator=None):
    """(inputs, targets) for one counting step; there are no targets (None)."""
    return counting_views(images), None


class CountingLoss(nn.Module):
    """Equivariance l2 loss plus the contrastive hinge, averaged over the batch."""

    def __init__(self, margin: float = 10.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, counts: torch.Tensor, targets=None) -> torch.Tensor:
        counts = counts.float()
        whole, tiles_sum, other = counts[:, 0], counts[:, 1:5].sum(dim=1), counts[:, 5]
        equivariance = ((whole - tiles_sum) ** 2).sum(dim=1)
        contrast = F.relu(self.margin - ((other - tiles_sum) ** 2).sum(dim=1))
        return (equivariance + contrast).mean()
