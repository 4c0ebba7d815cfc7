"""EfficientDet: compound-scaling table, BiFPN fusion semantics, anchors, matching, focal loss."""

import math

import pytest
import torch

from nndoctor.zoo import create_loss, create_model
from nndoctor.zoo.efficientdet import (
    COMPOUND_SCALING,
    EfficientDet,
    FeatureFusion,
    decode_boxes,
    encode_boxes,
    focal_loss,
    generate_anchors,
    match_anchors,
    round_filters,
)


def test_compound_scaling_table_matches_the_official_configs():
    # google/automl hparams_config.efficientdet_model_param_dict (the implemented table)
    expected = {
        0: (512, "b0", 64, 3, 3), 1: (640, "b1", 88, 4, 3), 2: (768, "b2", 112, 5, 3), 3: (896, "b3", 160, 6, 4),
        4: (1024, "b4", 224, 7, 4), 5: (1280, "b5", 288, 7, 4), 6: (1280, "b6", 384, 8, 5), 7: (1536, "b6", 384, 8, 5),
    }  # fmt: skip
    for phi, (res, backbone, width, d_bifpn, d_head) in expected.items():
        c = COMPOUND_SCALING[phi]
        assert (c["image_size"], c["backbone"], c["fpn_channels"], c["fpn_layers"], c["head_layers"]) == (res, backbone, width, d_bifpn, d_head)
        # the paper's D_head = 3 + ⌊φ/3⌋ holds for every row (its D_bifpn and R formulas do not for D5+)
        assert d_head == 3 + phi // 3
    assert COMPOUND_SCALING[6]["fusion"] == COMPOUND_SCALING[7]["fusion"] == "sum"
    assert COMPOUND_SCALING[7]["anchor_scale"] == 5.0


def test_round_filters_matches_efficientnet_channel_table():
    # P3/P4/P5 channels of B0…B6: (40,112,320) (48,120,352) (48,136,384) (56,160,448) (64,176,512) (72,200,576)
    widths = {1.0: (40, 112, 320), 1.1: (48, 120, 352), 1.2: (48, 136, 384), 1.4: (56, 160, 448), 1.6: (64, 176, 512), 1.8: (72, 200, 576)}
    for w, channels in widths.items():
        assert tuple(round_filters(c, w) for c in (40, 112, 320)) == channels


def test_d0_full_size_outputs_and_anchor_count_at_512():
    with torch.device("meta"):
        model = create_model("efficientdet-d0")
        class_out, box_out = model.eval()(torch.zeros(1, 3, 512, 512))
    assert [tuple(o.shape) for o in class_out] == [(1, 9 * 90, s, s) for s in (64, 32, 16, 8, 4)]
    assert [tuple(o.shape) for o in box_out] == [(1, 36, s, s) for s in (64, 32, 16, 8, 4)]
    anchors = generate_anchors([(s, s) for s in (64, 32, 16, 8, 4)], (512, 512))
    assert anchors.shape == (49_104, 4)  # 9·(64² + 32² + 16² + 8² + 4²)


def test_input_not_divisible_by_128_is_rejected():
    model = create_model("efficientdet-tiny-test")
    with pytest.raises(ValueError, match="divisible by 128"):
        model(torch.zeros(1, 3, 96, 96))


def test_class_head_starts_at_the_focal_prior():
    model = create_model("efficientdet-tiny-test")
    with torch.no_grad():
        class_out, _ = model.eval()(torch.rand(1, 3, 128, 128))
    mean_p = torch.cat([torch.sigmoid(o).flatten() for o in class_out]).mean().item()
    assert mean_p == pytest.approx(0.01, abs=0.01)
    assert model.class_net.predict[1].bias[0].item() == pytest.approx(-math.log(0.99 / 0.01))


def test_first_anchors_by_hand():
    anchors = generate_anchors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], (128, 128), anchor_scale=4.0)
    assert anchors.shape == (9 * (256 + 64 + 16 + 4 + 1), 4)
    # P3 stride 8: first location centre (4, 4); scale 1, aspect (1, 1): side 4·8 = 32
    assert anchors[0].tolist() == pytest.approx([-12.0, -12.0, 20.0, 20.0])
    # aspect (1.4, 0.7): 44.8 × 22.4
    assert anchors[1].tolist() == pytest.approx([4 - 22.4, 4 - 11.2, 4 + 22.4, 4 + 11.2])
    # scale 2^(1/3), aspect (1, 1)
    half = 16 * 2 ** (1 / 3)
    assert anchors[3].tolist() == pytest.approx([4 - half, 4 - half, 4 + half, 4 + half])
    # second location in the row: centre x = 12
    assert anchors[9].tolist() == pytest.approx([-4.0, -12.0, 28.0, 20.0])


