"""One ready-made ``(inputs, targets)`` batch for any registered workload.

Used by the tests and the throughput benchmark; the example scripts build their batches by hand,
the way a user would.
"""

from __future__ import annotations

import torch
from torch import nn

from . import (
    colorization,
    context_ae,
    counting,
    deepcluster,
    denoising_ae,
    exemplar,
    jigsaw,
    multitask,
    relative_patch,
    rotnet,
    split_brain,
)
from ._registry import get_workload
from .data import ShapesDetection, collate_detection, ssl_images

__all__ = ["sample_batch"]


def sample_batch(name: str, model: nn.Module, batch_size: int = 4, *, seed: int = 0, source: str = "synthetic"):
    """A batch for ``model`` (built by ``create_model(name, …)``) from data that needs no download.

    ``source`` is the image source of the self-supervised tasks (see :func:`data.ssl_images`);
    detection uses :class:`data.ShapesDetection`. Returns ``(inputs, targets)`` in the form the
    workload's loss takes (``targets`` is None for counting).
    """
    w = get_workload(name)
    g = torch.Generator().manual_seed(seed)
    if w.family == "detection":
        ds = ShapesDetection(batch_size, image_size=model.image_size, num_classes=min(model.num_classes, 8), seed=seed)
        return collate_detection([ds[i] for i in range(batch_size)])

    def images(size: int, count: int = batch_size) -> torch.Tensor:
        return ssl_images(count, size, seed=seed, source=source)

    if name == "rotnet":
        return rotnet.make_batch(images(model.image_size))
    if name == "jigsaw":
        side = 3 * int(round(model.tile_size * 85 / 64))
        perms = jigsaw.select_permutations(model.num_permutations)
        return jigsaw.make_batch(images(side), perms, model.tile_size, generator=g)
    if name == "relative-patch":
        side = relative_patch.grid_extent(model.patch_size, model.gap, model.jitter) + 4
        return relative_patch.make_batch(images(side), model.patch_size, model.gap, model.jitter, generator=g)
    if name == "exemplar":
        seeds = images(max(2 * model.patch_size, 64), count=4)
        patches, labels = exemplar.make_surrogate_classes(seeds, model.num_classes, views=2, patch_size=model.patch_size, generator=g)
        pick = torch.randperm(len(labels), generator=g)[:batch_size]
        return patches[pick], labels[pick]
    if name == "denoising-ae":
        return denoising_ae.make_batch(images(model.image_size), generator=g)
    if name == "context-ae":
        return context_ae.make_batch(images(model.image_size), overlap=model.overlap)
    if name == "colorization":
        return colorization.make_batch(images(model.image_size))
    if name == "split-brain":
        size = 32 if model.l_to_ab.conv1[0].stride == (1, 1) else 180
        return split_brain.make_batch(images(size))
    if name == "counting":
        return counting.make_batch(images(2 * model.tile_size))
    if name == "multitask":
        size = relative_patch.grid_extent(model.patch_size, model.gap, model.jitter) + 4
        return multitask.make_batch(images(size), model.patch_size, model.gap, model.jitter, generator=g)
    if name == "deepcluster":
        size = 32 if model.trunk.conv1[0].stride == (1, 1) else 224
        pool = images(size, count=max(batch_size, 3 * model.num_clusters))
        labels = deepcluster.cluster_features(model, pool, generator=g)
        pick = deepcluster.uniform_cluster_sample(labels, batch_size, generator=g)
        return pool[pick], labels[pick]
    raise ValueError(f"no batch recipe for {name!r}")
