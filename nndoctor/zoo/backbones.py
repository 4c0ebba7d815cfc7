"""Shared trunks for the self-supervised workloads.

* AlexNet-style trunk: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep
  Convolutional Neural Networks", NIPS 2012. The pretext-task papers each use a variant
  (BN after every conv for RotNet/DeepCluster, LRN + grouped convs for the Jigsaw CFN).
* ResNet-style trunk: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks"
  (ResNet v2, pre-activation), ECCV 2016 — the variant Kolesnikov, Zhai & Beyer use in
  "Revisiting Self-Supervised Visual Representation Learning", CVPR 2019.
* Network-in-Network trunk: Lin, Chen & Yan, "Network In Network", ICLR 2014, in the form
  RotNet uses on CIFAR-10 (Gidaris, Singh & Komodakis, ICLR 2018).

Every trunk names its stages ``conv1`` … ``convN`` so the linear-evaluation protocol can say
"freeze up to conv3" for any of them, and exposes ``stage_channels`` and ``out_channels``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "AlexNetTrunk",
    "ResNetTrunk",
    "NINTrunk",
    "EncoderDecoder",
    "MLPHead",
    "build_trunk",
    "TRUNK_KINDS",
]

TRUNK_KINDS = ("alexnet", "resnet")


class _StagedTrunk(nn.Module):
    """A trunk whose children are named stages ``conv1`` … ``convN``, run in order."""

    stage_names: tuple[str, ...]
    stage_channels: dict[str, int]

    @property
    def out_channels(self) -> int:
        return self.stage_channels[self.stage_names[-1]]

    def forward(self, x: torch.Tensor, upto: str | None = None) -> torch.Tensor:
        if upto is not None and upto not in self.stage_names:
            raise ValueError(f"unknown stage {upto!r}; this trunk has {list(self.stage_names)}")
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name == upto:
                break
        return x


class AlexNetTrunk(_StagedTrunk):
    """conv1 … conv5 of AlexNet with the options the pretext-task papers use.

    ``small_input`` replaces the 11×11 stride-4 conv1 by a 3×3 stride-1 one so 32 px inputs
    still leave a 3×3 map after the three max-pools (used by every tiny config).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (96, 256, 384, 384, 256),
        *,
        conv1_kernel: int = 11,
        conv1_stride: int = 4,
        conv1_padding: int = 2,
        batch_norm: bool = True,
        lrn: bool = False,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"AlexNetTrunk needs 5 widths (conv1..conv5), got {tuple(widths)}")
        self.stage_names = ("conv1", "conv2", "conv3", "conv4", "conv5")
        self.stage_channels = dict(zip(self.stage_names, widths))
        c1, c2, c3, c4, c5 = widths

        def unit(cin, cout, k, s, p, g, pool):
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p, groups=g)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            if pool:
                layers.append(nn.MaxPool2d(3, 2))
                if lrn:
                    layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75))
            return nn.Sequential(*layers)

        # Grouped convs (the original two-GPU split) only where AlexNet had them: conv2, 4, 5.
        self.conv1 = unit(in_channels, c1, conv1_kernel, conv1_stride, conv1_padding, 1, True)
        self.conv2 = unit(c1, c2, 5, 1, 2, groups, True)
        self.conv3 = unit(c2, c3, 3, 1, 1, 1, False)
        self.conv4 = unit(c3, c4, 3, 1, 1, groups, False)
        self.conv5 = unit(c4, c5, 3, 1, 1, groups, True)
        if lrn:  # CFN puts LRN after pool1 and pool2 only
            self.conv5 = nn.Sequential(*[m for m in self.conv5 if not isinstance(m, nn.LocalResponseNorm)])
        _init_conv_he(self)


class _PreActBasic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + skip


class _PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + skip