def test_box_encoding_round_trip_and_by_hand():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 10.0, 15.0, 50.0]])
    deltas = encode_boxes(gt, anchors)
    # centres (5, 10) → (10, 30); sizes 10×20 → 10×40
    assert deltas[0].tolist() == pytest.approx([0.5, 1.0, 0.0, math.log(2)])
    assert decode_boxes(deltas, anchors)[0].tolist() == pytest.approx(gt[0].tolist())


def test_fast_normalised_fusion_by_hand():
    fuse = FeatureFusion(2, "fast")
    a, b = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 5.0)
    assert fuse([a, b])[0, 0, 0, 0].item() == pytest.approx((2 + 5) / (2 + 1e-4))
    with torch.no_grad():
        fuse.weight.copy_(torch.tensor([-1.0, 3.0]))  # ReLU → (0, 3)
    assert fuse([a, b])[0, 0, 0, 0].item() == pytest.approx(3 * 5 / (3 + 1e-4))


def test_softmax_and_sum_fusion():
    a, b = torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), 5.0)
    soft = FeatureFusion(2, "softmax")
    with torch.no_grad():
        soft.weight.copy_(torch.tensor([0.0, math.log(3)]))  # softmax → (1/4, 3/4)
    assert soft([a, b]).item() == pytest.approx(0.25 * 2 + 0.75 * 5)
    assert FeatureFusion(2, "sum")([a, b]).item() == 7.0
    assert FeatureFusion(2, "sum").weight is None
    with pytest.raises(ValueError, match="unknown fusion"):
        FeatureFusion(2, "mean")


def test_dead_fusion_node_outputs_zero_and_gets_no_gradient():
    # pitfall E3: all weights ≤ 0 → ReLU zeroes them → the node is permanently dead
    fuse = FeatureFusion(2, "fast")
    with torch.no_grad():
        fuse.weight.fill_(-0.5)
    x = torch.ones(1, 1, 2, 2, requires_grad=True)
    out = fuse([x, x * 2])
    out.sum().backward()
    assert out.abs().sum() == 0 and fuse.weight.grad.abs().sum() == 0 and x.grad.abs().sum() == 0


def test_d0_with_softmax_fusion_builds_and_has_the_same_parameter_count():
    with torch.device("meta"):
        fast = EfficientDet(fusion="fast")
        soft = EfficientDet(fusion="softmax")
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in soft.parameters())


def test_matching_thresholds_and_force_match():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [50.0, 50.0, 60.0, 60.0], [100.0, 100.0, 140.0, 140.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 11.0], [101.0, 101.0, 111.0, 111.0]])
    matched = match_anchors(anchors, gt, 0.5)
    # anchors 0 and 1 overlap GT 0 by IoU ≥ 0.5; anchor 2 is negative; GT 1 (IoU 0.0625 with
    # anchor 3, its best) is force-matched so it still has a positive
    assert matched.tolist() == [0, 0, -1, 1]
    assert match_anchors(anchors, torch.zeros(0, 4)).tolist() == [-1] * 4


def test_focal_loss_by_hand():
    logits = torch.zeros(2)
    targets = torch.tensor([1.0, 0.0])
    loss = focal_loss(logits, targets, alpha=0.25, gamma=1.5)
    # p = 0.5 → p_t = 0.5, CE = ln 2; α_t = 0.25 (positive) / 0.75 (negative)
    assert loss.tolist() == pytest.approx([0.25 * 0.5**1.5 * math.log(2), 0.75 * 0.5**1.5 * math.log(2)])
    # a confident correct prediction contributes (almost) nothing
    assert focal_loss(torch.tensor([8.0]), torch.tensor([1.0])).item() < 1e-6


def test_focal_loss_is_finite_in_half_precision_logits():
    logits = torch.tensor([20.0, -20.0], dtype=torch.float16)
    assert torch.isfinite(focal_loss(logits.float(), torch.tensor([0.0, 1.0]))).all()


def test_loss_without_objects_is_finite_and_box_term_zero():
    torch.manual_seed(0)
    model = create_model("efficientdet-tiny-test")
    loss_fn = create_loss("efficientdet-tiny-test", model=model)
    parts = loss_fn.components(model(torch.rand(2, 3, 128, 128)), torch.zeros(0, 6))
    assert parts["box"].item() == 0.0
    assert torch.isfinite(parts["class"]) and parts["class"].item() > 0


def test_loss_rejects_pixel_boxes_and_bad_class_ids():
    model = create_model("efficientdet-tiny-test")
    loss_fn = create_loss("efficientdet-tiny-test", model=model)
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match="normalised"):
        loss_fn(out, torch.tensor([[0, 1, 64.0, 64.0, 20.0, 20.0]]))
    with pytest.raises(ValueError, match="class ids"):
        loss_fn(out, torch.tensor([[0, 7, 0.5, 0.5, 0.2, 0.2]]))
