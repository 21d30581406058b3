"""Loading MNIST, Fashion-MNIST, CIFAR-10/100, STL-10, ImageNette, ImageNet and image folders.

Training runs are only reproducible if the bytes they train on are the published ones, so every file is
checked against hard-coded checksums of its *content* where known (decompressed IDX bytes, CIFAR-10
arrays: re-compressed and re-packed copies pass), else of the official files (CIFAR-100, STL-10), else
by image counts (ImageNette, ImageNet).  Images stay uint8 in memory (float copies cost 4x the RAM;
training normalises per batch).  One module per on-disk format: `idx`, `cifar`, `stl`, `folders`;
`base` holds what they share, `safe` the pickle/archive hardening, `registry` the table and dispatch.

`load_dataset` returns an `ImageDataset` (one uint8 (N, C, H, W) tensor in `.images`, memory-mapped for
STL-10 unlabeled), a `ChainedDataset` (STL-10 train+unlabeled without copying) or a `FolderDataset`
(root/<class>/<image> decoded with Pillow per batch).  All follow `DatasetLike`: `name`, `split`,
`classes`, `num_classes`, `shape` (C, H, W), `len()`, `labels` (int64 (N,), `UNLABELED` = -1 for
STL-10's unlabeled images), `mean_std` (None: x / 255 only; else the mean/std to apply after it, see
`augment.normalize`) and `get_images(indices, augment=False, generator=None)` -> uint8 (B, C, H, W) on
the CPU; `augment=True` is crop+flip for arrays, RandomResizedCrop+flip for folders (reference §4.3).
"""

from ..augment import IMAGENET_MEAN_STD
from .base import (DATA_ENV, SPLITS, UNLABELED, ChainedDataset, DatasetError, DatasetInfo, DatasetLike, ImageDataset,
                   Indices, Protocol, Subset, random_subset, resolve_data_root, subset_indices)
from .folders import FolderDataset, open_rgb
from .registry import DATASETS, AnyDataset, load_dataset

__all__ = ["DATA_ENV", "DATASETS", "IMAGENET_MEAN_STD", "SPLITS", "UNLABELED", "AnyDataset", "ChainedDataset",
           "DatasetError", "DatasetInfo", "DatasetLike", "FolderDataset", "ImageDataset", "Indices", "Protocol",
           "Subset", "load_dataset", "open_rgb", "random_subset", "resolve_data_root", "subset_indices"]
