"""Jigsaw puzzles (Context-Free Network).

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV 2016. An image is cut into a 3×3 grid of tiles, the tiles are shuffled with one
of P pre-defined permutations, and the network predicts the permutation's index (P-way).

The P permutations are chosen greedily from all 9! = 362,880 so they are far apart in Hamming
distance (the paper's Algorithm 1: each new permutation maximises the *average* distance to the
ones already chosen). Nine towers with shared weights embed the tiles; their fc6 outputs are
concatenated in tile order before fc7 and the P-way fc8.

Full size: the CFN with P=100 (42,856,932 parameters): AlexNet towers without BN, with LRN and
grouped convs, on 75×75 tiles cut with a gap from 85 px cells of a 255 px crop.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
from torch import nn

from .backbones import AlexNetTrunk, build_trunk

__all__ = ["JigsawNet", "select_permutations", "make_puzzles", "make_batch", "JigsawLoss", "CONFIGS"]

NUM_TILES = 9

CONFIGS = {
    "tiny": {"backbone": "alexnet", "num_permutations": 24, "tile_size": 32, "fc6": 64, "fc7": 128},
    "full": {"backbone": "alexnet", "num_permutations": 100, "tile_size": 75, "fc6": 1024, "fc7": 4096},
}


@functools.lru_cache(maxsize=8)
def _all_permutations() -> np.ndarray:
    return np.array(list(itertools.permutations(range(NUM_TILES))), dtype=np.int8)  # (362880, 9)


@functools.lru_cache(maxsize=16)
def _select_permutations_cached(count: int, seed: int, criterion: str) -> np.ndarray:
    candidates = _all_permutations()
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(candidates)))]
    # Running Hamming distances of every candidate to the chosen set: sum (for "average") or
    # min (for "minimum"). Chosen candidates have distance 0 to themselves, so they are never
    # picked twice while any other candidate is left.
    first = (candidates != candidates[chosen[0]]).sum(axis=1).astype(np.int32)
    total, nearest = first.copy(), first.copy()
    while len(chosen) < count:
        if criterion == "average":
            score = total.astype(np.float64)
        else:  # max-min, ties broken by the average distance
            score = nearest * 100_000.0 + total
        score[chosen] = -1
        pick = int(score.argmax())
        chosen.append(pick)
        d = (candidates != candidates[pick]).sum(axis=1).astype(np.int32)
        total += d
        np.minimum(nearest, d, out=nearest)
    return candidates[chosen].astype(np.int64)


def select_permutations(count: int = 100, seed: int = 0, criterion: str = "average") -> torch.Tensor:
    """``count`` permutations of the 9 tiles, chosen greedily to be far apart.

    ``criterion="average"`` is the paper's Algorithm 1 (maximise the mean Hamming distance to
    the chosen set); it still leaves pairs at distance 2. ``"minimum"`` maximises the smallest
    distance instead. Returns a ``(count, 9)`` int64 tensor; row ``p`` lists, for each output
    position, which source tile goes there.
    """
    if not 1 <= count <= 362_880:
        raise ValueError(f"count must be in 1..362880 (9!), got {count}")
    if criterion not in ("average", "minimum"):
        raise ValueError(f"criterion must be 'average' or 'minimum', got {criterion!r}")
    with torch.device("cpu"):  # constants: never meta / cuda, even inside a device context
        return torch.from_numpy(_select_permutations_cached(count, seed, criterion).copy())


class JigsawNet(nn.Module):
    """Input ``(B, 9, 3, t, t)`` tiles in shuffled order, output ``(B, P)`` permutation logits."""

    def __init__(
        self,
        backbone: str = "alexnet",
        size: str = "full",
        num_permutations: int = 100,
        tile_size: int = 75,
        fc6: int = 1024,
        fc7: int = 4096,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.tile_size = tile_size
        self.num_permutations = num_permutations
        if backbone == "alexnet" and size == "full":
            # CFN tower: conv1 11×11 stride 2, no BN, LRN after pool1/pool2, groups=2.
            self.trunk = AlexNetTrunk(
                in_channels, (96, 256, 384, 384, 256), conv1_stride=2, conv1_padding=0, batch_norm=False, lrn=True, groups=2
            )
            pool = 3  # 75 px tile → 3×3 conv5 map → 2304 features
        else:
            self.trunk = build_trunk(backbone, size, in_channels)
            pool = 3 if backbone == "alexnet" else 1
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.fc6 = nn.Sequential(nn.Linear(self.trunk.out_channels * pool * pool, fc6), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc7 = nn.Sequential(nn.Linear(NUM_TILES * fc6, fc7), nn.ReLU(inplace=True), nn.Dropout(0.5))
        self.fc8 = nn.Linear(fc7, num_permutations)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        if tiles.dim() != 5 or tiles.shape[1] != NUM_TILES:
            raise ValueError(f"JigsawNet expects tiles (B, 9, C, t, t), got {tuple(tiles.shape)}")
        b = tiles.shape[0]
        per_tile = self.trunk(tiles.flatten(0, 1))  # (B·9, C5, h, w): the shared tower
        per_tile = self.fc6(self.pool(per_tile).flatten(1))  # (B·9, fc6)
        joined = per_tile.reshape(b, NUM_TILES * per_tile.shape[1])  # concat in tile order
        return self.fc8(self.fc7(joined))


def make_puzzles(
    images: torch.Tensor,
    permutations: torch.Tensor,
    tile_size: int,
    *,
    generator: torch.Generator | None = None,
    normalize_tiles: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each image into 3×3 cells, crop a random ``tile_size`` square inside each cell (the
    gap between tiles stops the network from matching edges), shuffle them with a random one of
    ``permutations`` and standardise each tile on its own (removes the tile-statistics shortcut).

    ``images``: ``(B, C, S, S)`` with ``S // 3 >= tile_size``. Returns tiles
    ``(B, 9, C, tile_size, tile_size)`` and permutation indices ``(B,)``.
    """
    b, c, h, w = images.shape
    cell = min(h, w) // 3  # integer division: a float cell size shifts the tiles (pitfall J1)
    if cell < tile_size:
        raise ValueError(f"images of {h}x{w} give {cell} px cells, smaller than tile_size={tile_size}")
    device = images.device
    labels = torch.randint(len(permutations), (b,), generator=generator)
    offsets = torch.randint(cell - tile_size + 1, (b, NUM_TILES, 2), generator=generator)
    tiles = images.new_empty(b, NUM_TILES, c, tile_size, tile_size)
    for i in range(b):
        for t in range(NUM_TILES):
            row, col = divmod(t, 3)
            y0 = row * cell + int(offsets[i, t, 0])
            x0 = col * cell + int(offsets[i, t, 1])
            tiles[i, t] = images[i, :, y0 : y0 + tile_size, x0 : x0 + tile_size]
    order = permutations.to(device)[labels.to(device)]  # (B, 9): source tile for each position
    tiles = torch.gather(tiles, 1, order[:, :, None, None, None].expand_as(tiles))
    if normalize_tiles:
        mean = tiles.mean(dim=(2, 3, 4), keepdim=True)
        std = tiles.std(dim=(2, 3, 4), keepdim=True)
        tiles = (tiles - mean) / torch.where(std > 0, std, torch.ones_like(std))
    return tiles, labels.to(device)


def make_batch(images: torch.Tensor, permutations: torch.Tensor, tile_size: int, generator=None):
    """(inputs, targets) for one Jigsaw step; see :func:`make_puzzles`."""
    return make_puzzles(images, permutations, tile_size, generator=generator)


class JigsawLoss(nn.CrossEntropyLoss):
    """Softmax cross-entropy over the P permutations; chance level is ln P (4.605 for P=100)."""

