"""YOLOv3: full-size geometry (on the meta device), decoding and target assignment by hand,
loss edge cases, decode + NMS end to end."""

import math

import pytest
import torch

from nndoctor.zoo import create_loss, create_model
from nndoctor.zoo.yolov3 import COCO_ANCHORS, YOLOv3Loss, build_targets, decode_outputs, non_max_suppression


def test_full_size_outputs_at_416_are_13_26_52_maps_of_255_channels_and_10647_boxes():
    with torch.device("meta"):
        model = create_model("yolov3")  # C = 80, 416 px
        outputs = model.eval()(torch.zeros(1, 3, 416, 416))
        decoded = model.decode(outputs)
    assert [tuple(o.shape) for o in outputs] == [(1, 255, 13, 13), (1, 255, 26, 26), (1, 255, 52, 52)]
    assert tuple(decoded.shape) == (1, 10_647, 85)  # paper: 10,647 boxes at 416


def test_full_size_anchors_are_the_coco_ones_in_pixels():
    with torch.device("meta"):
        model = create_model("yolov3")
    assert model.anchors == [tuple(map(float, a)) for a in COCO_ANCHORS]
    coarse, mid, fine = model.anchors_per_scale()
    assert coarse.tolist() == [[116, 90], [156, 198], [373, 326]]  # stride 32 gets the largest
    assert fine.tolist() == [[10, 13], [16, 30], [33, 23]]


def test_image_size_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        create_model("yolov3", size="tiny", image_size=100)


def test_decode_by_hand():
    # One scale, 2×2 grid, stride 32, C = 1: channels = 3·(5+1) = 18.
    raw = torch.zeros(1, 18, 2, 2)
    anchors = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]])
    a, row, col = 1, 1, 0
    base = a * 6
    raw[0, base + 0, row, col] = math.log(3)  # σ = 0.75
    raw[0, base + 2, row, col] = math.log(2)  # e^tw = 2
    raw[0, base + 4, row, col] = 2.0  # objectness logit
    decoded = decode_outputs([raw], [anchors], [32])
    assert decoded.shape == (1, 12, 6)
    box = decoded[0, a * 4 + row * 2 + col]  # rows: anchor, then y, then x
    assert box[0].item() == pytest.approx((0.75 + col) * 32)  # b_x = (σ(t_x) + c_x)·s = 24
    assert box[1].item() == pytest.approx((0.5 + row) * 32)  # b_y = 48
    assert box[2].item() == pytest.approx(30 * 2)  # b_w = p_w·e^{t_w}
    assert box[3].item() == pytest.approx(40)
    assert box[4].item() == pytest.approx(1 / (1 + math.exp(-2)))
    assert box[5].item() == pytest.approx(0.5)  # class: independent sigmoid of 0
    # an untouched cell: centre of its cell, anchor size
    other = decoded[0, 0]
    assert other[:4].tolist() == pytest.approx([16, 16, 10, 20])


def test_class_scores_are_independent_sigmoids_not_softmax():
    raw = torch.zeros(1, 3 * (5 + 3), 1, 1)
    raw[0, 5:8, 0, 0] = torch.tensor([4.0, 4.0, 4.0])
    decoded = decode_outputs([raw], [torch.ones(3, 2)], [32])
    assert decoded[0, 0, 5:].sum().item() == pytest.approx(3 / (1 + math.exp(-4)))  # > 1: multi-label


def test_best_anchor_assignment_by_hand():
    anchors = [torch.tensor(COCO_ANCHORS[6:], dtype=torch.float32), torch.tensor(COCO_ANCHORS[3:6], dtype=torch.float32), torch.tensor(COCO_ANCHORS[:3], dtype=torch.float32)]
    s = 416.0
    targets = torch.tensor([
        [0, 2, 0.5, 0.5, 116 / s, 90 / s],   # exactly anchor 6 → coarse scale, anchor 0, cell (6, 6)
        [1, 0, 1.0, 0.25, 10 / s, 13 / s],   # exactly anchor 0 → fine scale; cx = 1 → last column
        [0, 1, 0.3, 0.7, 60 / s, 50 / s],    # best wh-IoU: 62×45 → mid scale, anchor 1
    ])  # fmt: skip
    per_scale = build_targets(targets, [(13, 13), (26, 26), (52, 52)], anchors, (416, 416))
    b, a, gj, gi, t_xy, t_wh, cls, scale = per_scale[0]
    assert (b.tolist(), a.tolist(), gj.tolist(), gi.tolist(), cls.tolist()) == ([0], [0], [6], [6], [2])
    assert t_xy[0].tolist() == pytest.approx([0.5, 0.5])
    assert t_wh.abs().max().item() < 1e-6  # log(g/anchor) = 0
    assert scale.item() == pytest.approx(2 - (116 / s) * (90 / s))
    b, a, gj, gi, t_xy, *_ = per_scale[2]
    assert (b.tolist(), a.tolist(), gj.tolist(), gi.tolist()) == ([1], [0], [13], [51])
    assert t_xy[0, 0].item() == pytest.approx(1.0)  # clamped into the last cell
    b, a, gj, gi, t_xy, t_wh, *_ = per_scale[1]
    assert (a.tolist(), gj.tolist(), gi.tolist()) == ([1], [int(0.7 * 26)], [int(0.3 * 26)])
    assert t_wh[0].tolist() == pytest.approx([math.log(60 / 62), math.log(50 / 45)], rel=1e-5)


