"""Turning stored images into model inputs, batch by batch, for every training loop.

Images stay uint8 until a batch is taken; ``as_input`` turns a batch into [0, 1] floats, the only
preprocessing the paper uses for array datasets (the first block's BatchNorm standardises).
``Images`` are either a uint8 tensor (in memory, possibly on the GPU) or a dataset from
``softhebb.data`` (STL-10's memory-mapped unlabeled split, image folders decoded per batch, in
worker processes if asked); ``load_batch`` / ``iterate_batches`` hide the difference.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Sequence, Union

import torch
from tqdm import tqdm

from .augment import augment_batch, crop_flip, normalize
from .data import DatasetLike

Logger = Callable[[dict], None]
Checkpoint = Callable[[dict], None]
Images = Union[torch.Tensor, DatasetLike]
# False: none; True: the dataset's own training augmentation (reference §4.3: crop + flip for arrays,
# RandomResizedCrop + flip for image folders); a name of augment.BATCH_AUGMENTATIONS ("shift", "affine", "noise").
Augment = Union[bool, str]
PRECISIONS = ("fp32", "bf16")


def as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float32 in [0, 1]."""
    return images.float().div_(255.0)


def batch_seed(seed: int, *keys: int) -> int:
    """A seed for one batch's augmentation, from the run seed and the batch's place (stage, epoch, batch):
    the same images get the same crops whatever the number of workers, and a resumed run repeats them."""
    h = seed
    for k in keys:
        h = (h * 1_000_003 + k) % (2 ** 62)
    return h


def index_batches(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, order.numel(), batch_size):
        yield order[start:start + batch_size]


def load_batch(images: Images, idx: torch.Tensor, device: torch.device, augment: Augment = False,
               seed: int | None = None) -> torch.Tensor:
    """Model input for rows ``idx``: float32 on ``device``, in [0, 1] (ImageNet-normalised for image folders),
    augmented as ``augment`` says (see ``Augment``)."""
    if augment and seed is None:
        raise ValueError("augmented batches need a seed (batch_seed): the global RNG would shift the dropout masks")
    gen = torch.Generator().manual_seed(seed) if augment else None
    if isinstance(images, torch.Tensor):
        x = images.index_select(0, idx.to(images.device))
        return _to_input(crop_flip(x, 4, gen) if augment is True else x, device, augment, gen)
    return _to_input(images.get_images(idx.cpu(), augment is True, gen), device, augment, gen, images.mean_std)


def _to_input(x: torch.Tensor, device: torch.device, augment: Augment, gen: torch.Generator | None,
              mean_std: tuple | None = None) -> torch.Tensor:
    """A decoded uint8 batch -> [0, 1] floats on ``device``, then the named augmentation (on [0, 1] pixels,
    whatever the dataset's normalisation), then the dataset's mean/std."""
    x = as_input(x.to(device, non_blocking=True))
    if isinstance(augment, str):
        x = augment_batch(x, augment, gen)
    return normalize(x, mean_std) if mean_std is not None else x


class _DecodedBatches(torch.utils.data.Dataset):
    """Batch b of a list of index batches, decoded (and augmented) in a DataLoader worker."""

    def __init__(self, images: DatasetLike, batches: Sequence[torch.Tensor], augment: Augment, seeds: Sequence[int]) -> None:
        # CPU indices: a worker process must not touch CUDA
        self.images, self.batches, self.augment, self.seeds = images, [b.cpu() for b in batches], augment, seeds

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> torch.Tensor:
        own = self.augment is True  # a named augmentation is applied after decoding, in the main process
        gen = torch.Generator().manual_seed(self.seeds[b]) if own else None
        return self.images.get_images(self.batches[b], own, gen)


def iterate_batches(images: Images, batches: Sequence[torch.Tensor], device: torch.device, augment: Augment = False,
                    seeds: Sequence[int] | None = None, workers: int = 0) -> Iterator[torch.Tensor]:
    """Model inputs for each index batch in order (``seeds[b]``: batch b's augmentation seed).

    Datasets (not in-memory tensors) with ``workers`` > 0 decode in that many processes, a few batches ahead.
    """
    if augment and seeds is None:
        raise ValueError("augmented batches need per-batch seeds (batch_seed)")
    seeds = seeds if seeds is not None else [None] * len(batches)
    if isinstance(images, torch.Tensor) or workers == 0:
        for idx, seed in zip(batches, seeds):
            yield load_batch(images, idx, device, augment, seed)
        return
    # A private generator: the loader's base seed would otherwise be drawn from the global RNG, shifting
    # the probe's dropout masks with the number of workers.
    loader = torch.utils.data.DataLoader(_DecodedBatches(images, batches, augment, seeds), batch_size=None,
                                         num_workers=workers, prefetch_factor=4, pin_memory=device.type == "cuda",
                                         generator=torch.Generator())
    for x, seed in zip(loader, seeds):
        gen = torch.Generator().manual_seed(seed) if isinstance(augment, str) else None
        yield _to_input(x, device, augment, gen, images.mean_std)


def inputs_in_order(images: Images, starts: range, batch_size: int, device: torch.device,
                     workers: int = 0) -> Iterator[torch.Tensor]:
    """Model inputs of consecutive rows: slices of an in-memory tensor (no index copy, no sync), else decoded batches."""
    n = len(images)
    if isinstance(images, torch.Tensor):
        return (as_input(images[s:s + batch_size].to(device, non_blocking=True)) for s in starts)
    return iterate_batches(images, [torch.arange(s, min(s + batch_size, n)) for s in starts], device, workers=workers)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "img") -> tqdm:
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=0.5 if tty else 30, unit=unit,
                unit_scale=unit == "img", leave=tty, dynamic_ncols=True)

