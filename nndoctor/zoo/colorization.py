"""Colorization as classification over quantised ab bins.

Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016. The network sees the L channel
of a CIE Lab image and predicts, at ¼ resolution, a distribution over Q quantised ab colours
(grid size 10, only the bins inside the sRGB gamut). The loss is a multinomial cross-entropy
against *soft-encoded* targets (the 5 nearest bins, Gaussian σ = 5), with class rebalancing
``w ∝ ((1-λ)·p̃ + λ/Q)^-1`` (λ = ½) so rare saturated colours are not drowned by the
desaturated mean, and with images that are already gray masked out.

Full size: the VGG-style "colorization_deploy_v2" network (8 conv blocks, dilated conv5/conv6,
transposed conv8, 1×1 to Q): 32,235,385 parameters with the paper's Q = 313. Our gamut is
computed from the sRGB cube (no data file), which gives slightly fewer bins (see
:func:`ab_bins`); pass ``num_bins=313`` only to compare parameter counts.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ColorizationNet",
    "ColorizationLoss",
    "ab_bins",
    "rgb_to_lab",
    "lab_to_model_input",
    "soft_encode_ab",
    "rebalance_weights",
    "make_batch",
    "CONFIGS",
]

AB_GRID = 10.0
SOFT_NEIGHBOURS = 5
SOFT_SIGMA = 5.0
GRAY_THRESHOLD = 5.0  # |a|, |b| ≤ 5 everywhere ⇒ the image is gray (NonGrayMaskLayer)

CONFIGS = {
    "tiny": {"widths": (8, 16, 32, 64, 64, 64, 64, 32), "image_size": 32},
    "full": {"widths": (64, 128, 256, 512, 512, 512, 512, 256), "image_size": 224},
}

_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_D65_WHITE = np.array([0.950456, 1.0, 1.088754])


def _rgb_to_lab_numpy(rgb: np.ndarray) -> np.ndarray:
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ _XYZ_FROM_RGB.T / _D65_WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


@functools.lru_cache(maxsize=1)
def _ab_bins_numpy() -> np.ndarray:
    # Every 10×10 ab cell that holds at least one colour of a 64³ sampling of the sRGB cube.
    g = np.linspace(0.0, 1.0, 64)
    rgb = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    ab = _rgb_to_lab_numpy(rgb)[:, 1:]
    cells = np.unique(np.round(ab / AB_GRID), axis=0) * AB_GRID
    return cells.astype(np.float32)


def ab_bins() -> torch.Tensor:
    """The in-gamut ab bin centres, ``(Q, 2)`` float32 on the CPU (Q = 261 here; 313 in the
    paper, which also counted bins reached only at the gamut's edge)."""
    with torch.device("cpu"):
        return torch.from_numpy(_ab_bins_numpy().copy())


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] ``(B, 3, H, W)`` → CIE Lab (D65) ``(B, 3, H, W)``: L in [0, 100], a/b in about [-110, 110]."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = torch.as_tensor(_XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device)
    white = torch.as_tensor(_D65_WHITE, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, linear) / white[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_model_input(lab: torch.Tensor) -> torch.Tensor:
    """Scale Lab to the network's input range: L/50 − 1 ∈ [-1, 1], ab/110 ∈ about [-1, 1]."""
    return torch.cat([lab[:, :1] / 50.0 - 1.0, lab[:, 1:] / 110.0], dim=1)


def soft_encode_ab(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Soft targets: ``ab`` ``(B, 2, h, w)`` → ``(B, Q, h, w)``, Gaussian weights (σ = 5) on
    the 5 nearest bin centres, summing to 1 per pixel."""
    b, _, h, w = ab.shape
    pixels = ab.permute(0, 2, 3, 1).reshape(-1, 2)  # (B·h·w, 2)
    dist = torch.cdist(pixels, bins.to(pixels))  # (B·h·w, Q)
    near_d, near_i = dist.topk(SOFT_NEIGHBOURS, dim=1, largest=False)
    weights = torch.softmax(-(near_d**2) / (2 * SOFT_SIGMA**2), dim=1)  # normalised Gaussian
    target = torch.zeros_like(dist).scatter_(1, near_i, weights)
    return target.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Per-bin weights ``w ∝ ((1-λ)·p̃ + λ/Q)^-1``, normalised so ``E_p̃[w] = 1``.

    ``prior``: ``(Q,)`` empirical bin frequencies (any non-negative scale). The paper also
    smooths the prior with a Gaussian over the ab plane; pass an already-smoothed prior.
    """
    p = prior.double() / prior.sum()
    w = 1.0 / ((1 - lam) * p + lam / p.numel())
    w = w / (p * w).sum()
    return w.float()


class ColorizationNet(nn.Module):
    """Input L ``(B, 1, H, W)`` scaled to [-1, 1], output bin logits ``(B, Q, H/4, W/4)``."""

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512, 512, 256),
        image_size: int = 224,
        num_bins: int | None = None,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(widths) != 8:
            raise ValueError(f"ColorizationNet needs 8 block widths, got {tuple(widths)}")
        self.image_size = image_size
        num_bins = num_bins if num_bins is not None else len(_ab_bins_numpy())
        self.num_bins = num_bins
        # (convs, stride of the last conv, dilation) for blocks 1–7; conv8 is built apart.
        spec = [(2, 2, 1), (2, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 2), (3, 1, 2), (3, 1, 1)]
        blocks = []
        cin = in_channels
        for (n, stride, dil), w in zip(spec, widths[:7]):
            layers: list[nn.Module] = []
            for i in range(n):
                s = stride if i == n - 1 else 1
                layers += [nn.Conv2d(cin, w, 3, s, dil, dilation=dil), nn.ReLU(inplace=True)]
                cin = w
            layers.append(nn.BatchNorm2d(w))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        w8 = widths[7]
        self.conv8 = nn.Sequential(
            nn.ConvTranspose2d(cin, w8, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(w8, w8, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(w8, w8, 3, 1, 1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.predict = nn.Conv2d(w8, num_bins, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.predict(self.conv8(self.blocks(lightness)))


class ColorizationLoss(nn.Module):
    """Rebalanced multinomial cross-entropy against soft-encoded ab targets.

    ``forward(logits (B, Q, h, w), ab (B, 2, H, W))``: ``ab`` in Lab units is averaged down to
    ``h×w``, soft-encoded, and each pixel is weighted by the rebalancing weight of its nearest
    bin. Images whose colours are all within ±5 of gray get weight 0. ``prior=None`` gives
    uniform weights (all 1).
    """

    def __init__(self, prior: torch.Tensor | None = None, lam: float = 0.5, mask_gray: bool = True) -> None:
        super().__init__()
        bins = ab_bins()
        self.register_buffer("bins", bins, persistent=False)
        weights = torch.ones(len(bins)) if prior is None else rebalance_weights(prior, lam)
        if len(weights) != len(bins):
            raise ValueError(f"prior has {len(weights)} bins, the gamut has {len(bins)}")
        self.register_buffer("weights", weights, persistent=False)
        self.mask_gray = mask_gray

    def forward(self, logits: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != len(self.bins):
            raise ValueError(f"logits have {logits.shape[1]} bins but the loss uses {len(self.bins)} (ab_bins())")
        logits = logits.float()
        ab_small = F.adaptive_avg_pool2d(ab.float(), logits.shape[-2:])
        target = soft_encode_ab(ab_small, self.bins)
        per_pixel = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)  # (B, h, w)
        weight = self.weights[target.argmax(dim=1)]
        if self.mask_gray:
            colourful = (ab.abs().flatten(1).amax(dim=1) > GRAY_THRESHOLD).to(weight)
            weight = weight * colourful[:, None, None]
        return (per_pixel * weight).sum() / weight.numel()


def make_batch(images: torch.Tensor, generator=None):
    """RGB ``(B, 3, H, W)`` in [0, 1] → (L input ``(B, 1, H, W)`` in [-1, 1], ab target ``(B, 2, H, W)``)."""
    lab = rgb_to_lab(images)
    return lab[:, :1] / 50.0 - 1.0, lab[:, 1:]