def _tiny():
    torch.manual_seed(0)
    model = create_model("yolov3-tiny-test")
    return model, create_loss("yolov3-tiny-test", model=model)


def test_loss_with_no_objects_is_finite_objectness_only():
    model, loss_fn = _tiny()
    outputs = model(torch.rand(2, 3, 96, 96))
    parts = loss_fn.components(outputs, torch.zeros(0, 6))
    assert parts["box"].item() == 0 and parts["class"].item() == 0
    assert parts["objectness"].item() > 0 and torch.isfinite(parts["objectness"])


def test_prior_bias_gives_a_small_initial_objectness():
    model, _ = _tiny()
    with torch.no_grad():
        decoded = model.eval().decode(model(torch.rand(1, 3, 96, 96)))
    assert decoded[..., 4].mean().item() < 0.05  # about 0.01, not 0.5


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.tensor([[0, 5, 0.5, 0.5, 0.1, 0.1]]), "class ids"),  # 3 classes in the tiny config
        (torch.tensor([[0, 1, 48.0, 48.0, 10.0, 10.0]]), "normalised"),  # pixels, not fractions
        (torch.tensor([[3, 1, 0.5, 0.5, 0.1, 0.1]]), "image indices"),
        (torch.tensor([[0, 1, 0.5, 0.5]]), r"\(N, 6\)"),
    ],
)
def test_bad_targets_raise_a_clear_error(bad, message):
    model, loss_fn = _tiny()
    outputs = model(torch.rand(2, 3, 96, 96))
    with pytest.raises(ValueError, match=message):
        loss_fn(outputs, bad)


def test_ignored_predictions_get_no_objectness_loss():
    # A prediction that overlaps the ground truth with IoU > 0.5 but is not the assigned anchor
    # is ignored: making its objectness logit very large must not change the loss.
    loss_fn = YOLOv3Loss(COCO_ANCHORS, num_classes=1)
    raw = [torch.zeros(1, 18, 13, 13), torch.zeros(1, 18, 26, 26), torch.full((1, 18, 52, 52), -10.0)]
    for r in raw[:2]:
        r.view(1, 3, 6, *r.shape[-2:])[:, :, 4] = -10.0
    target = torch.tensor([[0, 0, 6.5 / 13, 6.5 / 13, 116 / 416, 90 / 416]])  # anchor 6, cell (6, 6)
    base = loss_fn.components(raw, target)["objectness"]
    bumped = [r.clone() for r in raw]
    # anchor 1 of the coarse scale (156×198) in the same cell: IoU with the GT 116×90 box is
    # 0.34 < 0.5 → a negative, so raising it must increase the loss …
    bumped[0].view(1, 3, 6, 13, 13)[0, 1, 4, 6, 6] = 10.0
    assert loss_fn.components(bumped, target)["objectness"] > base + 1
    # … while a prediction in the neighbouring cell whose decoded box overlaps > 0.5 is ignored.
    ignored = [r.clone() for r in raw]
    view = ignored[0].view(1, 3, 6, 13, 13)
    view[0, 0, 0, 6, 7] = -20.0  # σ → 0: box centre at the left edge of cell 7 = 7·32 px
    view[0, 0, 4, 6, 7] = 10.0
    # centre x = 224 vs GT 208: IoU = (116 − 16)·90 / (2·116·90 − 100·90) = 0.758 > 0.5
    assert loss_fn.components(ignored, target)["objectness"].item() == pytest.approx(base.item(), abs=1e-3)


def test_decode_and_nms_end_to_end_on_planted_predictions():
    raw = [torch.full((1, 3 * 6, s, s), -10.0) for s in (13, 26, 52)]
    coarse = raw[0].view(1, 3, 6, 13, 13)
    coarse[0, 0, 0:4, 4, 3] = 0.0  # centre of cell (row 4, col 3), anchor 116×90
    coarse[0, 0, 4:6, 4, 3] = 10.0  # confident object of class 0
    coarse[0, 1, 0:4, 4, 3] = 0.0  # a second, overlapping anchor (156×198)…
    coarse[0, 1, 4:6, 4, 3] = 5.0  # …less confident
    decoded = decode_outputs(raw, [torch.tensor(COCO_ANCHORS[6:], dtype=torch.float32), torch.tensor(COCO_ANCHORS[3:6], dtype=torch.float32), torch.tensor(COCO_ANCHORS[:3], dtype=torch.float32)])
    (det,) = non_max_suppression(decoded, conf_threshold=0.5, iou_threshold=0.3)
    assert det.shape == (1, 6)
    cx, cy = (3 + 0.5) * 32, (4 + 0.5) * 32
    assert det[0, :4].tolist() == pytest.approx([cx - 58, cy - 45, cx + 58, cy + 45])
    assert det[0, 5].item() == 0


def test_nms_drops_boxes_whose_size_overflowed():
    raw = [torch.full((1, 3 * 6, s, s), -10.0) for s in (13, 26, 52)]
    coarse = raw[0].view(1, 3, 6, 13, 13)
    coarse[0, 0, 2, 0, 0] = 200.0  # e^200 = inf in float32
    coarse[0, 0, 4:6, 0, 0] = 10.0
    coarse[0, 0, 4:6, 5, 5] = 10.0  # a normal confident box elsewhere
    anchors = [torch.tensor(COCO_ANCHORS[i : i + 3], dtype=torch.float32) for i in (6, 3, 0)]
    (det,) = non_max_suppression(decode_outputs(raw, anchors), conf_threshold=0.5)
    assert len(det) == 1 and torch.isfinite(det).all()
