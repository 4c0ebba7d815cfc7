"""EfficientDet: EfficientNet backbone, BiFPN, class/box heads, focal loss.

Tan, Pang & Le, "EfficientDet: Scalable and Efficient Object Detection", CVPR 2020; backbone from
Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019;
focal loss from Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.

* Backbone: EfficientNet-B{φ} (MBConv blocks with squeeze-excitation, swish), stages 3/5/7 give
  P3/P4/P5 (strides 8/16/32); P6 = max-pool(BN(1×1 conv(P5))), P7 = max-pool(P6).
* BiFPN: top-down then bottom-up fusion over P3–P7, 8 nodes per layer, repeated D_bifpn times.
  Fast normalised fusion ``O = Σ_i w_i·I_i / (ε + Σ_j w_j)``, ``w_i = ReLU(raw_i)``, ε = 1e-4,
  one scalar per input edge per node per layer, initialised to 1. ``fusion="softmax"`` is the
  paper's softmax variant (similar accuracy, ~30 % slower on GPU), ``"sum"`` what the official
  D6/D7 configs use "for stability".
* Heads shared across levels (separate BN per level): D_head × [separable conv → BN → swish] then
  a separable conv to A·C class logits (bias = −log((1−0.01)/0.01), prior 0.01) or A·4 box deltas.
  A = 9 anchors per location (3 octave scales × 3 aspect ratios), side = anchor_scale·stride·scale.
* Loss (official): anchors with IoU ≥ 0.5 are positive, below are negative, every ground truth is
  force-matched to its best anchor; sigmoid focal loss (α = 0.25, γ = 1.5) summed and divided by
  (#positives + 1); Huber (δ = 0.1) on Faster-RCNN box deltas of positives, divided by
  4·(#positives + 1); total = class + 50·box.

Compound scaling table: :data:`COMPOUND_SCALING` (D0–D7). D0 at C = 90: 3,880,067 parameters
(the paper's "3.9M"; backbone 3,595,388).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import box_iou, cxcywh_to_xyxy

__all__ = [
    "EfficientDet",
    "EfficientNetBackbone",
    "BiFPN",
    "FeatureFusion",
    "EfficientDetLoss",
    "focal_loss",
    "generate_anchors",
    "COMPOUND_SCALING",
    "EFFICIENTNET_SCALING",
    "CONFIGS",
]

BN_MOMENTUM, BN_EPS = 0.01, 1e-3  # TensorFlow's momentum 0.99 is PyTorch's 0.01 (pitfall E6)
FUSION_EPS = 1e-4
LEVELS = (3, 4, 5, 6, 7)
OCTAVE_SCALES = (2 ** 0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))  # (x, y) multipliers
NUM_ANCHORS = len(OCTAVE_SCALES) * len(ASPECT_RATIOS)
CLASS_PRIOR = 0.01

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in, out); SE ratio 0.25 everywhere.
B0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
# (width multiplier, depth multiplier, native resolution)
EFFICIENTNET_SCALING = {
    "b0": (1.0, 1.0, 224), "b1": (1.0, 1.1, 240), "b2": (1.1, 1.2, 260), "b3": (1.2, 1.4, 300),
    "b4": (1.4, 1.8, 380), "b5": (1.6, 2.2, 456), "b6": (1.8, 2.6, 528), "b7": (2.0, 3.1, 600),
}  # fmt: skip

# The implemented table of google/automl hparams_config (the paper's formulas W = 64·1.35^φ etc.
# give slightly different widths; the released models use these).
COMPOUND_SCALING = {
    0: {"backbone": "b0", "image_size": 512, "fpn_channels": 64, "fpn_layers": 3, "head_layers": 3, "fusion": "fast", "anchor_scale": 4.0},
    1: {"backbone": "b1", "image_size": 640, "fpn_channels": 88, "fpn_layers": 4, "head_layers": 3, "fusion": "fast", "anchor_scale": 4.0},
    2: {"backbone": "b2", "image_size": 768, "fpn_channels": 112, "fpn_layers": 5, "head_layers": 3, "fusion": "fast", "anchor_scale": 4.0},
    3: {"backbone": "b3", "image_size": 896, "fpn_channels": 160, "fpn_layers": 6, "head_layers": 4, "fusion": "fast", "anchor_scale": 4.0},
    4: {"backbone": "b4", "image_size": 1024, "fpn_channels": 224, "fpn_layers": 7, "head_layers": 4, "fusion": "fast", "anchor_scale": 4.0},
    5: {"backbone": "b5", "image_size": 1280, "fpn_channels": 288, "fpn_layers": 7, "head_layers": 4, "fusion": "fast", "anchor_scale": 4.0},
    6: {"backbone": "b6", "image_size": 1280, "fpn_channels": 384, "fpn_layers": 8, "head_layers": 5, "fusion": "sum", "anchor_scale": 4.0},
    7: {"backbone": "b6", "image_size": 1536, "fpn_channels": 384, "fpn_layers": 8, "head_layers": 5, "fusion": "sum", "anchor_scale": 5.0},
}
# Parameter counts the paper / official README report (C = 90), for the tests.
PAPER_PARAMS = {0: 3.9e6, 1: 6.6e6, 2: 8.1e6, 3: 12.0e6, 4: 20.7e6, 5: 33.7e6, 6: 51.9e6, 7: 51.9e6}

TINY = {
    "backbone": (0.25, 0.34), "image_size": 128, "fpn_channels": 16, "fpn_layers": 2, "head_layers": 1,
    "fusion": "fast", "anchor_scale": 2.0, "num_classes": 3, "drop_connect": 0.0,
}  # fmt: skip
CONFIGS = {"tiny": TINY, "full": {**COMPOUND_SCALING[0], "num_classes": 90}}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (SE width from the block *input*)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, se_ratio: float = 0.25, drop_connect: float = 0.0) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.SiLU()) if expand != 1 else nn.Identity()
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), _bn(mid), nn.SiLU())
        squeezed = max(1, int(cin * se_ratio))
        self.se_reduce = nn.Conv2d(mid, squeezed, 1)
        self.se_expand = nn.Conv2d(squeezed, mid, 1)
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), _bn(cout))
        self.residual = stride == 1 and cin == cout
        self.drop_connect = drop_connect

    def forward(self, x):
        h = self.depthwise(self.expand(x))
        s = F.adaptive_avg_pool2d(h, 1)
        h = h * torch.sigmoid(self.se_expand(F.silu(self.se_reduce(s))))
        h = self.project(h)
        if not self.residual:
            return h
        if self.training and self.drop_connect > 0:  # stochastic depth, per sample
            keep = 1.0 - self.drop_connect
            mask = torch.rand(h.shape[0], 1, 1, 1, device=h.device, dtype=h.dtype) < keep
            h = h * mask / keep
        return x + h


class EfficientNetBackbone(nn.Module):
    """EfficientNet without its classification head. Returns ``[P3, P4, P5]`` (strides 8, 16, 32)."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, drop_connect: float = 0.2) -> None:
        super().__init__()
        stem = round_filters(32, width)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), _bn(stem), nn.SiLU())
        total = sum(round_repeats(r, depth) for r, *_ in B0_BLOCKS)
        stages, index = [], 0
        self.channels = []
        for repeats, k, s, e, cin, cout in B0_BLOCKS:
            cin, cout = round_filters(cin, width), round_filters(cout, width)
            blocks = []
            for i in range(round_repeats(repeats, depth)):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e, drop_connect=drop_connect * index / total))
                index += 1
            stages.append(nn.Sequential(*blocks))
            self.channels.append(cout)
        self.stages = nn.ModuleList(stages)
        self.out_channels = (self.channels[2], self.channels[4], self.channels[6])

    def forward(self, x):
        x = self.stem(x)
        taps = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in (2, 4, 6):
                taps.append(x)
        return taps


