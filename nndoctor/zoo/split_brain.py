"""Split-brain autoencoder.

Zhang, Isola & Efros, "Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel
Prediction", CVPR 2017. The network is split channel-wise into two disjoint halves: F1 predicts
the ab channels from L, F2 predicts L from ab. Both are posed as classification (ab over the
quantised gamut bins of colorization, L over 100 one-unit bins), which beat regression in the
paper's ablation. The representation is the concatenation of both halves' features.

Full size: two half-width AlexNet towers (48-128-192-192-128, BN), fully convolutional, with a
1×1 prediction conv each: 1,930,317 parameters with the paper's Q = 313 ab bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import AlexNetTrunk
from .colorization import _ab_bins_numpy, ab_bins, lab_to_model_input, rgb_to_lab, soft_encode_ab

__all__ = ["SplitBrainAutoencoder", "SplitBrainLoss", "make_batch", "CONFIGS"]

CONFIGS = {
    "tiny": {"widths": (8, 16, 24, 24, 16), "l_bins": 20, "small_input": True},
    "full": {"widths": (48, 128, 192, 192, 128), "l_bins": 100, "small_input": False},
}


def _tower(in_channels, widths, small_input):
    if small_input:
        return AlexNetTrunk(in_channels, widths, conv1_kernel=3, conv1_stride=1, conv1_padding=1)
    return AlexNetTrunk(in_channels, widths)


class SplitBrainAutoencoder(nn.Module):
    """Input: Lab scaled by :func:`lab_to_model_input`, ``(B, 3, H, W)``.

    Output: ``(ab_logits (B, Q, h, w), l_logits (B, l_bins, h, w))`` at conv5 resolution.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (48, 128, 192, 192, 128),
        l_bins: int = 100,
        num_ab_bins: int | None = None,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.l_bins = l_bins
        num_ab_bins = num_ab_bins if num_ab_bins is not None else len(_ab_bins_numpy())
        self.l_to_ab = _tower(1, widths, small_input)  # F1
        self.ab_to_l = _tower(2, widths, small_input)  # F2
        self.predict_ab = nn.Conv2d(widths[-1], num_ab_bins, 1)
        self.predict_l = nn.Conv2d(widths[-1], l_bins, 1)

    def forward(self, lab_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lightness, ab = lab_input[:, :1], lab_input[:, 1:]
        return self.predict_ab(self.l_to_ab(lightness)), self.predict_l(self.ab_to_l(ab))

    def features(self, lab_input: torch.Tensor) -> torch.Tensor:
        """The transferred representation: both halves' conv5 maps, concatenated on channels."""
        return torch.cat([self.l_to_ab(lab_input[:, :1]), self.ab_to_l(lab_input[:, 1:])], dim=1)


class SplitBrainLoss(nn.Module):
    """CE(F1: L→ab, soft-encoded ab bins) + CE(F2: ab→L, L quantised into ``l_bins`` bins).

    ``forward((ab_logits, l_logits), lab)`` with ``lab`` the raw Lab target ``(B, 3, H, W)``.
    """

    def __init__(self, l_bins: int = 100) -> None:
        super().__init__()
        self.l_bins = l_bins
        self.register_buffer("bins", ab_bins(), persistent=False)

    def forward(self, outputs, lab: torch.Tensor) -> torch.Tensor:
        ab_logits, l_logits = (o.float() for o in outputs)
        if l_logits.shape[1] != self.l_bins:
            raise ValueError(f"l_logits have {l_logits.shape[1]} bins, the loss expects l_bins={self.l_bins}")
        small = F.adaptive_avg_pool2d(lab.float(), ab_logits.shape[-2:])
        ab_target = soft_encode_ab(small[:, 1:], self.bins)
        ab_loss = -(ab_target * F.log_softmax(ab_logits, dim=1)).sum(dim=1).mean()
        l_target = (small[:, 0] / 100.0 * self.l_bins).long().clamp(0, self.l_bins - 1)  # (B, h, w)
        return ab_loss + F.cross_entropy(l_logits, l_target)


def make_batch(images: torch.Tensor, generator=None):
    """RGB ``(B, 3, H, W)`` in [0, 1] → (scaled Lab input, raw Lab target)."""
    lab = rgb_to_lab(images)
    return lab_to_model_input(lab), lab
