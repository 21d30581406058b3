"""Pixel preprocessing and augmentation of reference §4.3, seeded through a torch.Generator.

What each dataset used in the reference, and what this module provides for it:

* CIFAR-10/100, STL-10, MNIST: uint8 / 255, nothing more (`normalize` without `mean_std`).
  With augmentation (only STL10_100aug in the paper): RandomCrop(size, padding=4, reflect) then
  RandomHorizontalFlip(0.5) -> `crop_flip`, vectorised over a uint8 or float NCHW batch.
* ImageNette / ImageNet, training: RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)), flip,
  then ImageNet mean/std -> `random_resized_crop` per PIL image at decode time, `normalize(x, IMAGENET_MEAN_STD)`.
* ImageNette / ImageNet, test and non-augmented training: Resize((size, size)) -> `resize`, a squash to a
  square with no centre crop; `resize(..., center_crop=True)` is the usual crop-then-resize, not the reference.

Differences from the reference (torchvision 0.8):
* `crop_flip` draws all offsets, then all flips, for the whole batch at once; same distribution as the
  per-image torchvision transforms, but a different random stream.
* `random_resized_crop` follows torchvision's RandomResizedCrop.get_params draw for draw, but crops and
  resizes in one Pillow call (`resize(box=...)`), which can differ from crop-then-resize by rounding at the
  crop border.
* Normalisation is a separate step on the uint8 batch (`normalize`), so datasets can stay uint8 in memory.

Named batch augmentations (`augment_batch`, on a float batch in [0, 1], for any dataset):
* "noise": the original's MNIST augmentation, x + N(0, 1) (its `MNIST_100aug`: noise_std 1; reference §4.3).
* "shift": a random translation by up to 2 pixels, no flip (reflect-pad-2 crop): ours, for digits,
  where the crop + flip of CIFAR would mirror the classes.
* "affine": a random rotation (up to 10 degrees either way), scaling (0.9-1.1) and translation (up to 2 pixels
  on each axis), bilinear, zero fill: ours, the usual small distortions of handwritten digits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RRC_SCALE, RRC_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def normalize(images: torch.Tensor, mean_std: Optional[tuple] = None) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] (float input is taken to be in [0, 1] already), then per-channel (x - mean) / std."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if mean_std is None:
        return x
    mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in mean_std)
    return (x - mean) / std


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-pad, size + pad) back inside like padding_mode='reflect' (edge pixel not repeated)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_flip(images: torch.Tensor, padding: int = 4, generator: Optional[torch.Generator] = None,
              flip_p: float = 0.5) -> torch.Tensor:
    """RandomCrop(H, W, padding, reflect) + RandomHorizontalFlip(flip_p) for every image of an NCHW batch.

    One gather builds all crops and flips at once: no padded copy and no per-image Python loop.
    Random numbers are drawn on the CPU (where `generator` lives) and moved to the batch's device.
    """
    n, c, h, w = images.shape
    if not 0 <= padding < min(h, w):
        raise ValueError(f"reflect padding must be in [0, {min(h, w)}) for {h}x{w} images, got {padding}")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < flip_p
    rows = _reflect(torch.arange(h) + dy[:, None] - padding, h)
    cols = _reflect(torch.arange(w) + dx[:, None] - padding, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    dev = images.device
    return images[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                  rows.to(dev).view(n, 1, h, 1), cols.to(dev).view(n, 1, 1, w)]


def affine_warp(images: torch.Tensor, degrees: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate image i of a float NCHW batch about its centre by ``degrees[i]`` (counter-clockwise on screen), scale it
    by ``scale[i]`` and move it by ``shift[i]`` = (right, down) pixels; bilinear, zeros outside the image."""
    n, _, h, w = images.shape
    angle = degrees.double().deg2rad()
    # Output pixel p (x right, y down, from the centre) shows input pixel M^-1 (p - shift), M = scale * R, where R,
    # a counter-clockwise turn on screen (y down), is [[cos, sin], [-sin, cos]].
    cos, sin = angle.cos() / scale.double(), angle.sin() / scale.double()
    inverse = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    offset = -(inverse @ shift.double()[:, :, None])[:, :, 0]
    # grid_sample's coordinates run from -1 to 1 across the image: pixels -> those units and back.
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64)
    theta = torch.cat([inverse * half[None, None, :] / half[None, :, None], (offset / half)[:, :, None]], 2)
    grid = torch.nn.functional.affine_grid(theta.to(images.device, images.dtype), [n, 1, h, w], align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(images: torch.Tensor, degrees: float = 10.0, scale: tuple[float, float] = (0.9, 1.1),
                  translate: float = 2.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``affine_warp`` of every image by its own uniform draws: an angle in [-degrees, degrees], a scale in
    ``scale``, a shift in [-translate, translate] pixels on each axis. Drawn on the CPU, where ``generator`` lives."""
    n = images.shape[0]
    angle = torch.empty(n, dtype=torch.float64).uniform_(-degrees, degrees, generator=generator)
    factor = torch.empty(n, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    shift = torch.empty(n, 2, dtype=torch.float64).uniform_(-translate, translate, generator=generator)
    return affine_warp(images, angle, factor, shift)


BATCH_AUGMENTATIONS = ("shift", "affine", "noise")


def augment_batch(x: torch.Tensor, name: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Apply the named augmentation (`BATCH_AUGMENTATIONS`) to a float NCHW batch in [0, 1]."""
    if name == "shift":
        return crop_flip(x, 2, generator, flip_p=0.0)
    if name == "affine":
        return random_affine(x, generator=generator)
    if name == "noise":
        return x + torch.randn(x.shape, generator=generator).to(x.device)
    raise ValueError(f"unknown augmentation {name!r}: expected one of {BATCH_AUGMENTATIONS}")


def random_resized_crop_box(width: int, height: int, generator: Optional[torch.Generator] = None,
                            scale: tuple[float, float] = RRC_SCALE,
                            ratio: tuple[float, float] = RRC_RATIO) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params, as a Pillow box (left, top, right, bottom)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, left + w, top + h
    # Ten misses (extreme aspect ratios): the largest centred crop whose ratio is inside `ratio`.
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def resized_crop(img: "Image", size: int, box: Optional[tuple[int, int, int, int]] = None,
                 flip: bool = False) -> torch.Tensor:
    """Crop `box` out of an RGB PIL image and resize it to size x size, bilinear like torchvision on PIL images.

    Returns uint8 (3, size, size), mirrored left-right if `flip`.
    """
    from PIL import Image as PILImage  # only folder datasets need Pillow

    out = img.resize((size, size), PILImage.Resampling.BILINEAR, box=box)
    chw = torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)
    return chw.flip(-1) if flip else chw


def random_resized_crop(img: "Image", size: int, generator: Optional[torch.Generator] = None,
                        scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
                        flip_p: float = 0.5) -> torch.Tensor:
    """RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip(flip_p) of a PIL image -> uint8 (3, size, size)."""
    box = random_resized_crop_box(img.width, img.height, generator, scale, ratio)
    flip = bool(torch.rand(1, generator=generator) < flip_p)
    return resized_crop(img, size, box, flip)


def resize(img: "Image", size: int, center_crop: bool = False) -> torch.Tensor:
    """Test transform: squash to size x size like the reference's Resize((w, h)), or crop the centred square first."""
    return resized_crop(img, size, center_square_box(img.width, img.height) if center_crop else None)
