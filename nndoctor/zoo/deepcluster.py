"""DeepCluster: k-means pseudo-labels on the network's own features.

Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of Visual
Features", ECCV 2018. Each epoch: (1) compute features of the whole data set in eval mode with
the top layer and the last ReLU removed; (2) PCA-whiten to 256 dims and L2-normalise; (3)
k-means; (4) use the cluster ids as labels, re-initialise the top layer (cluster ids have no
correspondence across epochs) and train one epoch, sampling uniformly over clusters.

Empty clusters: when k-means leaves a centroid with no points, it is re-seeded from a random
non-empty cluster's centroid plus a small perturbation, and the two split that cluster's points
(the paper's fix; faiss does this internally in the reference code).

Full size: AlexNet with BN on a fixed Sobel input (2 channels), classifier 9216→4096→4096 and a
top layer 4096→k with k = 10,000: 99,242,480 parameters (features 3,738,336).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import AlexNetTrunk

__all__ = ["DeepClusterNet", "kmeans", "pca_whiten", "cluster_features", "uniform_cluster_sample", "DeepClusterLoss", "CONFIGS"]

CONFIGS = {
    "tiny": {"widths": (12, 32, 48, 48, 32), "fc": 128, "num_clusters": 10, "small_input": True, "pca_dim": 32},
    "full": {"widths": (96, 256, 384, 384, 256), "fc": 4096, "num_clusters": 10000, "small_input": False, "pca_dim": 256},
}


class DeepClusterNet(nn.Module):
    """Input RGB ``(B, 3, H, W)``; output ``(B, k)`` cluster logits (or ``(B, fc)`` features
    from :meth:`features`)."""

    def __init__(self, widths=(96, 256, 384, 384, 256), fc: int = 4096, num_clusters: int = 10000, small_input: bool = False, sobel: bool = True, pca_dim: int = 256):
        super().__init__()
        self.num_clusters, self.pca_dim = num_clusters, pca_dim
        self.sobel = sobel
        in_channels = 2 if sobel else 3
        if small_input:
            self.trunk = AlexNetTrunk(in_channels, widths, conv1_kernel=3, conv1_stride=1, conv1_padding=1)
            pool = 3
        else:
            self.trunk = AlexNetTrunk(in_channels, widths)
            pool = 6
        # Fixed filters (buffers, not parameters): gray = mean of RGB, then Sobel x and y.
        sobel_xy = torch.tensor([[[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]])
        self.register_buffer("sobel_filter", sobel_xy[:, None], persistent=False)  # (2, 1, 3, 3)
        self.pool = nn.AdaptiveMaxPool2d(pool)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(widths[-1] * pool * pool, fc), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(fc, fc), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.top_layer = nn.Linear(fc, num_clusters)
        self.reset_top_layer()

    def reset_top_layer(self, num_clusters: int | None = None) -> None:
        """Fresh top layer N(0, 0.01), bias 0 — called after every re-clustering."""
        if num_clusters is not None and num_clusters != self.top_layer.out_features:
            self.top_layer = nn.Linear(self.top_layer.in_features, num_clusters).to(self.top_layer.weight)
        nn.init.normal_(self.top_layer.weight, 0.0, 0.01)
        nn.init.zeros_(self.top_layer.bias)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sobel:
            return x
        gray = x.mean(dim=1, keepdim=True)
        return F.conv2d(gray, self.sobel_filter.to(gray), padding=1)  # (B, 2, H, W)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 features *before* the last ReLU (what DeepCluster clusters)."""
        h = self.pool(self.trunk(self._input(x))).flatten(1)
        return self.classifier[:-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top_layer(F.relu(self.features(x)))


def pca_whiten(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Centre, project on the top ``dim`` principal components, whiten (eigen power −½), L2-normalise."""
    x = features.double() - features.double().mean(dim=0)
    dim = min(dim, x.shape[0], x.shape[1])
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    scale = s[:dim] / max(x.shape[0] - 1, 1) ** 0.5
    projected = (x @ v[:dim].T) / (scale + 1e-8)
    return F.normalize(projected, dim=1).float()


def kmeans(
    points: torch.Tensor, k: int, iterations: int = 20, *, generator: torch.Generator | None = None, init: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd's k-means with the empty-cluster fix. Returns (labels (N,), centroids (k, D),
    number of empty clusters that were re-seeded). ``init``: starting centroids ``(k, D)``
    (default: k distinct random points)."""
    n = points.shape[0]
    if n < k:
        raise ValueError(f"cannot make {k} clusters from {n} points")
    centroids = points[torch.randperm(n, generator=generator)[:k]].clone() if init is None else init.clone().to(points)
    reseeded = 0
    for _ in range(iterations):
        labels = torch.cdist(points, centroids).argmin(dim=1)
        counts = torch.bincount(labels, minlength=k)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            # Re-seed from a random non-empty cluster (chosen ∝ size), perturbed both ways,
            # and give the new centroid the half of that cluster's points closer to it.
            donor = int(torch.multinomial(counts.double(), 1, generator=generator))
            noise = 1e-4 * torch.randn(centroids.shape[1], generator=generator).to(points)
            centroids[empty] = centroids[donor] + noise
            centroids[donor] = centroids[donor] - noise
            members = torch.nonzero(labels == donor).flatten()
            closer = (points[members] - centroids[empty]).norm(dim=1) < (points[members] - centroids[donor]).norm(dim=1)
            moved = members[closer] if closer.any() and not closer.all() else members[: max(1, len(members) // 2)]
            labels[moved] = empty
            counts = torch.bincount(labels, minlength=k)
            reseeded += 1
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        centroids = sums / counts.clamp_min(1)[:, None].to(points)
    labels = torch.cdist(points, centroids).argmin(dim=1)
    return labels, centroids, reseeded


@torch.no_grad()
def cluster_features(model: DeepClusterNet, images: torch.Tensor, *, batch_size: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """One DeepCluster re-assignment: features in eval mode → PCA-whiten → k-means → labels ``(N,)``.

    Restores the model's training flag afterwards and re-initialises its top layer.
    """
    was_training = model.training
    model.eval()
    try:
        feats = torch.cat([model.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)
    labels, _, _ = kmeans(pca_whiten(feats, model.pca_dim), model.num_clusters, generator=generator)
    model.reset_top_layer()
    return labels


def uniform_cluster_sample(labels: torch.Tensor, count: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices drawn uniformly over the non-empty clusters, then uniformly within one
    (``UnifLabelSampler``): stops one huge cluster from dominating the epoch."""
    clusters = torch.unique(labels)
    pick = clusters[torch.randint(len(clusters), (count,), generator=generator)]
    out = torch.empty(count, dtype=torch.long)
    for i, c in enumerate(pick.tolist()):
        members = torch.nonzero(labels == c).flatten()
        out[i] = members[torch.randint(len(members), (1,), generator=generator)]
    return out


class DeepClusterLoss(nn.CrossEntropyLoss):
    """Cross-entropy against the current pseudo-labels (cluster ids)."""