class SeparableConv(nn.Sequential):
    """Depthwise 3×3 (no bias) + pointwise 1×1 (with bias)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1))


class FeatureFusion(nn.Module):
    """Weighted fusion of same-shaped inputs: ``fast`` (ReLU weights, normalised with ε),
    ``softmax`` (softmax over the weights) or ``sum`` (no weights)."""

    def __init__(self, num_inputs: int, method: str = "fast", eps: float = FUSION_EPS) -> None:
        super().__init__()
        if method not in ("fast", "softmax", "sum"):
            raise ValueError(f"unknown fusion {method!r}; choose 'fast', 'softmax' or 'sum'")
        self.method, self.eps = method, eps
        self.weight = nn.Parameter(torch.ones(num_inputs)) if method != "sum" else None

    def normalized_weights(self) -> torch.Tensor | None:
        if self.weight is None:
            return None
        if self.method == "fast":
            w = F.relu(self.weight)
            return w / (w.sum() + self.eps)
        return torch.softmax(self.weight, dim=0)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        w = self.normalized_weights()
        if w is None:
            return torch.stack(list(inputs)).sum(dim=0)
        return sum(w[i] * x for i, x in enumerate(inputs))


class FusionNode(nn.Module):
    """fuse → swish → separable conv → BN."""

    def __init__(self, channels: int, num_inputs: int, fusion: str) -> None:
        super().__init__()
        self.fuse = FeatureFusion(num_inputs, fusion)
        self.conv = SeparableConv(channels, channels)
        self.bn = _bn(channels)

    def forward(self, inputs):
        return self.bn(self.conv(F.silu(self.fuse(inputs))))


def _resample(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1), _bn(cout))


def _up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


def _down(x, like):
    y = F.max_pool2d(x, 3, 2, padding=1)  # "SAME" max-pool: ceil(H / 2)
    return y if y.shape[-2:] == like.shape[-2:] else F.interpolate(y, size=like.shape[-2:], mode="nearest")


class BiFPNLayer(nn.Module):
    """One BiFPN layer over P3–P7. The first layer also owns the 1×1 convs that bring the
    backbone's P3–P5 to the BiFPN width (separate ones for the second use of P4 and P5)."""

    def __init__(self, channels: int, fusion: str, backbone_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.first = backbone_channels is not None
        if self.first:
            c3, c4, c5 = backbone_channels
            self.p3_in, self.p4_in, self.p5_in = _resample(c3, channels), _resample(c4, channels), _resample(c5, channels)
            self.p4_in_2, self.p5_in_2 = _resample(c4, channels), _resample(c5, channels)
        n = lambda k: FusionNode(channels, k, fusion)  # noqa: E731
        self.p6_td, self.p5_td, self.p4_td, self.p3_out = n(2), n(2), n(2), n(2)
        self.p4_out, self.p5_out, self.p6_out, self.p7_out = n(3), n(3), n(3), n(2)

    def forward(self, feats):
        p3, p4, p5, p6, p7 = feats
        p4_b, p5_b = p4, p5
        if self.first:
            p4_b, p5_b = self.p4_in_2(p4), self.p5_in_2(p5)
            p3, p4, p5 = self.p3_in(p3), self.p4_in(p4), self.p5_in(p5)
        p6_td = self.p6_td([p6, _up(p7, p6)])
        p5_td = self.p5_td([p5, _up(p6_td, p5)])
        p4_td = self.p4_td([p4, _up(p5_td, p4)])
        p3_out = self.p3_out([p3, _up(p4_td, p3)])
        p4_out = self.p4_out([p4_b, p4_td, _down(p3_out, p4)])
        p5_out = self.p5_out([p5_b, p5_td, _down(p4_out, p5)])
        p6_out = self.p6_out([p6, p6_td, _down(p5_out, p6)])
        p7_out = self.p7_out([p7, _down(p6_out, p7)])
        return [p3_out, p4_out, p5_out, p6_out, p7_out]


class BiFPN(nn.Sequential):
    def __init__(self, channels: int, num_layers: int, fusion: str, backbone_channels: Sequence[int]) -> None:
        super().__init__(*[BiFPNLayer(channels, fusion, backbone_channels if i == 0 else None) for i in range(num_layers)])


class Head(nn.Module):
    """Shared separable convs with a separate BN per level, then the prediction conv."""

    def __init__(self, channels: int, num_layers: int, out_per_anchor: int, prior_bias: float = 0.0) -> None:
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv(channels, channels) for _ in range(num_layers))
        self.bns = nn.ModuleList(nn.ModuleList(_bn(channels) for _ in range(num_layers)) for _ in LEVELS)
        self.predict = SeparableConv(channels, NUM_ANCHORS * out_per_anchor)
        nn.init.constant_(self.predict[1].bias, prior_bias)

    def forward(self, feats):
        outs = []
        for level, x in enumerate(feats):
            for conv, bn in zip(self.convs, self.bns[level]):
                x = F.silu(bn(conv(x)))
            outs.append(self.predict(x))
        return outs


