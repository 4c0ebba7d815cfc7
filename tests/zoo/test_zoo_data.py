"""Offline data: the synthetic detection set, scikit-learn's images, a user's image folder."""

import socket
import sys

import numpy as np
import pytest
import torch

from nndoctor.zoo import data


def test_shapes_detection_is_reproducible_and_well_formed():
    ds = data.ShapesDetection(num_images=8, image_size=64, num_classes=5, max_objects=4, seed=3)
    image, targets = ds[2]
    again, targets_again = ds[2]
    assert torch.equal(image, again) and torch.equal(targets, targets_again)
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    other = data.ShapesDetection(num_images=8, image_size=64, num_classes=5, seed=4)[2][0]
    assert not torch.equal(image, other)
    for i in range(len(ds)):
        _, t = ds[i]
        assert t.shape[1] == 5 and 1 <= len(t) <= 4
        assert ((t[:, 0] >= 0) & (t[:, 0] < 5) & (t[:, 0] == t[:, 0].round())).all()
        assert (t[:, 1:] >= 0).all() and (t[:, 1:] <= 1).all() and (t[:, 3:] > 0).all()


def test_shapes_boxes_are_tight_around_changed_pixels():
    ds = data.ShapesDetection(num_images=4, image_size=64, num_classes=3, max_objects=1, seed=0)
    background_only = data.ShapesDetection(num_images=4, image_size=64, num_classes=3, max_objects=1, seed=0, empty_fraction=1.0)
    for i in range(4):
        image, t = ds[i]
        bg, none = background_only[i]
        assert len(none) == 0
        changed = (image - bg).abs().sum(0) > 1e-3
        if changed.sum() == 0:  # the object was drawn nearly in the background colour
            continue
        ys, xs = torch.nonzero(changed, as_tuple=True)
        cx, cy, w, h = (t[0, 1:] * 64).tolist()
        assert xs.min() >= cx - w / 2 - 1 and xs.max() <= cx + w / 2 + 1
        assert ys.min() >= cy - h / 2 - 1 and ys.max() <= cy + h / 2 + 1


def test_collate_detection_adds_the_image_index():
    ds = data.ShapesDetection(num_images=3, image_size=32, seed=1)
    images, targets = data.collate_detection([ds[i] for i in range(3)])
    assert images.shape == (3, 3, 32, 32) and targets.shape[1] == 6
    counts = [len(ds[i][1]) for i in range(3)]
    assert torch.bincount(targets[:, 0].long(), minlength=3).tolist() == counts


def test_bad_detection_config_is_rejected():
    with pytest.raises(ValueError, match="num_classes must be in 1..8"):
        data.ShapesDetection(num_classes=12)


def test_synthetic_ssl_images_need_nothing():
    images = data.ssl_images(6, 32, source="synthetic")
    assert images.shape == (6, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match="unknown source"):
        data.ssl_images(2, 32, source="imagenet")


def test_sklearn_photos_and_digits_load_without_network(monkeypatch):

    def no_network(*args, **kwargs):
        raise AssertionError("nndoctor.zoo.data tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    photos = data.load_photos()
    assert photos.shape == (2, 3, 427, 640) and 0 <= photos.min() and photos.max() <= 1
    digits, labels = data.load_digits_images(16)
    assert digits.shape == (1797, 3, 16, 16) and sorted(labels.unique().tolist()) == list(range(10))
    crops = data.random_crops(photos, 5, 24, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 24, 24)


def test_missing_sklearn_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    data._photos_numpy.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"nndoctor\[zoo\]"):
            data.load_photos()
        with pytest.raises(ImportError, match="scikit-learn"):
            data.load_digits_images()
    finally:
        data._photos_numpy.cache_clear()


def test_image_folder_reads_pngs_with_matplotlib(tmp_path):
    import matplotlib.image as mpimg

    for cls, colour in (("cats", (1.0, 0.0, 0.0)), ("dogs", (0.0, 0.0, 1.0))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            mpimg.imsave(tmp_path / cls / f"{i}.png", np.ones((20, 30, 3)) * np.array(colour))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    ds = data.ImageFolder(tmp_path, image_size=16)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 4
    image, label = ds[3]
    assert image.shape == (3, 16, 16) and label == 1
    assert image[2].mean().item() == pytest.approx(1.0, abs=1e-3) and image[0].mean().item() == pytest.approx(0.0, abs=1e-3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.ImageFolder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no images"):
        data.ImageFolder(tmp_path)
