"""Multi-task self-supervised learning.

Doersch & Zisserman, "Multi-task Self-Supervised Visual Learning", ICCV 2017. One shared trunk,
one head per pretext task, the losses summed (the paper's "naive" combination; ``weights`` sets
λ_t). The paper's tasks are relative position, colorization, exemplar and motion segmentation;
the last needs video, so this workload trains the first three:

* relative position (8-way classification of patch pairs, :mod:`.relative_patch`);
* colorization (soft-encoded ab bins from a gray input, :mod:`.colorization`). Inputs are
  "harmonised": every task sees gray-ish 3-channel images so the trunk cannot tell tasks apart;
* exemplar, in the scalable triplet form: two augmented views per image, L2-normalised
  embeddings, batch-hard triplet loss with margin 0.5 (labels = image index in the batch).

Full size: ResNet-101 v2 truncated after block 3 (conv4_x, 1024 channels at stride 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import ResNetTrunk
from .colorization import ColorizationLoss, _ab_bins_numpy, rgb_to_lab
from .relative_patch import NUM_POSITIONS, sample_patch_pairs

__all__ = ["MultiTaskNet", "MultiTaskLoss", "make_batch", "batch_hard_triplet_loss", "CONFIGS", "TASKS"]

TASKS = ("relative_position", "colorization", "exemplar")

CONFIGS = {
    "tiny": {"layers": (1, 1, 1), "width": 8, "small_input": True, "embedding": 32, "hidden": 64, "patch_size": 16, "gap": 4, "jitter": 2},
    "full": {"layers": (3, 4, 23), "width": 64, "small_input": False, "embedding": 1000, "hidden": 4096, "patch_size": 64, "gap": 16, "jitter": 7},
}


class MultiTaskNet(nn.Module):
    """``forward(inputs: dict)`` → dict of outputs, one entry per task present in ``inputs``:

    * ``relative_position``: pairs ``(B, 2, 3, p, p)`` → logits ``(B, 8)``
    * ``colorization``: gray images ``(B, 3, H, W)`` → ab-bin logits ``(B, Q, h, w)`` (trunk resolution)
    * ``exemplar``: views ``(2B, 3, H, W)`` → unit-norm embeddings ``(2B, E)``
    """

    def __init__(self, layers=(3, 4, 23), width: int = 64, small_input: bool = False, embedding: int = 1000, hidden: int = 4096,
                 patch_size: int = 64, gap: int = 16, jitter: int = 7, num_bins: int | None = None):
        super().__init__()
        self.patch_size, self.gap, self.jitter = patch_size, gap, jitter
        self.trunk = ResNetTrunk(3, layers, width, bottleneck=True, small_input=small_input, final_norm=False)
        c = self.trunk.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.rp_head = nn.Sequential(nn.Linear(2 * c, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(hidden, NUM_POSITIONS))
        self.color_head = nn.Conv2d(c, num_bins if num_bins is not None else len(_ab_bins_numpy()), 1)
        self.exemplar_head = nn.Linear(c, embedding)

    def forward(self, inputs: dict) -> dict:
        unknown = set(inputs) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; MultiTaskNet knows {list(TASKS)}")
        out = {}
        if "relative_position" in inputs:
            pairs = inputs["relative_position"]
            b = pairs.shape[0]
            emb = self.pool(self.trunk(pairs.flatten(0, 1))).flatten(1).reshape(b, -1)  # (B, 2·C)
            out["relative_position"] = self.rp_head(emb)
        if "colorization" in inputs:
            out["colorization"] = self.color_head(self.trunk(inputs["colorization"]))
        if "exemplar" in inputs:
            emb = self.exemplar_head(self.pool(self.trunk(inputs["exemplar"])).flatten(1))
            out["exemplar"] = F.normalize(emb, dim=1)  # per sample (dim=1), not over the batch
        return out


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """For each anchor: hardest positive and hardest negative in the batch, hinge at ``margin``."""
    dist = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    hardest_pos = dist.masked_fill(~same | eye, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


class MultiTaskLoss(nn.Module):
    """``Σ_t λ_t·L_t`` over the tasks present in the outputs (equal λ by default)."""

    def __init__(self, weights: dict | None = None, margin: float = 0.5) -> None:
        super().__init__()
        self.weights = {t: 1.0 for t in TASKS} | dict(weights or {})
        self.margin = margin
        self.colorization = ColorizationLoss()

    def forward(self, outputs: dict, targets: dict) -> torch.Tensor:
        terms = self.terms(outputs, targets)
        return sum(self.weights[t] * v for t, v in terms.items())

    def terms(self, outputs: dict, targets: dict) -> dict:
        terms = {}
        if "relative_position" in outputs:
            terms["relative_position"] = F.cross_entropy(outputs["relative_position"].float(), targets["relative_position"])
        if "colorization" in outputs:
            terms["colorization"] = self.colorization(outputs["colorization"], targets["colorization"])
        if "exemplar" in outputs:
            terms["exemplar"] = batch_hard_triplet_loss(outputs["exemplar"].float(), targets["exemplar"], self.margin)
        return terms


def _augment(images: torch.Tensor, generator=None) -> torch.Tensor:
    """Random flip, 0–12 % shifted crop resized back, brightness/contrast jitter."""
    b, c, h, w = images.shape
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.where(flip[:, None, None, None].to(images.device), images.flip(-1), images)
    m = min(h, w) // 8
    if m:
        dy, dx = (int(v) for v in torch.randint(0, m + 1, (2,), generator=generator))
        out = F.interpolate(out[..., dy : h - m + dy, dx : w - m + dx], size=(h, w), mode="bilinear", align_corners=False)
    gain = (0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator)).to(images)
    return (out * gain).clamp(0, 1)


def make_batch(images: torch.Tensor, patch_size: int, gap: int, jitter: int, generator=None):
    """RGB ``(B, 3, H, W)`` in [0, 1] → (inputs dict, targets dict) for all three tasks."""
    gray = images.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    pairs, rp_labels = sample_patch_pairs(gray, patch_size, gap, jitter, generator=generator)
    lab = rgb_to_lab(images)
    views = torch.cat([_augment(images, generator), _augment(images, generator)])
    views = views.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1) * 2 - 1  # harmonised: gray
    ids = torch.arange(images.shape[0], device=images.device).repeat(2)
    inputs = {"relative_position": pairs, "colorization": (lab[:, :1] / 50.0 - 1.0).expand(-1, 3, -1, -1), "exemplar": views}
    targets = {"relative_position": rp_labels, "colorization": lab[:, 1:], "exemplar": ids}
    return inputs, targets
