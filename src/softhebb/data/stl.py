"""STL-10: the raw uint8 .bin files of stl10_binary, memory-mapped; sizes are always checked, counts and
md5s of the official files only with verify=True (hashing 2.7 GB is not free)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

from .base import UNLABELED, ChainedDataset, DatasetError, DatasetInfo, ImageDataset, file_md5, require_file
from .safe import Archive

_ARCHIVE = Archive("stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb", "stl10_binary", "the .bin files")
# split -> (images file, labels file or None, official image count)
STL_FILES = {"train": ("train_X.bin", "train_y.bin", 5000), "test": ("test_X.bin", "test_y.bin", 8000),
             "unlabeled": ("unlabeled_X.bin", None, 100000)}
STL_MD5 = {"train_X.bin": "918c2871b30a85fa023e0c44e0bee87f", "train_y.bin": "5a34089d4802c674881badbb80307741",
           "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82", "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
           "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4"}


def load_stl(info: DatasetInfo, split: str, root: Path, download_ok: bool,
             verify: bool) -> Union[ImageDataset, ChainedDataset]:
    """One split of STL-10 ("train+unlabeled" chains the two without copying), extracting the archive when missing."""
    base = root / info.folder
    hint = _ARCHIVE.hint(info.url, base)
    folder = _ARCHIVE.extracted(info.url, base, download_ok, hint)
    classes_file = folder / "class_names.txt"
    if verify and classes_file.is_file():
        names = tuple(classes_file.read_text().split())
        if names != info.classes:
            raise DatasetError(f"{classes_file}: class names {names} differ from the official {info.classes}. " + hint)
    if split == "train+unlabeled":
        return ChainedDataset(info.name, split, [_stl_part(info, part, folder, verify, hint)
                                                 for part in ("train", "unlabeled")])
    return _stl_part(info, split, folder, verify, hint)


def _stl_part(info: DatasetInfo, split: str, folder: Path, verify: bool, hint: str) -> ImageDataset:
    images_name, labels_name, count = STL_FILES[split]
    image_bytes = int(np.prod(info.shape))
    paths = [folder / images_name] + ([folder / labels_name] if labels_name else [])
    for path in paths:
        require_file(path, hint)
    size = paths[0].stat().st_size  # size checks are free; hashing 2.7 GB is left to verify=True
    n, rest = divmod(size, image_bytes)
    if rest or not n:
        raise DatasetError(f"{paths[0]}: {size} bytes is not a positive multiple of {image_bytes} "
                           "(one 3x96x96 uint8 image); the file is truncated or not STL-10. " + hint)
    labels = _stl_labels(info, paths[1], n, paths[0], hint) if labels_name else np.full(n, UNLABELED, dtype=np.int64)
    if verify:
        if n != count:
            raise DatasetError(f"{paths[0]} holds {n} images, expected {count}. " + hint)
        for path in paths:
            if (got := file_md5(path)) != STL_MD5[path.name]:
                raise DatasetError(f"{path}: md5 is {got}, expected {STL_MD5[path.name]}. " + hint)
    # Copy-on-write map: nothing is read until indexed and the file is never written (read-only roots work).
    mapped = np.memmap(paths[0], dtype=np.uint8, mode="c", shape=(n, *info.shape))
    images = torch.from_numpy(mapped).transpose(2, 3)  # the files store each plane column-major
    if split != "unlabeled":  # 138 / 221 MB: cheaper in RAM than a transposing gather per batch
        images = images.contiguous()
    return ImageDataset(info.name, split, images, torch.from_numpy(labels), info.classes)


def _stl_labels(info: DatasetInfo, path: Path, n: int, images_path: Path, hint: str) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8)
    if len(labels) != n:
        raise DatasetError(f"{images_path} holds {n} images but {path} holds {len(labels)} labels; "
                           "the counts must match. " + hint)
    bad = np.flatnonzero((labels < 1) | (labels > info.num_classes))
    if bad.size:
        raise DatasetError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
                           f"1..{info.num_classes}. " + hint)
    return labels.astype(np.int64) - 1  # the files count classes from 1
