"""Data for the reference workloads, with no downloads.

* :class:`ShapesDetection` — a synthetic detection set: shapes (disk, square, triangle, ring,
  cross, hexagon, star, diamond) with random colours on smooth textured backgrounds, with tight
  boxes and class ids. The class is the *shape*; colour is random, so colour alone is no cue.
* :func:`load_photos` / :func:`random_crops` — the two photographs bundled with scikit-learn
  (``load_sample_images``: china.jpg, flower.jpg, 427×640) and random crops of them, the image
  source for the self-supervised tasks.
* :func:`load_digits_images` — scikit-learn's 1,797 labelled 8×8 digits, upsampled: labelled
  data for linear evaluation.
* :class:`ImageFolder` — a user's own images, ``root/<class>/<image>.png``.

scikit-learn is an optional extra (``pip install 'nndoctor[zoo]'``) and is imported only when a
function needs it. Nothing here touches the network.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "SHAPE_NAMES",
    "ShapesDetection",
    "collate_detection",
    "load_photos",
    "random_crops",
    "load_digits_images",
    "ssl_images",
    "ImageFolder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize",
]

SHAPE_NAMES = ("disk", "square", "triangle", "ring", "cross", "hexagon", "star", "diamond")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Per-channel standardisation of ``(B, 3, H, W)`` images in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    s = torch.tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images - m) / s


# ---------------------------------------------------------------------------------------------
# Synthetic detection set


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mask of shape ``kind`` in object coordinates u, v ∈ [-1, 1] (v points down)."""
    r = np.hypot(u, v)
    if kind == 0:
        return r <= 1
    if kind == 1:
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if kind == 2:
        return (v <= 1) & (v >= 2 * np.abs(u) - 1)  # apex at the top
    if kind == 3:
        return (r <= 1) & (r >= 0.55)
    if kind == 4:
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1))
    if kind == 5:
        return (np.abs(v) <= math.sqrt(3) / 2) & (np.abs(u) + np.abs(v) / math.sqrt(3) <= 1)
    if kind == 6:
        theta = np.arctan2(v, u) + math.pi / 2
        return r <= 0.45 + 0.55 * ((np.cos(5 * theta) + 1) / 2) ** 2
    if kind == 7:
        return np.abs(u) + np.abs(v) <= 1
    raise ValueError(f"unknown shape {kind}")


