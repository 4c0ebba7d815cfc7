"""YOLOv3: Darknet-53 backbone, 3-scale head, anchor decoding, loss, NMS.

Redmon & Farhadi, "YOLOv3: An Incremental Improvement", arXiv:1804.02767, 2018 (and the darknet
``yolov3.cfg``). Each of the three scales (strides 32, 16, 8) predicts, per cell and per each of
its 3 anchors, ``t_x, t_y, t_w, t_h``, an objectness logit and C independent class logits. Boxes
decode as ``b_x = (σ(t_x) + c_x)·s``, ``b_y = (σ(t_y) + c_y)·s``, ``b_w = p_w·e^{t_w}``,
``b_h = p_h·e^{t_h}`` with the anchor priors p in input pixels. Class scores are independent
sigmoids (multi-label), not a softmax.

Loss (the paper / darknet semantics — variant (a) in the reference notes): each ground truth is
assigned to the single anchor of the 9 with the best width-height IoU, in the cell holding its
centre; squared error on (σ(t_x), σ(t_y), t_w, t_h) scaled by ``2 − w·h``; objectness BCE with
target 1 on assigned anchors and 0 elsewhere, except predictions overlapping some ground truth
by IoU > 0.5 get no objectness loss; per-class BCE on assigned anchors. Sums, divided by the
batch size.

Full size at 416×416, C = 80: outputs 13×13, 26×26, 52×52 maps of 3·(5+80) = 255 channels,
10,647 boxes, 61,949,149 parameters (the paper/ultralytics "61.9M"; Darknet-53 trunk 40,584,928).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .boxes import batched_nms, box_iou, cxcywh_to_xyxy, wh_iou

__all__ = [
    "YOLOv3",
    "Darknet53",
    "YOLOv3Loss",
    "decode_outputs",
    "non_max_suppression",
    "build_targets",
    "COCO_ANCHORS",
    "ANCHOR_MASKS",
    "STRIDES",
    "CONFIGS",
]

# k-means anchors on COCO (w, h) in input pixels at 416 (yolov3.cfg).
COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
# Output order is coarse → fine: stride 32 uses the 3 largest anchors, stride 8 the smallest.
ANCHOR_MASKS = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
STRIDES = (32, 16, 8)
NUM_ANCHORS_PER_SCALE = 3

CONFIGS = {
    "tiny": {"num_classes": 3, "width": 8, "blocks": (1, 1, 1, 1, 1), "image_size": 96},
    "full": {"num_classes": 80, "width": 32, "blocks": (1, 2, 8, 8, 4), "image_size": 416},
}


class ConvBNLeaky(nn.Sequential):
    """Darknet's conv unit: Conv (no bias) → BN → LeakyReLU(0.1), 'same' padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


class DarknetResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = ConvBNLeaky(channels, channels // 2, 1)
        self.expand = ConvBNLeaky(channels // 2, channels, 3)

    def forward(self, x):
        return x + self.expand(self.reduce(x))


class Darknet53(nn.Module):
    """Stem + 5 stages (stride-2 conv then residual blocks). Returns the stride-8, -16 and -32 maps."""

    def __init__(self, width: int = 32, blocks: Sequence[int] = (1, 2, 8, 8, 4)) -> None:
        super().__init__()
        if len(blocks) != 5:
            raise ValueError(f"Darknet53 needs 5 stage block counts, got {tuple(blocks)}")
        self.stem = ConvBNLeaky(3, width, 3)
        stages = []
        cin = width
        for n in blocks:
            cout = cin * 2
            stages.append(nn.Sequential(ConvBNLeaky(cin, cout, 3, 2), *[DarknetResidual(cout) for _ in range(n)]))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.channels = (width * 8, width * 16, width * 32)  # C3, C4, C5

    def forward(self, x):
        x = self.stem(x)
        taps = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                taps.append(x)
        return taps  # [C3 (stride 8), C4 (stride 16), C5 (stride 32)]


def _five_convs(cin: int, mid: int) -> nn.Sequential:
    """1×1 mid → 3×3 2·mid → 1×1 mid → 3×3 2·mid → 1×1 mid."""
    return nn.Sequential(
        ConvBNLeaky(cin, mid, 1), ConvBNLeaky(mid, mid * 2, 3),
        ConvBNLeaky(mid * 2, mid, 1), ConvBNLeaky(mid, mid * 2, 3),
        ConvBNLeaky(mid * 2, mid, 1),
    )  # fmt: skip


class YOLOv3(nn.Module):
    """Input ``(B, 3, S, S)`` with S a multiple of 32, scaled to [0, 1].

    Output: the three raw maps ``[(B, 3·(5+C), S/32, S/32), (…, S/16, S/16), (…, S/8, S/8)]``,
    channels ordered anchor-major, then ``t_x, t_y, t_w, t_h, obj, cls_1 … cls_C``. Use
    :meth:`decode` for boxes and :func:`non_max_suppression` for detections.
    """

    def __init__(
        self,
        num_classes: int = 80,
        width: int = 32,
        blocks: Sequence[int] = (1, 2, 8, 8, 4),
        image_size: int = 416,
        anchors: Sequence[Sequence[float]] | None = None,
        prior_bias: bool = True,
    ) -> None:
        super().__init__()
        if image_size % 32:
            raise ValueError(f"YOLOv3 image_size must be a multiple of 32, got {image_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.image_size = num_classes, image_size
        if anchors is None:  # COCO anchors, rescaled to this input size
            anchors = [(w * image_size / 416, h * image_size / 416) for w, h in COCO_ANCHORS]
        if len(anchors) != 9:
            raise ValueError(f"YOLOv3 needs 9 anchors (3 per scale), got {len(anchors)}")
        self.anchors = [tuple(float(v) for v in a) for a in anchors]
        self.backbone = Darknet53(width, blocks)
        c3, c4, c5 = self.backbone.channels
        out_ch = NUM_ANCHORS_PER_SCALE * (5 + num_classes)
        w = width
        self.set5 = _five_convs(c5, 16 * w)
        self.out5 = nn.Sequential(ConvBNLeaky(16 * w, 32 * w, 3), nn.Conv2d(32 * w, out_ch, 1))
        self.route5 = ConvBNLeaky(16 * w, 8 * w, 1)
        self.set4 = _five_convs(8 * w + c4, 8 * w)
        self.out4 = nn.Sequential(ConvBNLeaky(8 * w, 16 * w, 3), nn.Conv2d(16 * w, out_ch, 1))
        self.route4 = ConvBNLeaky(8 * w, 4 * w, 1)
        self.set3 = _five_convs(4 * w + c3, 4 * w)
        self.out3 = nn.Sequential(ConvBNLeaky(4 * w, 8 * w, 3), nn.Conv2d(8 * w, out_ch, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
        if prior_bias:
            self._init_prior_bias()

    def _init_prior_bias(self) -> None:
        # Not in the paper: ultralytics' "smart bias" (pitfall Y5). With a zero bias each of the
        # ~10k negatives starts at p = 0.5 (BCE 0.69); instead start objectness at about 8
        # objects per image (capped at p = 0.01: on tiny inputs a scale has only a few cells)
        # and classes at p ≈ 0.6/C.
        for head, stride in zip((self.out5, self.out4, self.out3), STRIDES):
            conv = head[-1]
            p_obj = min(0.01, 8 / (self.image_size / stride) ** 2)
            with torch.no_grad():
                b = conv.bias.view(NUM_ANCHORS_PER_SCALE, -1)
                b.zero_()
                b[:, 4] = math.log(p_obj / (1 - p_obj))
                b[:, 5:] = math.log(0.6 / max(self.num_classes - 0.99, 0.01))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3, c4, c5 = self.backbone(x)
        p5 = self.set5(c5)
        up5 = F.interpolate(self.route5(p5), scale_factor=2, mode="nearest")
        p4 = self.set4(torch.cat([up5, c4], dim=1))  # (B, 8w + C4, S/16, S/16) in
        up4 = F.interpolate(self.route4(p4), scale_factor=2, mode="nearest")
        p3 = self.set3(torch.cat([up4, c3], dim=1))  # (B, 4w + C3, S/8, S/8) in
        return [self.out5(p5), self.out4(p4), self.out3(p3)]

    def anchors_per_scale(self) -> list[torch.Tensor]:
        """Anchor (w, h) in pixels for each output, coarse → fine: ``[(3, 2)] * 3``."""
        table = torch.tensor(self.anchors)
        return [table[list(mask)] for mask in ANCHOR_MASKS]

    def decode(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        return decode_outputs(outputs, self.anchors_per_scale(), STRIDES)


def _split(raw: torch.Tensor) -> torch.Tensor:
    """``(B, 3·(5+C), h, w)`` → ``(B, 3, h, w, 5+C)``."""
    b, ch, h, w = raw.shape
    if ch % NUM_ANCHORS_PER_SCALE:
        raise ValueError(f"YOLO output has {ch} channels, not a multiple of 3 anchors")
    return raw.view(b, NUM_ANCHORS_PER_SCALE, ch // NUM_ANCHORS_PER_SCALE, h, w).permute(0, 1, 3, 4, 2)


def decode_outputs(outputs: list[torch.Tensor], anchors: list[torch.Tensor], strides: Sequence[int] = STRIDES) -> torch.Tensor:
    """Raw maps → ``(B, Σ 3·h·w, 5+C)``: ``cx, cy, w, h`` in input pixels, objectness and class
    probabilities (sigmoids). Rows go scale by scale (coarse first), then anchor, row, column."""
    decoded = []
    for raw, anchor_wh, stride in zip(outputs, anchors, strides):
        p = _split(raw.float())  # (B, 3, h, w, 5+C)
        _, _, h, w, _ = p.shape
        gy, gx = torch.meshgrid(torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij")
        wh = anchor_wh.to(p)[None, :, None, None, :]  # (1, 3, 1, 1, 2)
        cx = (torch.sigmoid(p[..., 0]) + gx) * stride
        cy = (torch.sigmoid(p[..., 1]) + gy) * stride
        bwh = wh * torch.exp(p[..., 2:4])
        rest = torch.sigmoid(p[..., 4:])
        box = torch.cat([cx[..., None], cy[..., None], bwh, rest], dim=-1)
        decoded.append(box.reshape(p.shape[0], -1, p.shape[-1]))
    return torch.cat(decoded, dim=1)


def non_max_suppression(
    decoded: torch.Tensor, conf_threshold: float = 0.25, iou_threshold: float = 0.45, max_detections: int = 300
) -> list[torch.Tensor]:
    """Per image: score = objectness × class probability; every (box, class) with score above
    ``conf_threshold`` is a candidate (multi-label); class-wise greedy NMS. Boxes with a
    non-finite coordinate are never candidates.

    Returns one ``(n, 6)`` tensor per image: ``x1, y1, x2, y2, score, class``.
    """
    results = []
    for det in decoded:
        scores = det[:, 4:5] * det[:, 5:]  # (N, C)
        # non-finite boxes (e^{t_w} overflows in an untrained or diverged model) are dropped, not ranked
        finite = torch.isfinite(det[:, :4]).all(dim=1, keepdim=True)
        box_idx, cls = torch.nonzero((scores > conf_threshold) & finite, as_tuple=True)
        boxes = cxcywh_to_xyxy(det[box_idx, :4])
        s = scores[box_idx, cls]
        keep = batched_nms(boxes, s, cls, iou_threshold)[:max_detections]
        results.append(torch.cat([boxes[keep], s[keep, None], cls[keep, None].to(boxes)], dim=1))
    return results


def _check_targets(targets: torch.Tensor, batch_size: int, num_classes: int) -> None:
    if targets.dim() != 2 or targets.shape[1] != 6:
        raise ValueError(f"targets must be (N, 6) rows [image_index, class, cx, cy, w, h], got {tuple(targets.shape)}")
    if len(targets) == 0:
        return
    if targets[:, 0].min() < 0 or targets[:, 0].max() >= batch_size:
        raise ValueError(f"target image indices must be in 0..{batch_size - 1}")
    if targets[:, 1].min() < 0 or targets[:, 1].max() >= num_classes:
        raise ValueError(f"target class ids must be in 0..{num_classes - 1}, got max {int(targets[:, 1].max())}")
    box = targets[:, 2:]
    if box.min() < 0 or box.max() > 1:
        raise ValueError(
            "target boxes must be normalised to [0, 1] (cx, cy, w, h as fractions of the image), "
            f"got values in [{float(box.min()):.3g}, {float(box.max()):.3g}] — pixel coordinates?"
        )


def build_targets(targets: torch.Tensor, grid_sizes: Sequence[tuple[int, int]], anchors: list[torch.Tensor], image_size: tuple[int, int]):
    """Assign each ground truth to its best anchor of all 9 (width-height IoU).

    Returns, for each scale, a tuple ``(b, a, gj, gi, t_xy, t_wh_log, cls, box_scale)`` of
    the assigned positions and regression targets (``t_xy`` in-cell offsets, ``t_wh_log`` =
    ``log(g_wh / anchor_wh)``, ``box_scale = 2 − w·h`` with w, h normalised).
    """
    all_anchors = torch.cat(anchors).to(targets)  # (9, 2) pixels, scales coarse → fine
    img_h, img_w = image_size
    gt_wh = targets[:, 4:6] * targets.new_tensor([img_w, img_h])
    best = wh_iou(gt_wh, all_anchors).argmax(dim=1) if len(targets) else torch.empty(0, dtype=torch.long)
    per_scale = []
    for s, (h, w) in enumerate(grid_sizes):
        sel = (best // NUM_ANCHORS_PER_SCALE) == s
        t = targets[sel]
        a = best[sel] % NUM_ANCHORS_PER_SCALE
        gxy = t[:, 2:4] * t.new_tensor([w, h])
        # clamp: a centre exactly on the right/bottom edge (cx = 1) belongs to the last cell
        gi = gxy[:, 0].long().clamp(0, w - 1)
        gj = gxy[:, 1].long().clamp(0, h - 1)
        t_xy = gxy - torch.stack([gi, gj], dim=1).to(gxy)
        t_wh = torch.log(gt_wh[sel] / anchors[s].to(t)[a] + 1e-16)
        box_scale = 2.0 - t[:, 4] * t[:, 5]
        per_scale.append((t[:, 0].long(), a, gj, gi, t_xy, t_wh, t[:, 1].long(), box_scale))
    return per_scale


class YOLOv3Loss(nn.Module):
    """``forward(outputs, targets)`` with ``targets`` ``(N, 6)`` rows ``[image_index, class, cx, cy, w, h]``,
    box coordinates normalised to [0, 1]. Returns the total; :meth:`components` gives the terms."""

    def __init__(self, anchors: Sequence[Sequence[float]], num_classes: int, ignore_threshold: float = 0.5, strides: Sequence[int] = STRIDES) -> None:
        super().__init__()
        table = torch.tensor([tuple(map(float, a)) for a in anchors])
        self.anchors = [table[list(m)] for m in ANCHOR_MASKS]
        self.num_classes, self.ignore_threshold, self.strides = num_classes, ignore_threshold, tuple(strides)

    def forward(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        c = self.components(outputs, targets)
        return c["box"] + c["objectness"] + c["class"]

    def components(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        preds = [_split(o.float()) for o in outputs]  # each (B, 3, h, w, 5+C)
        batch = preds[0].shape[0]
        if preds[0].shape[-1] != 5 + self.num_classes:
            raise ValueError(f"outputs carry {preds[0].shape[-1] - 5} classes, the loss was built for {self.num_classes}")
        targets = targets.to(preds[0].device, torch.float32)
        _check_targets(targets, batch, self.num_classes)
        h0, w0 = preds[0].shape[2:4]
        image_size = (h0 * self.strides[0], w0 * self.strides[0])
        assigned = build_targets(targets, [p.shape[2:4] for p in preds], self.anchors, image_size)
        gt_xyxy = cxcywh_to_xyxy(targets[:, 2:6] * targets.new_tensor([image_size[1], image_size[0]] * 2))
        box_loss = preds[0].new_zeros(())
        obj_loss = preds[0].new_zeros(())
        cls_loss = preds[0].new_zeros(())
        for p, anchor_wh, stride, (b, a, gj, gi, t_xy, t_wh, cls, scale) in zip(preds, self.anchors, self.strides, assigned):
            obj_logit = p[..., 4]
            obj_target = torch.zeros_like(obj_logit)
            obj_target[b, a, gj, gi] = 1.0
            # Ignore: predictions (detached) overlapping any ground truth of their image by
            # IoU > threshold are neither positives nor negatives for objectness.
            with torch.no_grad():
                decoded = decode_outputs([p.permute(0, 1, 4, 2, 3).flatten(1, 2)], [anchor_wh], [stride])
                boxes = cxcywh_to_xyxy(decoded[..., :4])  # (B, 3·h·w, 4)
                ignore = torch.zeros(obj_logit.numel() // batch, dtype=torch.bool, device=p.device).repeat(batch, 1)
                for img in range(batch):
                    gts = gt_xyxy[targets[:, 0] == img]
                    if len(gts):
                        ignore[img] = box_iou(boxes[img], gts).amax(dim=1) > self.ignore_threshold
                weight = (~ignore).view_as(obj_logit).float()
                weight[b, a, gj, gi] = 1.0
            obj_loss = obj_loss + (F.binary_cross_entropy_with_logits(obj_logit, obj_target, reduction="none") * weight).sum()
            if len(b):
                pos = p[b, a, gj, gi]  # (n, 5+C)
                xy_err = ((torch.sigmoid(pos[:, 0:2]) - t_xy) ** 2).sum(dim=1)
                wh_err = ((pos[:, 2:4] - t_wh) ** 2).sum(dim=1)
                box_loss = box_loss + (scale * (xy_err + wh_err)).sum()
                onehot = F.one_hot(cls, self.num_classes).to(pos)
                cls_loss = cls_loss + F.binary_cross_entropy_with_logits(pos[:, 5:], onehot, reduction="sum")
        return {"box": box_loss / batch, "objectness": obj_loss / batch, "class": cls_loss / batch}
