"""What every on-disk format shares: the dataset kinds in memory, the registry's record types, the
data root, and the checksum / download / "put file X at Y" helpers whose messages users act on."""

from __future__ import annotations

import hashlib
import os
import tempfile
import typing
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..augment import crop_flip

DATA_ENV = "SOFTHEBB_DATA"
SPLITS = ("train", "test")
UNLABELED = -1  # label of STL-10's unlabeled images (as in the reference and torchvision)
_DOWNLOAD_TIMEOUT_S = 30

Indices = Union[torch.Tensor, Sequence[int], np.ndarray]


class DatasetError(RuntimeError):
    """A dataset file is missing, malformed or not the published one; the message says how to fix it."""


@dataclass(frozen=True)
class Protocol:
    """A dataset's training protocol in the paper (reference §4.2); run options left unset take these."""
    in_memory: bool = True  # held as a uint8 tensor; features computed once unless the probe augments
    hebb_split: str = "train"  # the Hebbian phase's split (STL-10: its 100,000 unlabeled images)
    hebb_batch: int = 10
    hebb_images: int | None = None  # a seeded random sample of the split for the Hebbian phase (ImageNet: 10 %)
    hebb_augment: bool = False
    probe_epochs: int = 50
    probe_batch: int = 64
    probe_augment: bool = False  # features recomputed from augmented images every probe epoch


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the registry: what a dataset looks like and where its files live and come from."""
    name: str
    folder: str  # sub-folder of the data root
    shape: tuple[int, int, int]  # (C, H, W) of one image (as resized, for folder datasets)
    classes: tuple[str, ...]  # empty: only known from the class folders (ImageNet's 1000 wnids)
    url: str  # base URL of the IDX files, URL of the archive, or where to get it by hand
    splits: tuple[str, ...] = SPLITS
    n_classes: int = 0  # class count when `classes` is empty
    protocol: Protocol = Protocol()

    @property
    def num_classes(self) -> int:
        return len(self.classes) or self.n_classes


def as_indices(indices: Indices, n: int) -> torch.Tensor:
    """`indices` as a flat int64 CPU tensor, refused with IndexError unless all are in 0..n-1."""
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"indices must be in 0..{n - 1}, got {int(idx.min())}..{int(idx.max())}")
    return idx


class DatasetBase:
    """Shared by every dataset kind, so that the derived attributes cannot drift apart between them."""

    classes: tuple[str, ...]
    mean_std: Optional[tuple] = None  # None: array datasets are only divided by 255 (reference §4.3)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# eq=False: field-wise == on tensors is ambiguous, identity comparison is what callers expect.
@dataclass(frozen=True, eq=False)
class ImageDataset(DatasetBase):
    name: str
    split: str
    images: torch.Tensor  # uint8 (N, C, H, W); may be a lazy memory-mapped view (STL-10 unlabeled)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        # Fail here rather than deep inside a training step if a caller builds one by hand.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 ({len(self.images)},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (B, C, H, W) copy of the images at `indices`; `augment`: reflect-pad-4 crop + flip (§4.3)."""
        batch = self.images[as_indices(indices, len(self)).to(self.images.device)].contiguous()  # STL's map is transposed
        return crop_flip(batch, 4, generator) if augment else batch


def array_dataset(info: DatasetInfo, split: str, images: np.ndarray, labels: np.ndarray,
                  classes: tuple[str, ...]) -> ImageDataset:
    """An ImageDataset over arrays parsed from the files (labels widened to int64 as training expects)."""
    return ImageDataset(info.name, split, torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes)


