"""The workload registry: names, configs, errors."""

import pytest
import torch

from nndoctor import zoo
from nndoctor.zoo import create_loss, create_model, list_models, model_config

REQUIRED = [
    "rotnet", "jigsaw", "relative-patch", "exemplar", "denoising-ae", "context-ae", "colorization", "split-brain",
    "counting", "multitask", "deepcluster", "yolov3", "yolov3-tiny-test", *[f"efficientdet-d{i}" for i in range(8)],
    "efficientdet-tiny-test",
]  # fmt: skip


def test_all_required_names_are_registered():
    assert set(REQUIRED) <= set(list_models())


def test_list_models_filters_with_a_pattern():
    assert list_models("efficientdet-d*") == [f"efficientdet-d{i}" for i in range(8)]
    assert list_models("nothing-*") == []


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        create_model("yolov4")
    message = str(err.value)
    assert "yolov4" in message and "yolov3" in message and "efficientdet-d0" in message and "rotnet" in message


def test_near_miss_name_gets_a_suggestion():
    with pytest.raises(ValueError, match="Did you mean 'relative-patch'"):
        create_model("relative_patch")


def test_unknown_config_key_names_the_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown config key\(s\) \['num_clases'\].*num_classes"):
        create_model("yolov3", size="tiny", num_clases=3)


def test_unknown_size_lists_the_available_sizes():
    with pytest.raises(ValueError, match="available: tiny"):
        create_model("yolov3-tiny-test", size="full")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="alexnet"):
        create_model("jigsaw", size="tiny", backbone="vgg")


def test_default_size_is_full_for_paper_names_and_tiny_for_test_names():
    assert model_config("yolov3")["image_size"] == 416
    assert model_config("yolov3-tiny-test")["image_size"] == model_config("yolov3", "tiny")["image_size"]
    assert model_config("efficientdet-d3")["image_size"] == 896


def test_overrides_reach_the_model():
    model = create_model("yolov3", size="tiny", num_classes=5)
    assert model.num_classes == 5
    loss = create_loss("yolov3", model=model)
    assert loss.num_classes == 5


def test_loss_from_config_matches_loss_from_model():
    model = create_model("yolov3", size="tiny")
    from_model = create_loss("yolov3", model=model)
    from_config = create_loss("yolov3", size="tiny")
    assert [a.tolist() for a in from_model.anchors] == [a.tolist() for a in from_config.anchors]
    assert create_loss("efficientdet-d0").num_classes == 90


def test_loss_config_keys_are_checked():
    assert create_loss("counting", margin=3.0).margin == 3.0
    with pytest.raises(TypeError, match="unknown loss config"):
        create_loss("counting", margn=3.0)


@pytest.mark.parametrize("name", REQUIRED)
def test_every_workload_has_a_loss_and_a_paper(name):
    w = zoo.get_workload(name)
    assert w.paper and w.configs
    loss = create_loss(name, size=next(iter(w.configs)))
    assert isinstance(loss, torch.nn.Module)


def test_backbone_options_on_shared_ssl_workloads():
    for name in ("rotnet", "jigsaw", "relative-patch", "exemplar", "counting"):
        for backbone in ("alexnet", "resnet"):
            model = create_model(name, size="tiny", backbone=backbone)
            assert hasattr(model, "trunk")
