"""Exemplar-CNN: surrogate classes from augmented seed patches.

Dosovitskiy, Springenberg, Riedmiller & Brox, "Discriminative Unsupervised Feature Learning with
Convolutional Neural Networks", NIPS 2014. 32×32 seed patches are cropped where the image has
strong gradients; each seed is its own class, and randomly transformed copies of it (translation,
scale, rotation, colour/contrast) must be classified as that seed. N seeds give N classes, which
is why the method does not scale to large data sets.

Full size: the paper's "medium" network 64c5-128c5-256c5-512f (5×5 convs, 3/2 max-pool after
each, dropout on the FC) with N = 8000 surrogate classes: 7,230,912 parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import MLPHead, build_trunk

__all__ = ["ExemplarCNN", "sample_seeds", "transform_seeds", "make_surrogate_classes", "ExemplarLoss", "CONFIGS"]

CONFIGS = {
    "tiny": {"backbone": "paper", "conv_widths": (16, 32), "fc": 64, "num_classes": 64, "patch_size": 32},
    "full": {"backbone": "paper", "conv_widths": (64, 128, 256), "fc": 512, "num_classes": 8000, "patch_size": 32},
}


class ExemplarCNN(nn.Module):
    """Input ``(B, C, p, p)`` patches, output ``(B, N)`` surrogate-class logits."""

    def __init__(
        self,
        backbone: str = "paper",
        size: str = "full",
        conv_widths: tuple[int, ...] = (64, 128, 256),
        fc: int = 512,
        num_classes: int = 8000,
        patch_size: int = 32,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_classes = num_classes
        if backbone == "paper":
            layers: list[nn.Module] = []
            cin = in_channels
            for w in conv_widths:
                layers += [nn.Conv2d(cin, w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
                cin = w
            self.trunk = nn.Sequential(*layers)
            side = patch_size
            for _ in conv_widths:
                side = (side - 1) // 2 + 1  # MaxPool2d(3, 2, padding=1)
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(cin * side * side, fc), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(fc, num_classes)
            )
        else:
            self.trunk = build_trunk(backbone, size, in_channels)
            pool = 3 if backbone == "alexnet" else 1
            self.head = MLPHead(self.trunk.out_channels, pool, (fc,), num_classes, dropout=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _gradient_energy(images: torch.Tensor) -> torch.Tensor:
    gray = images.mean(dim=1, keepdim=True)
    gy = gray[..., 1:, :-1] - gray[..., :-1, :-1]
    gx = gray[..., :-1, 1:] - gray[..., :-1, :-1]
    return (gx**2 + gy**2)[:, 0]  # (B, H-1, W-1)


def sample_seeds(images: torch.Tensor, num_classes: int, patch_size: int = 32, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_classes`` seed crops ``(N, C, 1.5·p, 1.5·p)`` from ``images`` ``(B, C, H, W)`` in [0, 1].

    A seed's top-left corner is drawn with probability proportional to the gradient energy inside
    its window (the paper samples "patches with considerable gradient"). Seeds are 1.5× the patch
    so that transformations can look outside the final crop.
    """
    b, c, h, w = images.shape
    big = int(math.ceil(patch_size * 1.5))
    if h < big or w < big:
        raise ValueError(f"images of {h}x{w} are too small for {patch_size} px exemplar seeds (need {big}x{big})")
    energy = _gradient_energy(images)
    window = F.avg_pool2d(energy[:, None], kernel_size=big - 1, stride=1)[:, 0]  # (B, H-big+1, W-big+1)
    flat = window.flatten() + 1e-12
    picks = torch.multinomial(flat, num_classes, replacement=flat.numel() < num_classes, generator=generator)
    per_image = window.shape[1] * window.shape[2]
    img_idx = picks // per_image
    rem = picks % per_image
    ys, xs = rem // window.shape[2], rem % window.shape[2]
    return torch.stack([images[i, :, y : y + big, x : x + big] for i, y, x in zip(img_idx.tolist(), ys.tolist(), xs.tolist())])


def transform_seeds(seeds: torch.Tensor, patch_size: int = 32, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random transformed ``patch_size`` view of each seed ``(n, C, 1.5·p, 1.5·p)`` → ``(n, C, p, p)``.

    Geometric: translation ≤ 0.2 of the patch, scale 0.7–1.4, rotation ±20°. Photometric: contrast
    (a power on the values), per-channel gain 0.7–1.4, brightness ±0.1.
    """
    n, c, big, _ = seeds.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(20)
    scale = 0.7 * 2.0 ** (torch.rand(n, generator=generator))  # 0.7 … 1.4
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.2 * patch_size / big
    crop = patch_size / big / scale  # the sampled window, in units of the seed's half-size
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = crop * torch.cos(angle)
    theta[:, 0, 1] = -crop * torch.sin(angle)
    theta[:, 1, 0] = crop * torch.sin(angle)
    theta[:, 1, 1] = crop * torch.cos(angle)
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(seeds), (n, c, patch_size, patch_size), align_corners=False)
    patches = F.grid_sample(seeds, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gamma = 2.0 ** ((torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 1.0)
    gain = 0.7 + 0.7 * torch.rand(n, c, 1, 1, generator=generator)
    offset = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    patches = (patches.clamp(0, 1) ** gamma.to(patches)) * gain.to(patches) + offset.to(patches)
    return patches.clamp(0, 1)


def make_surrogate_classes(
    images: torch.Tensor,
    num_classes: int,
    views: int,
    patch_size: int = 32,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole surrogate data set at once: ``num_classes`` seeds × ``views`` transformed copies.

    Returns patches ``(num_classes·views, C, p, p)`` and labels = seed index. For the paper's
    N = 8000 keep the seeds and call :func:`transform_seeds` per batch instead.
    """
    seeds = sample_seeds(images, num_classes, patch_size, generator=generator)
    patches = transform_seeds(seeds.repeat_interleave(views, dim=0), patch_size, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(views)
    return patches, labels.to(images.device)


class ExemplarLoss(nn.CrossEntropyLoss):
    """Softmax cross-entropy over the N surrogate classes; chance level ln N."""