class ResNetTrunk(_StagedTrunk):
    """Pre-activation (v2) ResNet: stem ``conv1`` then one stage per entry of ``layers``.

    v2 blocks leave their output un-normalised, so with ``final_norm`` a BN + ReLU follows the
    last stage (the v2 "post-norm"); a trunk truncated inside a deeper network (multi-task's
    ResNet-101 cut after conv4_x) has none.
    """

    def __init__(
        self,
        in_channels: int = 3,
        layers: Sequence[int] = (3, 4, 6, 3),
        width: int = 64,
        *,
        bottleneck: bool = True,
        small_input: bool = False,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        block = _PreActBottleneck if bottleneck else _PreActBasic
        if small_input:  # 3×3 stride-1 stem, no max-pool: keeps 32 px inputs usable
            self.conv1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False))
        else:
            # No BN/ReLU after the stem conv: the first block's pre-activation does it (v2).
            self.conv1 = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1))
        names = ["conv1"]
        channels = {"conv1": width}
        cin = width
        for i, blocks in enumerate(layers):
            stage_width = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(block(cin, stage_width, stride if b == 0 else 1))
                cin = stage_width * block.expansion
            name = f"conv{i + 2}"
            if i == len(layers) - 1 and final_norm:
                stage += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
            setattr(self, name, nn.Sequential(*stage))
            names.append(name)
            channels[name] = cin
        self.stage_names = tuple(names)
        self.stage_channels = channels
        _init_conv_he(self)