class ShapesDetection(Dataset):
    """Synthetic detection images, generated from ``(seed, index)`` on demand (reproducible).

    Item ``i``: image ``(3, S, S)`` float32 in [0, 1] and targets ``(n, 5)`` rows
    ``[class, cx, cy, w, h]`` normalised to [0, 1] (the YOLO convention). Boxes are the tight
    boxes of each object's own mask, clipped to the image. Object sides are log-uniform in
    ``size_range`` (fractions of S), aspect 0.6–1.6, rotation ±30°; placements overlapping an
    earlier object by IoU > 0.3 are re-drawn. ``empty_fraction`` of the images have no objects.
    """

    def __init__(
        self,
        num_images: int = 64,
        image_size: int = 96,
        num_classes: int = 3,
        max_objects: int = 4,
        seed: int = 0,
        size_range: tuple[float, float] = (0.15, 0.6),
        empty_fraction: float = 0.0,
    ) -> None:
        if not 1 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"num_classes must be in 1..{len(SHAPE_NAMES)} ({', '.join(SHAPE_NAMES)}), got {num_classes}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.num_images, self.image_size, self.num_classes = num_images, image_size, num_classes
        self.max_objects, self.seed, self.size_range, self.empty_fraction = max_objects, seed, size_range, empty_fraction

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        s2 = 2 * self.image_size  # render at 2× then average down: anti-aliased edges
        ys, xs = np.mgrid[0:s2, 0:s2].astype(np.float32) / s2
        image = self._background(rng, xs, ys)
        boxes: list[tuple[int, float, float, float, float]] = []
        n = 0 if rng.random() < self.empty_fraction else int(rng.integers(1, self.max_objects + 1))
        for _ in range(n):
            for _attempt in range(10):
                kind = int(rng.integers(self.num_classes))
                side = math.exp(rng.uniform(math.log(self.size_range[0]), math.log(self.size_range[1])))
                aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
                half_w, half_h = side * math.sqrt(aspect) / 2, side / math.sqrt(aspect) / 2
                cx, cy = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95)
                angle = math.radians(rng.uniform(-30, 30)) if kind not in (0, 3) else 0.0
                c, s = math.cos(angle), math.sin(angle)
                dx, dy = xs - cx, ys - cy
                u = (c * dx + s * dy) / half_w
                v = (-s * dx + c * dy) / half_h
                mask = _shape_mask(kind, u, v)
                if mask.sum() < 16:
                    continue
                rows, cols = np.nonzero(mask)
                box = (cols.min() / s2, rows.min() / s2, (cols.max() + 1) / s2, (rows.max() + 1) / s2)
                if any(_iou(box, b[1:]) > 0.3 for b in boxes):
                    continue
                colour = rng.uniform(0, 1, 3).astype(np.float32)
                local = image[:, mask].mean(axis=1)
                if np.abs(colour - local).mean() < 0.3:  # keep a visible contrast to the background
                    colour = np.where(local > 0.5, colour * 0.3, 0.7 + 0.3 * colour).astype(np.float32)
                image[:, mask] = colour[:, None]
                boxes.append((kind, *box))
                break
        image_t = F.avg_pool2d(torch.from_numpy(image)[None], 2)[0].clamp(0, 1)
        targets = torch.tensor(
            [[k, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1] for k, x1, y1, x2, y2 in boxes], dtype=torch.float32
        ).reshape(-1, 5)
        return image_t, targets

    @staticmethod
    def _background(rng, xs, ys) -> np.ndarray:
        base = rng.uniform(0.2, 0.8, (3, 1, 1)).astype(np.float32)
        tilt = rng.uniform(-0.3, 0.3, (3, 2, 1, 1)).astype(np.float32)
        image = base + tilt[:, 0] * (xs - 0.5) + tilt[:, 1] * (ys - 0.5)
        for _ in range(3):  # low-frequency texture: random-phase sinusoids
            fx, fy = rng.uniform(-6, 6, 2)
            phase = rng.uniform(0, 2 * math.pi)
            amp = rng.uniform(0.02, 0.08, (3, 1, 1)).astype(np.float32)
            image = image + amp * np.sin(2 * math.pi * (fx * xs + fy * ys) + phase)
        return np.clip(image, 0, 1).astype(np.float32)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def collate_detection(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(image, targets (n, 5))]`` → images ``(B, 3, S, S)`` and targets ``(N, 6)`` rows
    ``[image_index, class, cx, cy, w, h]`` (the format both detection losses take)."""
    images = torch.stack([img for img, _ in batch])
    rows = [torch.cat([torch.full((len(t), 1), float(i)), t], dim=1) for i, (_, t) in enumerate(batch)]
    return images, torch.cat(rows) if rows else torch.zeros(0, 6)


# ---------------------------------------------------------------------------------------------
# Real images that ship with scikit-learn


def _sklearn_datasets(what: str):
    try:
        from sklearn import datasets
    except ImportError as exc:  # optional extra
        raise ImportError(
            f"nndoctor.zoo.data.{what} needs scikit-learn, which bundles the images it uses "
            "(no download). Install the extra: pip install 'nndoctor[zoo]' (or pip install scikit-learn), "
            "or use the synthetic source: ssl_images(..., source='synthetic')."
        ) from exc
    return datasets


@functools.lru_cache(maxsize=1)
def _photos_numpy() -> np.ndarray:
    images = _sklearn_datasets("load_photos").load_sample_images().images  # 2 × (427, 640, 3) uint8
    return np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images]).transpose(0, 3, 1, 2)


def load_photos() -> torch.Tensor:
    """scikit-learn's two sample photographs as ``(2, 3, 427, 640)`` float32 in [0, 1]."""
    return torch.from_numpy(_photos_numpy().copy())


