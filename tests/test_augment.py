"""Tests for softhebb.augment: crop+flip, normalisation, (random) resized crops, and ImageDataset's augment path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from softhebb import augment  # noqa: E402
from softhebb.data import ImageDataset  # noqa: E402


def batch(n: int = 6, c: int = 3, h: int = 10, w: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_crop_flip_shapes_dtype_and_seed():
    x = batch()
    for images in (x, x.float() / 255):
        out = augment.crop_flip(images, 4, torch.Generator().manual_seed(0))
        assert out.shape == images.shape and out.dtype == images.dtype
    a = augment.crop_flip(x, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, augment.crop_flip(x, 4, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, augment.crop_flip(x, 4, torch.Generator().manual_seed(4)))


def test_crop_flip_is_a_window_of_the_reflect_padded_image():
    x = batch(n=32)
    out = augment.crop_flip(x, 4, torch.Generator().manual_seed(0))
    padded = F.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    flipped = 0
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 10, dx:dx + 12] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(out[i].float(), win) for win in windows)
        mirrored = any(torch.equal(out[i].float(), win.flip(-1)) for win in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 0 < flipped < len(x)  # both outcomes of the coin occur


def test_crop_flip_without_padding_is_identity_or_mirror():
    x = batch()
    assert torch.equal(augment.crop_flip(x, 0, flip_p=0.0), x)
    assert torch.equal(augment.crop_flip(x, 0, flip_p=1.0), x.flip(-1))
    with pytest.raises(ValueError, match="reflect padding"):
        augment.crop_flip(x, 10)


def test_image_dataset_get_images_augment():
    x = batch()
    ds = ImageDataset("t", "train", x, torch.zeros(len(x), dtype=torch.int64), ("a",))
    assert torch.equal(ds.get_images([1, 0]), x[[1, 0]]) and ds.shape == (3, 10, 12) and ds.mean_std is None
    aug = ds.get_images(torch.arange(6), augment=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(aug, augment.crop_flip(x, 4, torch.Generator().manual_seed(0)))
    with pytest.raises(IndexError):
        ds.get_images([6])


def test_normalize_values():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert torch.equal(augment.normalize(x), x.float() / 255)
    out = augment.normalize(x, augment.IMAGENET_MEAN_STD)
    mean, std = (torch.tensor(v) for v in augment.IMAGENET_MEAN_STD)
    assert torch.allclose(out[0, :, 0, 0], -mean / std) and torch.allclose(out[0, :, 0, 1], (1 - mean) / std)
    assert torch.allclose(augment.normalize(x.float() / 255, augment.IMAGENET_MEAN_STD), out)


def test_random_resized_crop_box_bounds_and_fallback():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = augment.random_resized_crop_box(50, 30, g)
        assert 0 <= left < right <= 50 and 0 <= top < bottom <= 30
        w, h = right - left, bottom - top
        assert 0.08 * 1500 * 0.8 <= w * h <= 1500 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # A 100x1 strip never fits a ratio in [3/4, 4/3]: centred crop of the widest allowed ratio.
    assert augment.random_resized_crop_box(100, 1, g) == (49, 0, 50, 1)


def test_resize_squash_centre_crop_and_flip():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    squash = augment.resize(img, 8)
    assert squash.shape == (3, 8, 8) and squash[0, :, 0].min() > 200 and squash[2, :, -1].min() > 200
    centre = augment.resize(img, 8, center_crop=True)  # 20x20 square from x = 10..30
    assert centre[0, :, 0].min() > 200 and centre[2, :, -1].min() > 200
    mirrored = augment.resized_crop(img, 8, flip=True)
    assert torch.equal(mirrored, squash.flip(-1))
    a = augment.random_resized_crop(img, 8, torch.Generator().manual_seed(2))
    b = augment.random_resized_crop(img, 8, torch.Generator().manual_seed(2))
    assert a.shape == (3, 8, 8) and torch.equal(a, b)