class EfficientDet(nn.Module):
    """Input ``(B, 3, S, S)``, S divisible by 128 (= 2^7, the P7 stride), ImageNet-normalised.

    Output ``(class_outputs, box_outputs)``: per level P3–P7, ``(B, 9·C, S/2^l, S/2^l)`` class
    logits and ``(B, 9·4, …)`` box deltas; :func:`flatten_outputs` gives ``(B, N, C)``, ``(B, N, 4)``
    in the order of :func:`generate_anchors`.
    """

    def __init__(
        self,
        num_classes: int = 90,
        backbone: str | tuple[float, float] = "b0",
        image_size: int = 512,
        fpn_channels: int = 64,
        fpn_layers: int = 3,
        head_layers: int = 3,
        fusion: str = "fast",
        anchor_scale: float = 4.0,
        drop_connect: float = 0.2,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            if backbone not in EFFICIENTNET_SCALING:
                raise ValueError(f"unknown backbone {backbone!r}; choose one of {list(EFFICIENTNET_SCALING)}")
            width, depth, _ = EFFICIENTNET_SCALING[backbone]
        else:
            width, depth = backbone
        self.num_classes, self.image_size, self.anchor_scale = num_classes, image_size, anchor_scale
        self.backbone = EfficientNetBackbone(width, depth, drop_connect)
        c5 = self.backbone.out_channels[2]
        self.p6_resample = _resample(c5, fpn_channels)
        self.bifpn = BiFPN(fpn_channels, fpn_layers, fusion, self.backbone.out_channels)
        self.class_net = Head(fpn_channels, head_layers, num_classes, prior_bias=-math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
        self.box_net = Head(fpn_channels, head_layers, 4)

    def forward(self, images: torch.Tensor):
        if images.shape[-1] % 128 or images.shape[-2] % 128:
            raise ValueError(f"EfficientDet input sides must be divisible by 128 (the P7 stride), got {tuple(images.shape[-2:])}")
        p3, p4, p5 = self.backbone(images)
        p6 = F.max_pool2d(self.p6_resample(p5), 3, 2, padding=1)
        p7 = F.max_pool2d(p6, 3, 2, padding=1)
        feats = self.bifpn([p3, p4, p5, p6, p7])
        return self.class_net(feats), self.box_net(feats)


def flatten_outputs(level_outputs: list[torch.Tensor], per_anchor: int) -> torch.Tensor:
    """``[(B, 9·K, h, w)]`` per level → ``(B, Σ h·w·9, K)``, rows ordered level, y, x, anchor."""
    return torch.cat([o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, per_anchor) for o in level_outputs], dim=1)


def generate_anchors(feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], anchor_scale: float = 4.0, device=None) -> torch.Tensor:
    """Anchors ``(Σ h·w·9, 4)`` xyxy in pixels for levels P3–P7, matching :func:`flatten_outputs`.

    Per location 3 octave scales × 3 aspect ratios (scale-major); side = anchor_scale·stride·scale;
    centres at ``stride/2 + k·stride``.
    """
    img_h, img_w = image_size
    all_anchors = []
    for (h, w) in feature_sizes:
        sy, sx = img_h / h, img_w / w
        cy = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * sy
        cx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * sx
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        half = []
        for scale in OCTAVE_SCALES:
            for ax, ay in ASPECT_RATIOS:
                base = anchor_scale * sx * scale
                half.append((base * ax / 2, anchor_scale * sy * scale * ay / 2))
        half_t = torch.tensor(half, device=device, dtype=torch.float32)  # (9, 2)
        centres = torch.stack([cx, cy], dim=-1)[:, :, None, :]  # (h, w, 1, 2)
        boxes = torch.cat([centres - half_t, centres + half_t], dim=-1)  # (h, w, 9, 4)
        all_anchors.append(boxes.reshape(-1, 4))
    return torch.cat(all_anchors)


