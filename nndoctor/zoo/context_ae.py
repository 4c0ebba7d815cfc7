"""Context encoder (inpainting).

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by
Inpainting", CVPR 2016. The centre of a 128×128 image is replaced by the data-set mean and the
generator predicts the missing 64×64 region. For feature learning the paper uses the
reconstruction loss alone (the adversarial term is for sharp inpainting); the reconstruction is
an L2 loss on the hole, with 10× weight on a 4 px overlap border (``overlapPred``).

Full size: encoder 4×4 stride-2 convs 64-64-128-256-512 → 4000-d bottleneck → transposed convs
512-256-128-64-3 with Tanh: 71,130,531 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import EncoderDecoder

__all__ = ["ContextEncoder", "mask_centre", "make_batch", "ContextLoss", "CONFIGS"]

# Mean ImageNet colour scaled to [-1, 1], the fill value of the hole (train.lua).
HOLE_FILL = (2 * 117 / 255 - 1, 2 * 104 / 255 - 1, 2 * 123 / 255 - 1)

CONFIGS = {
    "tiny": {"image_size": 32, "widths": (16, 32, 64), "bottleneck": 64, "overlap": 1},
    "full": {"image_size": 128, "widths": (64, 64, 128, 256, 512), "bottleneck": 4000, "overlap": 4},
}


class ContextEncoder(EncoderDecoder):
    """Input the masked image ``(B, 3, S, S)`` in [-1, 1], output the centre ``(B, 3, S/2, S/2)``."""

    def __init__(self, image_size: int = 128, widths=(64, 64, 128, 256, 512), bottleneck: int = 4000, overlap: int = 4):
        super().__init__(3, 3, image_size=image_size, output_size=image_size // 2, widths=widths, bottleneck=bottleneck)
        self.image_size = image_size
        self.overlap = overlap


def mask_centre(images: torch.Tensor, overlap: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the central half-size square out of ``images`` ``(B, 3, S, S)`` in [-1, 1].

    Returns the masked input (hole filled with the mean colour, shrunk by ``overlap`` px per side
    so the context slightly overlaps the prediction) and the true centre ``(B, 3, S/2, S/2)``.
    """
    s = images.shape[-1]
    q = s // 4
    centre = images[..., q : q + s // 2, q : q + s // 2].clone()
    masked = images.clone()
    fill = torch.tensor(HOLE_FILL, dtype=images.dtype, device=images.device)[:, None, None]
    masked[..., q + overlap : q + s // 2 - overlap, q + overlap : q + s // 2 - overlap] = fill
    return masked, centre


def make_batch(images: torch.Tensor, overlap: int = 4, generator=None):
    """RGB in [0, 1] → (masked image, true centre), in [-1, 1]."""
    return mask_centre(images * 2 - 1, overlap)


class ContextLoss(nn.Module):
    """L2 on the predicted centre, with ``overlap_weight``× weight on the ``overlap`` px border
    that the input also shows (train.lua: ``wtl2``, ``overlapPred``)."""

    def __init__(self, overlap: int = 4, overlap_weight: float = 10.0) -> None:
        super().__init__()
        self.overlap, self.overlap_weight = overlap, overlap_weight

    def forward(self, prediction: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        if prediction.shape != centre.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and centre {tuple(centre.shape)} differ")
        weight = torch.full_like(centre, self.overlap_weight)
        o = self.overlap
        if o:
            weight[..., o:-o, o:-o] = 1.0
        else:
            weight.fill_(1.0)
        return (weight * (prediction.float() - centre.float()) ** 2).mean()