class NINTrunk(_StagedTrunk):
    """Network-in-Network blocks as in RotNet's CIFAR model (``NetworkInNetwork.py``).

    Block = 3 × [conv (no bias) → BN → ReLU]. Block 1: 5×5, 1×1, 1×1 then max-pool 3/2;
    block 2: 5×5, 1×1, 1×1 then avg-pool 3/2; later blocks: 3×3, 1×1, 1×1.
    """

    def __init__(self, in_channels: int = 3, num_blocks: int = 4, widths: Sequence[int] = (192, 160, 96)) -> None:
        super().__init__()
        if num_blocks < 3:
            raise ValueError(f"NINTrunk needs at least 3 blocks, got {num_blocks}")
        wide, mid, narrow = widths

        def cbr(cin, cout, k):
            return [nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        blocks = [
            nn.Sequential(*cbr(in_channels, wide, 5), *cbr(wide, mid, 1), *cbr(mid, narrow, 1), nn.MaxPool2d(3, 2, 1)),
            nn.Sequential(*cbr(narrow, wide, 5), *cbr(wide, wide, 1), *cbr(wide, wide, 1), nn.AvgPool2d(3, 2, 1)),
        ]
        for _ in range(num_blocks - 2):
            blocks.append(nn.Sequential(*cbr(wide, wide, 3), *cbr(wide, wide, 1), *cbr(wide, wide, 1)))
        self.stage_names = tuple(f"conv{i + 1}" for i in range(num_blocks))
        self.stage_channels = {n: (narrow if i == 0 else wide) for i, n in enumerate(self.stage_names)}
        for name, block in zip(self.stage_names, blocks):
            setattr(self, name, block)
        _init_conv_he(self)


class MLPHead(nn.Module):
    """Pool a feature map to ``pool``×``pool``, flatten, then Linear layers.

    ``hidden`` layers are Linear → (BN1d) → ReLU → (Dropout); the last Linear has no activation.
    With ``batch_norm=True`` the hidden Linears drop their (redundant) bias, as RotNet does.
    """

    def __init__(
        self,
        in_channels: int,
        pool: int,
        hidden: Sequence[int],
        out_features: int,
        *,
        batch_norm: bool = False,
        dropout: float = 0.0,
        pool_type: str = "avg",
    ) -> None:
        super().__init__()
        pool_layer = nn.AdaptiveAvgPool2d(pool) if pool_type == "avg" else nn.AdaptiveMaxPool2d(pool)
        layers: list[nn.Module] = [pool_layer, nn.Flatten()]
        width = in_channels * pool * pool
        for h in hidden:
            layers.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class EncoderDecoder(nn.Module):
    """DCGAN-style encoder → bottleneck → decoder, the context-encoder generator shape.

    Encoder: 4×4 stride-2 convs (``widths``) until the map is 4×4, then a 4×4 valid conv to a
    ``bottleneck``-channel 1×1 code. Decoder: 4×4 transposed conv back to 4×4, then stride-2
    transposed convs up to ``output_size``, ending in ``out_channels`` with Tanh (outputs in
    [-1, 1], the range the inputs are scaled to). LeakyReLU(0.2) in the encoder, ReLU in the
    decoder, BN everywhere except the first and last layers (Pathak et al. 2016).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        image_size: int,
        output_size: int,
        widths: Sequence[int],
        bottleneck: int,
    ) -> None:
        super().__init__()
        n_down = _log2_exact(image_size // 4) if image_size % 4 == 0 else -1
        n_up = _log2_exact(output_size // 4) if output_size % 4 == 0 else -1
        if n_down < 1 or n_down != len(widths) or n_up < 1:
            raise ValueError(
                f"EncoderDecoder: image_size must be 4·2^len(widths) and output_size 4·2^k; got "
                f"image_size={image_size}, output_size={output_size}, widths={tuple(widths)}"
            )
        enc: list[nn.Module] = []
        cin = in_channels
        for i, w in enumerate(widths):
            enc.append(nn.Conv2d(cin, w, 4, 2, 1))
            if i > 0:
                enc.append(nn.BatchNorm2d(w))
            enc.append(nn.LeakyReLU(0.2, inplace=True))
            cin = w
        enc += [nn.Conv2d(cin, bottleneck, 4), nn.BatchNorm2d(bottleneck), nn.LeakyReLU(0.2, inplace=True)]
        self.encoder = nn.Sequential(*enc)
        dec_widths = list(reversed(widths))[:n_up]
        while len(dec_widths) < n_up:
            dec_widths.append(dec_widths[-1])
        dec: list[nn.Module] = [nn.ConvTranspose2d(bottleneck, dec_widths[0], 4), nn.BatchNorm2d(dec_widths[0]), nn.ReLU(True)]
        for i in range(n_up):
            cin = dec_widths[i]
            last = i == n_up - 1
            cout = out_channels if last else dec_widths[i + 1]
            dec.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
            dec += [nn.Tanh()] if last else [nn.BatchNorm2d(cout), nn.ReLU(True)]
        self.decoder = nn.Sequential(*dec)
        for m in self.modules():  # DCGAN init N(0, 0.02), as in the context-encoder code
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build_trunk(kind: str, size: str, in_channels: int = 3) -> _StagedTrunk:
    """The shared backbone at a named size: ``alexnet`` or ``resnet``, ``tiny`` or ``full``.

    full alexnet = AlexNet with BN (96-256-384-384-256) for 224 px inputs; full resnet =
    ResNet-50 v2. tiny = widths/8 and a 3×3 stride-1 first conv, for 32 px inputs.
    """
    if kind not in TRUNK_KINDS:
        raise ValueError(f"unknown backbone {kind!r}; choose one of {list(TRUNK_KINDS)}")
    if size not in ("tiny", "full"):
        raise ValueError(f"unknown trunk size {size!r}; choose 'tiny' or 'full'")
    if kind == "alexnet":
        if size == "full":
            return AlexNetTrunk(in_channels)
        return AlexNetTrunk(in_channels, (12, 32, 48, 48, 32), conv1_kernel=3, conv1_stride=1, conv1_padding=1)
    if size == "full":
        return ResNetTrunk(in_channels, (3, 4, 6, 3), 64, bottleneck=True)
    return ResNetTrunk(in_channels, (1, 1, 1), 8, bottleneck=False, small_input=True)


def _log2_exact(n: int) -> int:
    k = int(round(math.log2(n))) if n > 0 else -1
    return k if k >= 0 and 2**k == n else -1


def _init_conv_he(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