def encode_boxes(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Faster-RCNN deltas without scale factors: ``((x−xa)/wa, (y−ya)/ha, log(w/wa), log(h/ha))``."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    gw, gh = (gt[:, 2] - gt[:, 0]).clamp_min(1e-6), (gt[:, 3] - gt[:, 1]).clamp_min(1e-6)
    gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
    return torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], dim=1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: deltas ``(…, 4)`` → xyxy boxes."""
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    cx, cy = deltas[..., 0] * aw + ax, deltas[..., 1] * ah + ay
    w, h = torch.exp(deltas[..., 2]) * aw, torch.exp(deltas[..., 3]) * ah
    return cxcywh_to_xyxy(torch.stack([cx, cy, w, h], dim=-1))


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 1.5) -> torch.Tensor:
    """Element-wise sigmoid focal loss ``α_t·(1−p_t)^γ·CE`` (not reduced). Computed from logits
    with ``binary_cross_entropy_with_logits``: clamped probabilities overflow in fp16 (pitfall E2)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = targets * p + (1 - targets) * (1 - p)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    return alpha_t * (1 - p_t) ** gamma * ce


def match_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Index of the matched ground truth for each anchor, or −1 (negative).

    IoU ≥ threshold → positive, else negative (no ignore band); then every ground truth is
    force-matched to its best anchor, so no object is left without a positive.
    """
    if len(gt_boxes) == 0:
        return torch.full((len(anchors),), -1, dtype=torch.long, device=anchors.device)
    iou = box_iou(anchors, gt_boxes)  # (A, G)
    best_iou, best_gt = iou.max(dim=1)
    matched = torch.where(best_iou >= threshold, best_gt, torch.full_like(best_gt, -1))
    matched[iou.argmax(dim=0)] = torch.arange(len(gt_boxes), device=anchors.device)
    return matched


class EfficientDetLoss(nn.Module):
    """``forward((class_outputs, box_outputs), targets)``; ``targets`` ``(N, 6)`` rows
    ``[image_index, class, cx, cy, w, h]`` normalised to [0, 1] (the same format as YOLOv3)."""

    def __init__(self, num_classes: int, anchor_scale: float = 4.0, alpha: float = 0.25, gamma: float = 1.5, delta: float = 0.1, box_weight: float = 50.0, match_threshold: float = 0.5) -> None:
        super().__init__()
        self.num_classes, self.anchor_scale = num_classes, anchor_scale
        self.alpha, self.gamma, self.delta, self.box_weight, self.match_threshold = alpha, gamma, delta, box_weight, match_threshold

    def forward(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        c = self.components(outputs, targets)
        return c["class"] + self.box_weight * c["box"]

    def components(self, outputs, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        class_outs, box_outs = outputs
        cls_logits = flatten_outputs(class_outs, self.num_classes).float()  # (B, N, C); fp32 loss under AMP
        box_deltas = flatten_outputs(box_outs, 4).float()  # (B, N, 4)
        batch = cls_logits.shape[0]
        sizes = [tuple(o.shape[-2:]) for o in class_outs]
        image_size = (sizes[0][0] * 8, sizes[0][1] * 8)
        anchors = generate_anchors(sizes, image_size, self.anchor_scale, cls_logits.device)
        if len(anchors) != cls_logits.shape[1]:
            raise ValueError(f"{len(anchors)} anchors but {cls_logits.shape[1]} predictions: num_classes mismatch?")
        targets = targets.to(cls_logits.device, torch.float32)
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be (N, 6) rows [image_index, class, cx, cy, w, h], got {tuple(targets.shape)}")
        if len(targets) and (targets[:, 1].max() >= self.num_classes or targets[:, 1].min() < 0):
            raise ValueError(f"target class ids must be in 0..{self.num_classes - 1}")
        if len(targets) and (targets[:, 2:].min() < 0 or targets[:, 2:].max() > 1):
            raise ValueError("target boxes must be normalised to [0, 1] (cx, cy, w, h as fractions of the image)")
        scale = targets.new_tensor([image_size[1], image_size[0]] * 2)
        cls_target = torch.zeros_like(cls_logits)
        box_target = torch.zeros_like(box_deltas)
        positive = torch.zeros(cls_logits.shape[:2], dtype=torch.bool, device=cls_logits.device)
        for img in range(batch):
            t = targets[targets[:, 0] == img]
            gt = cxcywh_to_xyxy(t[:, 2:6] * scale)
            matched = match_anchors(anchors, gt, self.match_threshold)
            pos = matched >= 0
            positive[img] = pos
            cls_target[img, pos, t[matched[pos], 1].long()] = 1.0
            box_target[img, pos] = encode_boxes(gt[matched[pos]], anchors[pos])
        num_pos = positive.sum().float() + 1.0  # +1 as in the official loss: finite with no objects
        cls_loss = focal_loss(cls_logits, cls_target, self.alpha, self.gamma).sum() / num_pos
        huber = F.huber_loss(box_deltas[positive], box_target[positive], delta=self.delta, reduction="sum")
        return {"class": cls_loss, "box": huber / (4.0 * num_pos)}
