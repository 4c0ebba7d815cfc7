"""Relative patch location.

Doersch, Gupta & Efros, "Unsupervised Visual Representation Learning by Context Prediction",
ICCV 2015. A 3×3 grid of patches is sampled with gaps between them and random jitter; given the
centre patch and one of its 8 neighbours, the network predicts which of the 8 positions the
neighbour came from. Gap and jitter stop it from continuing edges across patch borders.

Late-fusion pair network: a shared trunk embeds each patch to fc6, the two embeddings are
concatenated, then fc7 and the 8-way fc8. Full size: AlexNet with BN, 96 px patches, 48 px gap,
jitter up to 7 px, fc6/fc7 4096.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import build_trunk

__all__ = ["RelativePatchNet", "sample_patch_pairs", "make_batch", "RelativePatchLoss", "CONFIGS"]

NUM_POSITIONS = 8
# Neighbour index → (row, col) in the 3×3 grid, reading order, centre (1, 1) skipped.
NEIGHBOUR_CELLS = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]

CONFIGS = {
    "tiny": {"backbone": "alexnet", "patch_size": 32, "gap": 8, "jitter": 3, "fc6": 64, "fc7": 128},
    "full": {"backbone": "alexnet", "patch_size": 96, "gap": 48, "jitter": 7, "fc6": 4096, "fc7": 4096},
}


class RelativePatchNet(nn.Module):
    """Input ``(B, 2, C, p, p)`` = (centre, neighbour) pairs, output ``(B, 8)`` position logits."""

    def __init__(
        self,
        backbone: str = "alexnet",
        size: str = "full",
        patch_size: int = 96,
        gap: int = 48,
        jitter: int = 7,
        fc6: int = 4096,
        fc7: int = 4096,
        in_channels: int = 3,
        pool: int | None = None,
    ) -> None:
        super().__init__()
        self.patch_size, self.gap, self.jitter = patch_size, gap, jitter
        self.trunk = build_trunk(backbone, size, in_channels)
        if pool is None:  # the trunk's native conv5 map: 2×2 for 96 px AlexNet patches, 3×3 for 32 px tiny ones
            pool = (2 if size == "full" else 3) if backbone == "alexnet" else 1
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc6 = nn.Sequential(nn.Linear(self.trunk.out_channels * pool * pool, fc6), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Linear(2 * fc6, fc7), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc8 = nn.Linear(fc7, NUM_POSITIONS)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        if pairs.dim() != 5 or pairs.shape[1] != 2:
            raise ValueError(f"RelativePatchNet expects pairs (B, 2, C, p, p), got {tuple(pairs.shape)}")
        b = pairs.shape[0]
        embedded = self.fc6(self.pool(self.trunk(pairs.flatten(0, 1))).flatten(1))  # (B·2, fc6)
        return self.fc8(self.fc7(embedded.reshape(b, -1)))  # concat [centre, neighbour]


def grid_extent(patch_size: int, gap: int, jitter: int) -> int:
    """Side of the square an image crop must have to hold the jittered 3×3 grid."""
    return 3 * patch_size + 2 * gap + 2 * jitter


def sample_patch_pairs(
    images: torch.Tensor,
    patch_size: int,
    gap: int,
    jitter: int,
    *,
    generator: torch.Generator | None = None,
    standardize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One (centre, neighbour) pair per image, with its position label.

    ``images``: ``(B, C, H, W)``, both sides ≥ :func:`grid_extent`. The grid is placed at a
    random offset; each of the two patches is jittered independently by up to ``jitter`` px in
    each direction. With ``standardize`` each patch is standardised on its own (per-patch
    mean/std), which removes absolute brightness cues. Returns pairs ``(B, 2, C, p, p)`` and labels ``(B,)`` in 0..7.
    """
    b, c, h, w = images.shape
    extent = grid_extent(patch_size, gap, jitter)
    if h < extent or w < extent:
        raise ValueError(
            f"images of {h}x{w} are too small for a 3x3 grid of {patch_size} px patches with gap {gap} and "
            f"jitter {jitter}: need at least {extent}x{extent}"
        )
    labels = torch.randint(NUM_POSITIONS, (b,), generator=generator)
    origin_y = torch.randint(h - extent + 1, (b,), generator=generator)
    origin_x = torch.randint(w - extent + 1, (b,), generator=generator)
    shake = torch.randint(2 * jitter + 1, (b, 2, 2), generator=generator)  # (B, patch, yx)
    pairs = images.new_empty(b, 2, c, patch_size, patch_size)
    step = patch_size + gap
    for i in range(b):
        cells = [(1, 1), NEIGHBOUR_CELLS[int(labels[i])]]
        for k, (row, col) in enumerate(cells):
            y = int(origin_y[i]) + row * step + int(shake[i, k, 0])
            x = int(origin_x[i]) + col * step + int(shake[i, k, 1])
            pairs[i, k] = images[i, :, y : y + patch_size, x : x + patch_size]
    if standardize:
        mean = pairs.mean(dim=(2, 3, 4), keepdim=True)
        std = pairs.std(dim=(2, 3, 4), keepdim=True)
        pairs = (pairs - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return pairs, labels.to(images.device)


def make_batch(images, patch_size: int, gap: int, jitter: int, generator=None):
    """(inputs, targets) for one relative-patch-location step."""
    return sample_patch_pairs(images, patch_size, gap, jitter, generator=generator)


class RelativePatchLoss(nn.CrossEntropyLoss):
    """Softmax cross-entropy over the 8 neighbour positions; chance level ln 8 = 2.079."""