def random_crops(
    images: torch.Tensor, count: int, size: int, *, generator: torch.Generator | None = None, scale: tuple[float, float] = (0.25, 1.0), flip: bool = True
) -> torch.Tensor:
    """``count`` random square crops of ``images`` ``(N, C, H, W)``, resized to ``size``.

    The crop side is a fraction in ``scale`` of the shorter image side. Flips are horizontal
    only: a vertical flip would destroy the up/down cue the rotation task learns from.
    """
    n, c, h, w = images.shape
    short = min(h, w)
    out = images.new_empty(count, c, size, size)
    for i in range(count):
        src = int(torch.randint(n, (1,), generator=generator))
        frac = scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=generator))
        side = max(size // 2, int(short * frac))
        side = min(side, short)
        y = int(torch.randint(h - side + 1, (1,), generator=generator))
        x = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = images[src : src + 1, :, y : y + side, x : x + side]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
        if flip and float(torch.rand(1, generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out.clamp(0, 1)


def load_digits_images(size: int = 32, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits: images ``(1797, channels, size, size)`` in
    [0, 1] (bilinear upsampling of the 8×8 originals) and labels ``(1797,)`` in 0..9."""
    digits = _sklearn_datasets("load_digits_images").load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return images.expand(-1, channels, -1, -1).contiguous(), torch.tensor(digits.target, dtype=torch.long)


def ssl_images(count: int, size: int, *, seed: int = 0, source: str = "photos") -> torch.Tensor:
    """Unlabelled images ``(count, 3, size, size)`` in [0, 1] for the self-supervised tasks.

    ``source``: ``"photos"`` (crops of scikit-learn's photographs), ``"digits"`` (scikit-learn
    digits) or ``"synthetic"`` (crops of :class:`ShapesDetection` scenes; needs nothing).
    The result depends only on the arguments, and is cached (a fresh copy is returned).
    """
    return _ssl_images_cached(count, size, seed, source).clone()


@functools.lru_cache(maxsize=16)
def _ssl_images_cached(count: int, size: int, seed: int, source: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if source == "photos":
        return random_crops(load_photos(), count, size, generator=g)
    if source == "digits":
        images, _ = load_digits_images(size)
        return images[torch.randperm(len(images), generator=g)[:count]]
    if source == "synthetic":
        scenes = ShapesDetection(num_images=max(4, count // 4), image_size=max(2 * size, 64), num_classes=8, max_objects=6, seed=seed)
        return random_crops(torch.stack([scenes[i][0] for i in range(len(scenes))]), count, size, generator=g, scale=(0.5, 1.0))
    raise ValueError(f"unknown source {source!r}; choose 'photos', 'digits' or 'synthetic'")


# ---------------------------------------------------------------------------------------------
# A user's own images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


class ImageFolder(Dataset):
    """Images under ``root/<class name>/…``; labels are class indices in sorted-name order.

    Files directly under ``root`` (no class folders) form a single unlabelled class 0. PNG is read
    with ``matplotlib.image.imread`` (no Pillow needed); other formats need Pillow. Each item is
    ``(image (3, S, S) float32 in [0, 1], label)``, resized to ``image_size`` (aspect not kept).
    """

    def __init__(self, root: str | os.PathLike, image_size: int = 32) -> None:
        self.root, self.image_size = os.fspath(root), image_size
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"ImageFolder: {self.root!r} is not a directory")
        subdirs = sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
        self.classes = subdirs or ["."]
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(self.root, name)
            for fname in sorted(os.listdir(folder)):
                if fname.lower().endswith(IMAGE_SUFFIXES):
                    self.samples.append((os.path.join(folder, fname), label))
        if not self.samples:
            raise FileNotFoundError(f"ImageFolder: no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return _read_image(path, self.image_size), label


def _read_image(path: str, size: int) -> torch.Tensor:
    import matplotlib.image as mpimg

    if not path.lower().endswith(".png"):
        try:
            import PIL  # noqa: F401  (matplotlib reads non-PNG files through Pillow)
        except ImportError as exc:
            raise ImportError(f"reading {path!r} needs Pillow (only PNG is read without it): pip install pillow") from exc
    array = np.asarray(mpimg.imread(path))
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    array = array[:, :, :3]  # drop alpha
    image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
