"""Box utilities shared by the detection workloads: format conversion, IoU, greedy NMS.

Written from the definitions (no torchvision): IoU = |A ∩ B| / |A ∪ B|; greedy non-maximum
suppression keeps the highest-scoring box, drops every remaining box whose IoU with it exceeds
the threshold, and repeats (Neubeck & Van Gool, "Efficient Non-Maximum Suppression", 2006).

Boxes are ``xyxy`` (x1, y1, x2, y2) unless a name says ``cxcywh``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["cxcywh_to_xyxy", "xyxy_to_cxcywh", "box_area", "box_iou", "wh_iou", "nms", "batched_nms"]

IOU_EPS = 1e-9  # keeps 0-area boxes from giving 0/0 = NaN (YOLOv3 pitfall Y1)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a`` ``(N, 4)`` and ``b`` ``(M, 4)`` → ``(N, M)``."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(dim=-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / (union + IOU_EPS)


def wh_iou(wh_a: torch.Tensor, wh_b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes that share a centre, from widths/heights ``(N, 2)``, ``(M, 2)`` → ``(N, M)``."""
    inter = torch.minimum(wh_a[:, None], wh_b[None]).prod(dim=-1)
    return inter / (wh_a.prod(dim=-1)[:, None] + wh_b.prod(dim=-1)[None] - inter + IOU_EPS)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS. Returns the indices of the kept boxes, highest score first.

    A box is suppressed when its IoU with an already-kept box is *strictly* greater than
    ``iou_threshold``.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]  # only later (lower-score) entries matter from here on
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each class only: boxes of different classes never suppress each other.

    Each class's boxes are shifted by a class-specific offset larger than every coordinate, so
    boxes of two classes cannot overlap, and one NMS pass does them all.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset[:, None], scores, iou_threshold)
