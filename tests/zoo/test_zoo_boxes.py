"""IoU and greedy NMS against hand computations."""

import math

import pytest
import torch

from nndoctor.zoo.boxes import batched_nms, box_iou, cxcywh_to_xyxy, nms, wh_iou, xyxy_to_cxcywh


def test_iou_of_two_offset_squares_is_one_seventh():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    # intersection 1×1 = 1, union 4 + 4 − 1 = 7
    assert box_iou(a, b).item() == pytest.approx(1 / 7)


def test_iou_pairwise_shape_identity_and_disjoint():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 12.0, 13.0]])
    iou = box_iou(boxes, boxes)
    assert iou.shape == (2, 2)
    assert torch.allclose(iou.diag(), torch.ones(2))
    assert iou[0, 1] == 0


def test_iou_with_zero_area_box_is_zero_not_nan():
    degenerate = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(degenerate, degenerate).item() == 0.0


def test_wh_iou_of_centred_boxes():
    # 10×13 vs 16×30: intersection 10×13 = 130, union 130 + 480 − 130 = 480
    assert wh_iou(torch.tensor([[10.0, 13.0]]), torch.tensor([[16.0, 30.0]])).item() == pytest.approx(130 / 480)


def test_box_format_round_trip():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert torch.equal(xyxy_to_cxcywh(xyxy), torch.tensor([[3.0, 6.0, 4.0, 8.0]]))
    assert torch.equal(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)


def test_nms_suppresses_the_overlapping_lower_score_box():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 81 / (100 + 100 − 81) = 0.68 > 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]


def test_nms_returns_indices_by_descending_score_and_keeps_the_best():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.3, 0.95, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]


def test_nms_threshold_is_strict():
    # IoU exactly 0.5: intersection 2, union 4
    boxes = torch.tensor([[0.0, 0.0, 3.0, 1.0], [1.0, 0.0, 4.0, 1.0]])
    iou = box_iou(boxes[:1], boxes[1:]).item()
    assert iou == pytest.approx(0.5)
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.49).tolist() == [0]


def test_nms_chain_a_suppressed_box_does_not_suppress_others():
    # A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.3).tolist() == [0, 2]


def test_nms_empty_input():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_batched_nms_never_suppresses_across_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    classes = torch.tensor([0, 1, 0])
    assert sorted(batched_nms(boxes, scores, classes, 0.5).tolist()) == [0, 1]


def test_nms_matches_brute_force_on_random_boxes():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(60, 2, generator=g) * 50
    wh = torch.rand(60, 2, generator=g) * 20 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(60, generator=g)
    kept = nms(boxes, scores, 0.4).tolist()
    # reference: the definition, written the slow way
    order = sorted(range(60), key=lambda i: -scores[i].item())
    ref = []
    for i in order:
        if all(box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= 0.4 for j in ref):
            ref.append(i)
    assert kept == ref
    assert not math.isnan(sum(kept))
