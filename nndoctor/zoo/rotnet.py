"""Rotation prediction (RotNet).

Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018. Every image is shown in all four rotations (0°, 90°, 180°, 270°) and
the network predicts which one (4-way softmax cross-entropy).

Rotations use transposes and flips only: arbitrary-angle rotation would need interpolation and
border filling, which the network can read instead of the image content.

Full size: the paper's CIFAR-10 model, NIN with 4 blocks (1,411,140 parameters), or its
ImageNet AlexNet (``backbone="alexnet"``, 57,030,724 parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import AlexNetTrunk, MLPHead, NINTrunk, build_trunk

__all__ = ["RotNet", "rotate_batch", "RotNetLoss", "CONFIGS"]

NUM_ROTATIONS = 4

CONFIGS = {
    "tiny": {"backbone": "nin", "image_size": 32, "nin_widths": (32, 24, 16)},
    "full": {"backbone": "nin", "image_size": 32, "nin_widths": (192, 160, 96)},
}


class RotNet(nn.Module):
    """Trunk + 4-way rotation classifier. Input ``(B, 3, H, W)``, output logits ``(B, 4)``."""

    def __init__(
        self,
        backbone: str = "nin",
        size: str = "full",
        image_size: int = 32,
        nin_blocks: int = 4,
        nin_widths: tuple[int, int, int] = (192, 160, 96),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        if backbone == "nin":
            self.trunk = NINTrunk(in_channels, nin_blocks, nin_widths)
            # NIN ends with global average pooling and a single Linear(192, 4).
            self.head = MLPHead(self.trunk.out_channels, 1, (), NUM_ROTATIONS)
        elif backbone == "alexnet" and size == "full":
            # The ImageNet RotNet: torchvision AlexNet widths with BN, then two bias-free
            # 4096-wide FC + BN1d layers and a Linear(4096, 4).
            self.trunk = AlexNetTrunk(in_channels, (64, 192, 384, 256, 256))
            self.head = MLPHead(256, 6, (4096, 4096), NUM_ROTATIONS, batch_norm=True)
        else:
            self.trunk = build_trunk(backbone, size, in_channels)
            pool = 3 if backbone == "alexnet" else 1
            hidden = (64,) if size == "tiny" else (4096,)
            self.head = MLPHead(self.trunk.out_channels, pool, hidden, NUM_ROTATIONS, batch_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image, stacked in label order.

    ``images``: ``(B, C, H, W)`` with ``H == W`` (a non-square image would leak its rotation
    through the aspect ratio). Returns inputs ``(4B, C, H, W)`` ordered
    ``[all 0°, all 90°, all 180°, all 270°]`` and labels ``(4B,)`` = ``[0]*B + [1]*B + …``.
    Rotation is counter-clockwise, as ``torch.rot90`` with ``dims=(-2, -1)``.
    """
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotate_batch needs square images (B, C, S, S), got {tuple(images.shape)}")
    rotated = [torch.rot90(images, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)]
    labels = torch.arange(NUM_ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return torch.cat(rotated), labels


def make_batch(images: torch.Tensor, generator: torch.Generator | None = None):
    """(inputs, targets) for one RotNet step from a batch of square images."""
    return rotate_batch(images)


class RotNetLoss(nn.CrossEntropyLoss):
    """Softmax cross-entropy over the 4 rotations; chance level is ln 4 = 1.386."""