class ChainedDataset(DatasetBase):
    """ImageDatasets of the same image shape and classes, indexed as one; concatenating STL-10
    train+unlabeled would copy 2.9 GB, this keeps the unlabeled part memory-mapped."""

    def __init__(self, name: str, split: str, parts: Sequence[ImageDataset]) -> None:
        if len({(p.shape, p.classes) for p in parts}) != 1:
            raise ValueError("chained datasets need the same image shape and classes")
        self.name, self.split, self.parts = name, split, tuple(parts)
        self.classes, self.shape = parts[0].classes, parts[0].shape
        self.labels = torch.cat([p.labels for p in parts])
        self._ends = torch.tensor([len(p) for p in parts]).cumsum(0)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        idx = as_indices(indices, len(self))
        part = torch.bucketize(idx, self._ends, right=True)
        out = torch.empty((len(idx), *self.shape), dtype=torch.uint8)
        for p, ds in enumerate(self.parts):
            sel = torch.nonzero(part == p).squeeze(1)
            if sel.numel():
                out[sel] = ds.images[idx[sel] - (self._ends[p] - len(ds))]
        return crop_flip(out, 4, generator) if augment else out


class Subset(DatasetBase):
    """Rows ``indices`` of a dataset, indexed from 0 (quick runs, ImageNet's 10 % Hebbian sample)."""

    def __init__(self, dataset: DatasetLike, indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, as_indices(indices, len(dataset))
        self.name, self.split, self.classes = dataset.name, dataset.split, dataset.classes
        self.mean_std, self.shape = dataset.mean_std, dataset.shape
        self.labels = dataset.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.dataset.get_images(self.indices[as_indices(indices, len(self))], augment, generator)


def subset_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """A seeded random ``size`` of ``range(n)``, sorted: the rows every ``--train-limit`` / ``--test-limit`` uses."""
    if size < 1:
        raise ValueError(f"a subset needs at least 1 row, got size {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def random_subset(dataset: DatasetLike, size: Optional[int], seed: int) -> DatasetLike:
    """A seeded random ``size`` rows of ``dataset`` in their original order (all of it if ``size`` is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    return Subset(dataset, subset_indices(len(dataset), size, seed))


# typing.Protocol spelled out: the bare name is the training-protocol dataclass above.
class DatasetLike(typing.Protocol):
    """What `load_dataset` returns (see the package docstring); training code should use only this."""

    name: str
    split: str
    classes: tuple[str, ...]
    labels: torch.Tensor
    mean_std: Optional[tuple]

    def __len__(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor: ...


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else $SOFTHEBB_DATA (lets offline machines share one read-only copy), else a user cache."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or "~/.cache/softhebb/data"
    return Path(chosen).expanduser()


# ----------------------------------------------------------------------------- checks shared by the formats

def require_file(path: Path, hint: str) -> None:
    """Refuse a missing file with the format's fix-it hint."""
    if not path.is_file():
        raise DatasetError(f"{path} not found. " + hint)


def file_md5(path: Path) -> str:
    """md5 of a file read in 4 MB chunks, so a 2.7 GB STL-10 file does not have to fit in memory."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def check_label_range(labels: np.ndarray, info: DatasetInfo, path: Path) -> None:
    """Refuse labels outside 0..num_classes-1, naming the first one, before they index a one-hot row."""
    bad = np.flatnonzero((labels < 0) | (labels >= info.num_classes))
    if bad.size:
        raise DatasetError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
                           f"0..{info.num_classes - 1}. Re-fetch it from {info.url}.")


# ----------------------------------------------------------------------------- downloads

def download_hint(url: str, md5: str, dest: Path) -> str:
    """The "put file X at Y" sentence every missing-file error ends with, so offline users can fix it by hand."""
    return f"Get it from {url} (md5 {md5}) and put it at {dest}."


def download(url: str, dest: Path, md5: str) -> None:
    """Stream to a hidden temp file next to `dest` and rename only after the md5 matches, so no partial file survives."""
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            raise DatasetError(f"Downloaded {url} for {dest} has md5 {digest.hexdigest()}, expected {md5}. "
                               + download_hint(url, md5, dest))
        os.replace(tmp, dest)
        tmp = None
    except DatasetError:
        raise
    except Exception as err:  # offline, HTTP error, read-only root, truncated transfer, ...
        raise DatasetError(f"{dest} is missing and downloading it failed ({err}). "
                           + download_hint(url, md5, dest)) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
