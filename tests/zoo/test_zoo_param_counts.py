"""Parameter counts at FULL size, pinned against the papers' figures.

Full-size models are built on the meta device (no memory, no initialisation), only to count.
Sources: the papers' tables; where a paper gives no count, the official code's count
(ultralytics, rwightman/efficientdet-pytorch, the authors' repositories) as re-measured in
shared/reference/workloads-architectures.md ("[measured]" there means a from-scratch build of the
same architecture reproduced the official number). Exact pins catch any architecture drift; the
paper-figure checks say how close we are to what the paper printed.
"""

import pytest
import torch

from nndoctor.zoo import create_model
from nndoctor.zoo.efficientdet import PAPER_PARAMS


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(name, **config):
    with torch.device("meta"):
        return create_model(name, size="full", **config)


def test_yolov3_full_size_80_classes():
    model = build("yolov3")
    # YOLOv3 paper / darknet yolov3.cfg; ultralytics reports "61.9M" (61,949,149)
    assert count(model) == 61_949_149
    assert count(model) == pytest.approx(62e6, rel=0.01)
    assert count(model.backbone) == 40_584_928  # Darknet-53 without its classifier


@pytest.mark.parametrize("phi, exact", [(0, 3_880_067), (1, 6_625_898), (2, 8_097_039), (3, 12_032_296), (4, 20_723_675), (5, 33_653_315), (6, 51_871_782), (7, 51_871_782)])
def test_efficientdet_compound_scaling_d0_to_d7(phi, exact):
    model = build(f"efficientdet-d{phi}")  # C = 90 (COCO ids), as the official configs
    # EfficientDet paper Table 2: D0 3.9M, D1 6.6M, D2 8.1M, D3 12.0M, D4 20.7M, D5 33.7M, D6/D7 51.9M
    assert round(count(model) / 1e6, 1) == PAPER_PARAMS[phi] / 1e6  # rounds to the printed figure
    assert count(model) == exact


def test_efficientdet_d0_breakdown():
    model = build("efficientdet-d0")
    assert count(model.backbone) == 3_595_388  # EfficientNet-B0 (5.3M) minus its 1280-d head and classifier
    assert count(model.bifpn) + count(model.p6_resample) == 175_609 + 20_672
    assert count(model.class_net) == 69_354 and count(model.box_net) == 19_044


def test_rotnet_nin4_cifar_and_alexnet_imagenet():
    # gidariss/FeatureLearningRotNet: NIN with 4 blocks (config CIFAR10_RotNet_NIN4blocks)
    assert count(build("rotnet")) == 1_411_140
    # the ImageNet RotNet: AlexNet (64-192-384-256-256, BN) + 2 × FC 4096 (BN1d) + Linear(4096, 4)
    assert count(build("rotnet", backbone="alexnet")) == 57_030_724


def test_jigsaw_cfn():
    # bbrattoli/JigsawPuzzlePytorch JigsawNetwork: 46.5M with 1000 permutations
    assert count(build("jigsaw", num_permutations=1000)) == 46_544_232
    assert count(build("jigsaw")) == 42_856_932  # the paper's P = 100


def test_relative_patch_location_pair_network():
    assert count(build("relative-patch")) == 41_539_656  # AlexNet-BN towers, 96 px patches, fc 4096


def test_exemplar_cnn_medium_8000_classes():
    # Dosovitskiy et al. 2014, "64c5-128c5-256c5-512f" with N = 8000 surrogate classes
    assert count(build("exemplar")) == 7_230_912


def test_context_encoder_generator():
    # pathak22/context-encoder, nBottleneck = 4000 (README command) / 100 (code default)
    assert count(build("context-ae")) == 71_130_531
    assert count(build("context-ae", bottleneck=100)) == 7_221_231


def test_denoising_autoencoder_is_the_context_generator_with_a_full_size_decoder():
    dae, ctx = build("denoising-ae"), build("context-ae")
    assert count(dae.encoder) == count(ctx.encoder)
    assert count(dae) > count(ctx)


def test_colorization_deploy_v2():
    # richzhang/colorization colorization_deploy_v2 with the paper's Q = 313 bins
    assert count(build("colorization", num_bins=313)) == 32_235_385


def test_split_brain_half_width_alexnet_towers():
    assert count(build("split-brain", num_ab_bins=313)) == 1_930_317


def test_counting_alexnet():
    assert count(build("counting")) == 62_381_096  # AlexNet-BN, fc 4096-4096-1000 counts


def test_multitask_resnet101_v2_truncated_trunk():
    # Doersch & Zisserman: ResNet-101 v2 up to conv4_x (1024 channels, stride 16)
    model = build("multitask")
    assert count(model.trunk) == 27_529_792
    assert model.trunk.out_channels == 1024


def test_deepcluster_alexnet_sobel():
    model = build("deepcluster")  # facebookresearch/deepcluster, k = 10,000
    assert count(model) == 99_242_480
    assert count(model.trunk) == 3_738_336  # "features"; the fixed Sobel filters are buffers


@pytest.mark.parametrize(
    "name, inputs, expected",
    [
        ("rotnet", (2, 3, 32, 32), (2, 4)),
        ("jigsaw", (1, 9, 3, 75, 75), (1, 100)),
        ("relative-patch", (1, 2, 3, 96, 96), (1, 8)),
        ("exemplar", (2, 3, 32, 32), (2, 8000)),
        ("context-ae", (1, 3, 128, 128), (1, 3, 64, 64)),
        ("denoising-ae", (1, 3, 128, 128), (1, 3, 128, 128)),
        ("colorization", (1, 1, 224, 224), (1, 261, 56, 56)),
        ("counting", (1, 6, 3, 114, 114), (1, 6, 1000)),
        ("deepcluster", (2, 3, 224, 224), (2, 10_000)),
    ],
)
def test_full_size_forward_shapes_on_meta(name, inputs, expected):
    model = build(name).eval()
    with torch.device("meta"):
        out = model(torch.zeros(inputs))
    assert tuple(out.shape) == expected
