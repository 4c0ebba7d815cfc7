"""Denoising autoencoder.

Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features with Denoising
Autoencoders", ICML 2008. The input is corrupted (masking noise: a random fraction ν of the
input components set to 0), and the network reconstructs the *clean* input; squared error.

Full size: the convolutional form Pathak et al. (2016) use as their AE baseline — the
context-encoder generator (4×4 stride-2 convs 64-64-128-256-512, 4000-d bottleneck, mirrored
transposed convs) on 128 px images, reconstructing all 128×128 pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import EncoderDecoder

__all__ = ["DenoisingAutoencoder", "corrupt", "make_batch", "DenoisingLoss", "CONFIGS"]

CONFIGS = {
    "tiny": {"image_size": 32, "widths": (16, 32, 64), "bottleneck": 64},
    "full": {"image_size": 128, "widths": (64, 64, 128, 256, 512), "bottleneck": 4000},
}


class DenoisingAutoencoder(EncoderDecoder):
    """Input corrupted images ``(B, C, S, S)`` in [-1, 1], output the reconstruction ``(B, C, S, S)``."""

    def __init__(self, image_size: int = 128, widths=(64, 64, 128, 256, 512), bottleneck: int = 4000, channels: int = 3):
        super().__init__(channels, channels, image_size=image_size, output_size=image_size, widths=widths, bottleneck=bottleneck)
        self.image_size = image_size


def corrupt(images: torch.Tensor, mask_fraction: float = 0.3, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masking noise: each input component is set to 0 with probability ``mask_fraction``."""
    if not 0.0 <= mask_fraction < 1.0:
        raise ValueError(f"mask_fraction must be in [0, 1), got {mask_fraction}")
    keep = torch.rand(images.shape, generator=generator) >= mask_fraction
    return images * keep.to(images)


def make_batch(images: torch.Tensor, mask_fraction: float = 0.3, generator=None):
    """RGB in [0, 1] → (corrupted input, clean target), both scaled to [-1, 1] (the decoder ends in Tanh)."""
    clean = images * 2 - 1
    return corrupt(clean, mask_fraction, generator=generator), clean


class DenoisingLoss(nn.MSELoss):
    """Squared reconstruction error against the clean image."""
