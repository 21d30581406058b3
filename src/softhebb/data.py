"""Loading MNIST, Fashion-MNIST, CIFAR-10/100, STL-10, ImageNette, ImageNet and image folders.

Training runs are only reproducible if the bytes they train on are the published ones, so every
file is checked against hard-coded checksums of its *content* (decompressed IDX bytes, CIFAR-10
pixel/label arrays) where those are known, else of the official files (CIFAR-100, STL-10), else by
image counts (ImageNette, ImageNet).  Content hashes, unlike archive md5s, also accept re-compressed
copies (Debian's Fashion-MNIST) and re-packed copies (the CIFAR-10 batches in the shared data folder).
Images stay uint8 in memory: float copies would cost 4x the RAM for no benefit (STL-10 unlabeled as
float32 needed 22 GB in the reference), and the training code normalises per batch anyway.

Dataset interface (`DatasetLike`), shared by the three kinds `load_dataset` returns:

* `ImageDataset`: all images as one uint8 (N, C, H, W) tensor in `.images` (memory-mapped and lazy for
  STL-10 unlabeled); every array dataset.
* `ChainedDataset`: several ImageDatasets seen as one without copying (STL-10 train+unlabeled).
* `FolderDataset`: root/<class>/<image> files decoded with Pillow per batch (ImageNette, ImageNet, own data).

All have `name`, `split`, `classes`, `num_classes`, `shape` (C, H, W), `len()`, `labels` (int64 (N,),
`UNLABELED` = -1 for STL-10's unlabeled images), `mean_std` (None: x / 255 only; else the mean/std to
apply after it, see `augment.normalize`) and `get_images(indices, augment=False, generator=None)` ->
uint8 (B, C, H, W) on the CPU.  `augment=True` is crop+flip for arrays and RandomResizedCrop+flip for
folders (reference §4.3); only `ImageDataset` has `.images`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Optional, Protocol, Sequence, Union

import numpy as np
import torch

from .augment import IMAGENET_MEAN_STD, crop_flip, random_resized_crop, resize

try:  # numpy >= 2 (old pickles name numpy.core, which is a deprecated alias there)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

DATA_ENV = "SOFTHEBB_DATA"
SPLITS = ("train", "test")
UNLABELED = -1  # label of STL-10's unlabeled images (as in the reference and torchvision)
# Debian/Ubuntu package `dataset-fashion-mnist` installs the four IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
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


def _as_indices(indices: Indices, n: int) -> torch.Tensor:
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise IndexError(f"indices must be in 0..{n - 1}, got {int(idx.min())}..{int(idx.max())}")
    return idx


# eq=False: field-wise == on tensors is ambiguous, identity comparison is what callers expect.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    name: str
    split: str
    images: torch.Tensor  # uint8 (N, C, H, W); may be a lazy memory-mapped view (STL-10 unlabeled)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]

    mean_std = None  # class constant, not a field: array datasets are only divided by 255 (reference §4.3)

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
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 (B, C, H, W) copy of the images at `indices`; `augment`: reflect-pad-4 crop + flip (§4.3)."""
        batch = self.images[_as_indices(indices, len(self)).to(self.images.device)].contiguous()  # STL's map is transposed
        return crop_flip(batch, 4, generator) if augment else batch


class ChainedDataset:
    """ImageDatasets of the same image shape and classes, indexed as one; concatenating STL-10
    train+unlabeled would copy 2.9 GB, this keeps the unlabeled part memory-mapped."""

    mean_std = None

    def __init__(self, name: str, split: str, parts: Sequence[ImageDataset]) -> None:
        if len({(p.shape, p.classes) for p in parts}) != 1:
            raise ValueError("chained datasets need the same image shape and classes")
        self.name, self.split, self.parts = name, split, tuple(parts)
        self.classes, self.shape = parts[0].classes, parts[0].shape
        self.labels = torch.cat([p.labels for p in parts])
        self._ends = torch.tensor([len(p) for p in parts]).cumsum(0)

    def __len__(self) -> int:
        return int(self._ends[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        idx = _as_indices(indices, len(self))
        part = torch.bucketize(idx, self._ends, right=True)
        out = torch.empty((len(idx), *self.shape), dtype=torch.uint8)
        for p, ds in enumerate(self.parts):
            sel = torch.nonzero(part == p).squeeze(1)
            if sel.numel():
                out[sel] = ds.images[idx[sel] - (self._ends[p] - len(ds))]
        return crop_flip(out, 4, generator) if augment else out


class Subset:
    """Rows ``indices`` of a dataset, indexed from 0 (quick runs, ImageNet's 10 % Hebbian sample)."""

    def __init__(self, dataset: "DatasetLike", indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, _as_indices(indices, len(dataset))
        self.name, self.split, self.classes = dataset.name, dataset.split, dataset.classes
        self.mean_std, self.shape = dataset.mean_std, dataset.shape
        self.labels = dataset.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.dataset.get_images(self.indices[_as_indices(indices, len(self))], augment, generator)


def subset_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """A seeded random ``size`` of ``range(n)``, sorted: the rows every ``--train-limit`` / ``--test-limit`` uses."""
    if size < 1:
        raise ValueError(f"a subset needs at least 1 row, got size {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def random_subset(dataset: "DatasetLike", size: Optional[int], seed: int) -> "DatasetLike":
    """A seeded random ``size`` rows of ``dataset`` in their original order (all of it if ``size`` is None or larger)."""
    if size is None or size >= len(dataset):
        return dataset
    return Subset(dataset, subset_indices(len(dataset), size, seed))


# Dataset archives and file browsers leave these next to images; anything else that is not an image is an error.
_IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"})
_IGNORED_EXTS = frozenset({".txt", ".csv", ".json", ".md", ".xml", ".db", ".ini", ".mat", ".sh",
                           ".tar", ".tgz", ".gz", ".zip"})


def _ignored(name: str) -> bool:
    return name.startswith(".") or os.path.splitext(name)[1].lower() in _IGNORED_EXTS


class FolderDataset:
    """Images in `root/<class>/<image>`, decoded with Pillow to RGB uint8 only when a batch is asked for.

    Files are listed once, sorted by class then file name, so indices are deterministic.  Class i is
    `classes[i]`: by default the sorted folder names; pass the training split's `classes` for a test
    split so that the indices agree even if a class folder is missing there.  Hidden files and known
    sidecar files (.txt, .csv, ...) are skipped; any other non-image file, a nested folder, an empty
    class folder or an empty root raises DatasetError naming it; an image that does not decode
    raises DatasetError naming it when its batch is built.  Test transform: squash to size x size
    (reference), or `center_crop=True` for the centred square.
    """

    def __init__(self, root: Union[str, os.PathLike], size: int, classes: Optional[Sequence[str]] = None,
                 name: str = "folder", split: str = "train",
                 mean_std: Optional[tuple] = IMAGENET_MEAN_STD, center_crop: bool = False) -> None:
        self.root, self.size, self.name, self.split = Path(root), size, name, split
        self.mean_std, self.center_crop = mean_std, center_crop
        found = _class_folders(self.root)
        self.classes = tuple(classes) if classes is not None else tuple(found)
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise DatasetError(f"{self.root / unknown[0]} is not one of the {len(self.classes)} known classes "
                               f"({', '.join(self.classes[:5])}, ...); remove it or use the training split's classes.")
        files, labels = [], []
        for cls in found:
            names = _image_files(self.root / cls)
            files += [os.fsencode(f"{cls}/{n}") for n in names]
            labels += [self.classes.index(cls)] * len(names)
        # One bytes array instead of a list of Paths: ~30 B per file instead of ~200, and DataLoader worker
        # processes do not copy it page by page through reference counting.
        self._files = np.array(files, dtype=bytes)
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self._files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return 3, self.size, self.size

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self._files[index])

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decode, then RandomResizedCrop + flip if `augment`, else the test resize -> uint8 (B, 3, size, size)."""
        idx = _as_indices(indices, len(self))
        out = torch.empty((len(idx), *self.shape), dtype=torch.uint8)
        for k, i in enumerate(idx.tolist()):
            img = open_rgb(self.path(i))
            out[k] = (random_resized_crop(img, self.size, generator) if augment
                      else resize(img, self.size, self.center_crop))
        return out


def open_rgb(path: Path):
    """Decode an image file to an RGB PIL image (grey, CMYK and palette images are converted)."""
    try:
        from PIL import Image
    except ImportError as err:
        raise DatasetError(f"Decoding {path} needs Pillow: pip install pillow") from err
    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() decodes everything, so a truncated file fails here
    except Exception as err:  # UnidentifiedImageError, truncated data, decompression bombs, ...
        raise DatasetError(f"{path} cannot be decoded as an image ({err}); replace or delete it.") from err


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; expected {root}/<class>/<image files>.")
    classes = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir():
            if not entry.name.startswith("."):
                classes.append(entry.name)
        elif not _ignored(entry.name):
            raise DatasetError(f"{entry.path}: files must be inside a class folder ({root}/<class>/<image>).")
    if not classes:
        raise DatasetError(f"{root} holds no class folders; expected {root}/<class>/<image files>.")
    return classes


def _image_files(folder: Path) -> list[str]:
    names = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if _ignored(entry.name):
            continue
        if entry.is_dir():
            raise DatasetError(f"{entry.path}: nested folders are not supported; images must sit directly "
                               f"in the class folder {folder}.")
        if os.path.splitext(entry.name)[1].lower() not in _IMAGE_EXTS:
            raise DatasetError(f"{entry.path} is not an image file (accepted: {', '.join(sorted(_IMAGE_EXTS))}); "
                               "move it out of the dataset folder.")
        names.append(entry.name)
    if not names:
        raise DatasetError(f"Class folder {folder} holds no images; add some or remove the folder.")
    return names


class DatasetLike(Protocol):
    """What `load_dataset` returns (see the module docstring); training code should use only this."""

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


_CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
    pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
    skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())
# ImageNette's classes are its folder names (ImageNet wnids): tench, English springer, cassette player, chain saw,
# church, French horn, garbage truck, gas pump, golf ball, parachute.
_IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                     "n03425413", "n03445777", "n03888257")

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", "mnist", (1, 28, 28), tuple(str(d) for d in range(10)),
                         "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "fashion-mnist", (1, 28, 28),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    "cifar10": DatasetInfo(
        "cifar10", "cifar10", (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": DatasetInfo("cifar100", "cifar100", (3, 32, 32), _CIFAR100_CLASSES,
                            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "stl10": DatasetInfo(
        "stl10", "stl10", (3, 96, 96),
        ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        splits=("train", "test", "unlabeled", "train+unlabeled"),
        protocol=Protocol(in_memory=False, hebb_split="unlabeled", hebb_batch=32, probe_epochs=100, probe_augment=True)),
    # Folder datasets: "test" is the official val/ folder; images are resized to the reference's 160 px.
    "imagenette": DatasetInfo("imagenette", "imagenette", (3, 160, 160), _IMAGENETTE_WNIDS,
                              "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
                              protocol=Protocol(in_memory=False, probe_epochs=200, probe_batch=32, probe_augment=True)),
    # all 1,281,167 training images for the probe (the original drew only from the first 1,000,000)
    "imagenet": DatasetInfo("imagenet", "imagenet", (3, 160, 160), (), "https://image-net.org/download-images",
                            n_classes=1000, protocol=Protocol(in_memory=False, hebb_images=128_116, hebb_augment=True,
                                                              probe_epochs=200, probe_batch=32, probe_augment=True)),
}
AnyDataset = Union[ImageDataset, ChainedDataset, FolderDataset]

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
# file -> (md5 of the official .gz, for downloads; sha256 of the decompressed bytes, for content)
_IDX_CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}


@dataclass(frozen=True)
class _CifarFormat:
    """Where the python-pickle versions of CIFAR-10 and CIFAR-100 differ; the loading code is shared."""
    folder: str  # what the archive extracts to
    archive: str
    archive_md5: str
    batches: dict[str, tuple[str, ...]]  # split -> batch files
    labels_key: bytes
    meta: str
    names_key: bytes


_CIFAR = {
    "cifar10": _CifarFormat("cifar-10-batches-py", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                            {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                            b"labels", "batches.meta", b"label_names"),
    "cifar100": _CifarFormat("cifar-100-python", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                             {"train": ("train",), "test": ("test",)}, b"fine_labels", "meta", b"fine_label_names"),
}
# batch -> (sha256 of `data` as uint8 [10000, 3072], sha256 of labels as uint8)
_CIFAR_SHA256 = {
    "data_batch_1": ("a50e8b48728e1667d682a807155c375279d5ae321fb12242c02e3104a6bc8b21", "d829dbdf32167c9d7b3687cee66d92d80d46c441308b5aca0d11e8b69e27dac9"),
    "data_batch_2": ("0b825e5592c3b72ea18d6ec2ff5f5b19d33e41a75f5039054a9bb87be3cf69a0", "5d18f7371ed35ea9ade77952fe958b0660a45cd6c8b8a8970030f21612cfd7e3"),
    "data_batch_3": ("c6ee1dd4601a69ec085d8ebf53ee6441775491a6839a0a9ae8fa198e88a3a429", "32cf77b0ee2e790b1c4384d2d82e42dc1571b87e67f6da8f444b2725b2973f65"),
    "data_batch_4": ("1f6b6c799cff375a9f8fae2fac909d51ee09f38a6a60eebb9e8fec6f47ddc48f", "d2815e3f8f656272864920fc0edde56b04ec9cf81bf397c0dd3069f4aea51aeb"),
    "data_batch_5": ("58e3bbf713e28357476a351d3a05d056372f94c681d04ca9d62a076fdf2a643b", "2ddf3ab27d5d04409c94ce7b56849c243129c10de1058ae0bfe14c77e934800c"),
    "test_batch": ("177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56", "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
}


# CIFAR-100 content hashes are not known here, only the md5s of the official extracted files (as torchvision
# lists them), so a re-packed CIFAR-100 copy needs verify=False.
_CIFAR100_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}

_STL_DIR, _STL_ARCHIVE, _STL_ARCHIVE_MD5 = "stl10_binary", "stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb"
# split -> (images file, labels file or None, official image count)
_STL_FILES = {"train": ("train_X.bin", "train_y.bin", 5000), "test": ("test_X.bin", "test_y.bin", 8000),
              "unlabeled": ("unlabeled_X.bin", None, 100000)}
_STL_MD5 = {"train_X.bin": "918c2871b30a85fa023e0c44e0bee87f", "train_y.bin": "5a34089d4802c674881badbb80307741",
            "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82", "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
            "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4"}

_IMAGENETTE_DIR, _IMAGENETTE_ARCHIVE = "imagenette2-160", "imagenette2-160.tgz"
_IMAGENETTE_ARCHIVE_MD5 = "e793b78cc4c9e9a4ccc0c1155377a412"
_FOLDER_SPLITS = {"train": "train", "test": "val"}
# Official image counts, checked when verify=True (file-level checksums of 1.3 M JPEGs would be a file of their own).
_FOLDER_COUNTS = {"imagenette": {"train": 9469, "test": 3925}, "imagenet": {"train": 1281167, "test": 50000}}


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else $SOFTHEBB_DATA (lets offline machines share one read-only copy), else a user cache."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or "~/.cache/softhebb/data"
    return Path(chosen).expanduser()


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None,
                 download: bool = True, verify: bool = True) -> AnyDataset:
    """Load one split: uint8 images (in memory, memory-mapped, or as files decoded per batch) + int64 labels.

    Only missing files are downloaded, and content is checked against the published data unless
    `verify=False` (meant for tiny synthetic files in tests), so results are comparable across machines.
    """
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    info, data_root = DATASETS[name], resolve_data_root(root)
    if split not in info.splits:
        raise DatasetError(f"Unknown split {split!r} for {name}; valid splits: {', '.join(info.splits)}")
    if name == "stl10":
        return _load_stl(info, split, data_root, download, verify)
    if name == "imagenette":
        return _load_imagenette(info, split, data_root, download, verify)
    if name == "imagenet":
        return _load_imagenet(info, split, data_root, verify)
    if name in _CIFAR:
        images, labels, classes = _load_cifar(info, split, data_root, download, verify)
    else:
        images, labels, classes = _load_idx_pair(info, split, data_root, download, verify)
    return ImageDataset(name, split, torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes)


# ----------------------------------------------------------------------------- downloads

def _hint(url: str, md5: str, dest: Path) -> str:
    return f"Get it from {url} (md5 {md5}) and put it at {dest}."


def _download(url: str, dest: Path, md5: str) -> None:
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
                               + _hint(url, md5, dest))
        os.replace(tmp, dest)
        tmp = None
    except DatasetError:
        raise
    except Exception as err:  # offline, HTTP error, read-only root, truncated transfer, ...
        raise DatasetError(f"{dest} is missing and downloading it failed ({err}). " + _hint(url, md5, dest)) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- IDX (MNIST-type)

def _load_idx_pair(info: DatasetInfo, split: str, root: Path, download: bool, verify: bool):
    folder = root / info.folder
    if info.name == "fashion-mnist" and not folder.exists() and DEBIAN_FASHION_MNIST.is_dir():
        folder = DEBIAN_FASHION_MNIST
    images_name, labels_name = _IDX_FILES[split]
    images, images_path = _read_idx(info, root, folder, images_name, _IMAGES_MAGIC, download, verify)
    labels, labels_path = _read_idx(info, root, folder, labels_name, _LABELS_MAGIC, download, verify)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels; the counts must match. Re-fetch both from {info.url}.")
    _check_label_range(labels, info, labels_path)
    return images.reshape(len(images), *info.shape), labels, info.classes


def _read_idx(info: DatasetInfo, root: Path, folder: Path, name: str, magic: int,
              download: bool, verify: bool) -> tuple[np.ndarray, Path]:
    """Find (or download) one IDX file, parse it and check its content; returns the array and the path it came from."""
    md5, sha256 = _IDX_CHECKSUMS[info.name][name]
    url, dest = info.url + name + ".gz", root / info.folder / (name + ".gz")
    hint = _hint(url, md5, dest) + " An uncompressed copy without .gz is accepted too."
    path = next((p for p in (folder / name, folder / (name + ".gz")) if p.is_file()), None)
    if path is None:
        if not download:
            raise DatasetError(f"{dest} not found (download=False). " + hint)
        _download(url, dest, md5)
        path = dest
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path} cannot be read or decompressed ({err}). " + hint) from err
    array = _parse_idx(data, magic, path, hint)
    if verify and (got := hashlib.sha256(data).hexdigest()) != sha256:
        raise DatasetError(f"{path}: sha256 of the decompressed content is {got}, expected {sha256}. " + hint)
    if magic == _IMAGES_MAGIC and array.shape[1:] != info.shape[1:]:
        raise DatasetError(f"{path}: images are {array.shape[1:]}, expected {info.shape[1:]}. " + hint)
    return array, path


def _parse_idx(data: bytes, magic: int, path: Path, hint: str) -> np.ndarray:
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: magic number is {found}, expected {magic}. " + hint)
    ndim = magic & 0xFF  # low byte of the magic number is the number of dimensions; 0x08 above it = uint8
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: {len(data)} bytes is shorter than the {header}-byte IDX header. " + hint)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise DatasetError(f"{path}: payload is {len(data) - header} bytes but the header dims {dims} "
                           f"need {int(np.prod(dims))}. " + hint)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _check_label_range(labels: np.ndarray, info: DatasetInfo, path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= info.num_classes))
    if bad.size:
        raise DatasetError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
                           f"0..{info.num_classes - 1}. Re-fetch it from {info.url}.")


# ----------------------------------------------------------------------------- CIFAR-10/100 python batches

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The batches are pickles; a plain pickle.load would run any callable an attacker names, so allow only array rebuilding."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                ("numpy", "ndarray"): np.ndarray,
                ("numpy", "dtype"): np.dtype}

    def __init__(self, file, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(f"{self.path}: refusing to unpickle {module}.{name}; a CIFAR batch only "
                               "contains numpy arrays, lists, bytes and ints.") from None


def _unpickle(path: Path, hint: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as err:  # truncated / garbage pickles raise many different types
        raise DatasetError(f"{path} is not a readable CIFAR pickle ({err!r}). " + hint) from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(obj).__name__}. " + hint)
    return obj


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _load_cifar(info: DatasetInfo, split: str, root: Path, download: bool, verify: bool):
    fmt, base = _CIFAR[info.name], root / info.folder
    hint = (_hint(info.url, fmt.archive_md5, base / fmt.archive)
            + f" (or extract it so that {base / fmt.folder} holds the batch files).")
    batch_dir = _extracted_dir(info.url, base, fmt.folder, fmt.archive, fmt.archive_md5, download, hint)
    key = fmt.labels_key.decode()
    images, labels = [], []
    for name in fmt.batches[split]:
        path = batch_dir / name
        if not path.is_file():
            raise DatasetError(f"{path} not found. " + hint)
        batch = _unpickle(path, hint)
        data, batch_labels = batch.get(b"data"), np.asarray(batch.get(fmt.labels_key, []))
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == int(np.prod(info.shape))):
            raise DatasetError(f"{path}: 'data' must be a uint8 array [N, 3072]. " + hint)
        if batch_labels.shape != (len(data),) or not np.issubdtype(batch_labels.dtype, np.integer):
            raise DatasetError(f"{path}: '{key}' must be {len(data)} integers, "
                               f"found shape {batch_labels.shape}. " + hint)
        _check_label_range(batch_labels, info, path)
        if verify and name in _CIFAR_SHA256:
            got = (hashlib.sha256(np.ascontiguousarray(data)).hexdigest(),
                   hashlib.sha256(batch_labels.astype(np.uint8).tobytes()).hexdigest())
            if got != _CIFAR_SHA256[name]:
                raise DatasetError(f"{path}: sha256 of (data, labels as uint8) is {got}, "
                                   f"expected {_CIFAR_SHA256[name]}. " + hint)
        elif verify and (got := _file_md5(path)) != _CIFAR100_MD5[name]:
            raise DatasetError(f"{path}: md5 is {got}, expected {_CIFAR100_MD5[name]} (the official file). " + hint)
        images.append(data.reshape(len(data), *info.shape))  # rows are R plane, G plane, B plane
        labels.append(batch_labels)
    classes = _cifar_classes(info, batch_dir / fmt.meta, fmt.names_key, verify, hint)
    return np.concatenate(images), np.concatenate(labels), classes


def _cifar_classes(info: DatasetInfo, path: Path, key: bytes, verify: bool, hint: str) -> tuple[str, ...]:
    if not path.is_file():
        raise DatasetError(f"{path} not found. " + hint)
    names = _unpickle(path, hint).get(key)
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names) or len(names) != info.num_classes:
        raise DatasetError(f"{path}: expected '{key.decode()}' with {info.num_classes} byte strings. " + hint)
    classes = tuple(n.decode() for n in names)
    if verify and classes != info.classes:
        raise DatasetError(f"{path}: class names {classes} differ from the official {info.classes}. " + hint)
    return classes


# ----------------------------------------------------------------------------- archives

def _extracted_dir(url: str, base: Path, folder: str, archive_name: str, md5: str, download: bool, hint: str) -> Path:
    """`base/folder`, extracting it from `base/archive_name` first (downloading that if allowed) when missing."""
    target, archive = base / folder, base / archive_name
    if target.is_dir():
        return target
    if not archive.is_file():
        if not download:
            raise DatasetError(f"Neither {target} nor {archive} exists (download=False). " + hint)
        _download(url, archive, md5)
    _safe_extract(archive, base, folder, hint)
    return target


_EXPANSION_LIMIT = 3


def _safe_extract(archive: Path, base: Path, folder: str, hint: str) -> None:
    """Extract into a temp dir and rename `folder` into place, so a bad or interrupted archive leaves nothing behind."""
    tmp: Path | None = None
    # The datasets' archives are JPEGs and raw pixels that gzip hardly shrinks; a far larger expansion is a
    # decompression bomb, refused before it fills the disk.
    budget = _EXPANSION_LIMIT * archive.stat().st_size + (16 << 20)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                budget -= member.size
                if budget < 0:
                    raise DatasetError(f"{archive}: its members expand to more than {_EXPANSION_LIMIT}x the archive's "
                                       f"size (at {member.name!r}); not a dataset archive, refusing to extract. " + hint)
                parts = PurePosixPath(member.name).parts
                if (member.name.startswith(("/", "\\")) or PureWindowsPath(member.name).drive
                        or ".." in parts or not (member.isfile() or member.isdir())):
                    raise DatasetError(f"{archive}: unsafe archive member {member.name!r} (absolute path, '..', "
                                       "link or device); refusing to extract. " + hint)
                target = tmp.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not (tmp / folder).is_dir():
            raise DatasetError(f"{archive} does not contain the folder {folder}/. " + hint)
        os.replace(tmp / folder, base / folder)
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        raise DatasetError(f"{archive} cannot be extracted into {base} ({err}). " + hint) from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- STL-10 binaries

def _load_stl(info: DatasetInfo, split: str, root: Path, download: bool, verify: bool) -> AnyDataset:
    base = root / info.folder
    hint = (_hint(info.url, _STL_ARCHIVE_MD5, base / _STL_ARCHIVE)
            + f" (or extract it so that {base / _STL_DIR} holds the .bin files).")
    folder = _extracted_dir(info.url, base, _STL_DIR, _STL_ARCHIVE, _STL_ARCHIVE_MD5, download, hint)
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
    images_name, labels_name, count = _STL_FILES[split]
    image_bytes = int(np.prod(info.shape))
    paths = [folder / images_name] + ([folder / labels_name] if labels_name else [])
    for path in paths:
        if not path.is_file():
            raise DatasetError(f"{path} not found. " + hint)
    size = paths[0].stat().st_size  # size checks are free; hashing 2.7 GB is left to verify=True
    n, rest = divmod(size, image_bytes)
    if rest or not n:
        raise DatasetError(f"{paths[0]}: {size} bytes is not a positive multiple of {image_bytes} "
                           "(one 3x96x96 uint8 image); the file is truncated or not STL-10. " + hint)
    if labels_name:
        labels = np.fromfile(paths[1], dtype=np.uint8)
        if len(labels) != n:
            raise DatasetError(f"{paths[0]} holds {n} images but {paths[1]} holds {len(labels)} labels; "
                               "the counts must match. " + hint)
        bad = np.flatnonzero((labels < 1) | (labels > info.num_classes))
        if bad.size:
            raise DatasetError(f"{paths[1]}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
                               f"1..{info.num_classes}. " + hint)
        labels = labels.astype(np.int64) - 1  # the files count classes from 1
    else:
        labels = np.full(n, UNLABELED, dtype=np.int64)
    if verify:
        if n != count:
            raise DatasetError(f"{paths[0]} holds {n} images, expected {count}. " + hint)
        for path in paths:
            if (got := _file_md5(path)) != _STL_MD5[path.name]:
                raise DatasetError(f"{path}: md5 is {got}, expected {_STL_MD5[path.name]}. " + hint)
    # Copy-on-write map: nothing is read until indexed and the file is never written (read-only roots work).
    mapped = np.memmap(paths[0], dtype=np.uint8, mode="c", shape=(n, *info.shape))
    images = torch.from_numpy(mapped).transpose(2, 3)  # the files store each plane column-major
    if split != "unlabeled":  # 138 / 221 MB: cheaper in RAM than a transposing gather per batch
        images = images.contiguous()
    return ImageDataset(info.name, split, images, torch.from_numpy(labels), info.classes)


# ----------------------------------------------------------------------------- ImageNette / ImageNet folders

def _checked_folder(info: DatasetInfo, split: str, folder: Path, verify: bool, hint: str,
                    classes: Optional[Sequence[str]] = None, classes_dir: Optional[Path] = None) -> FolderDataset:
    try:
        if classes_dir is not None:
            classes = _class_folders(classes_dir)
        ds = FolderDataset(folder, info.shape[-1], classes, name=info.name, split=split)
    except DatasetError as err:
        raise DatasetError(f"{err} {hint}") from None
    if verify:
        expected = _FOLDER_COUNTS[info.name][split]
        if ds.num_classes != info.num_classes or len(ds) != expected:
            raise DatasetError(f"{folder} holds {len(ds)} images in {ds.num_classes} classes, expected {expected} "
                               f"in {info.num_classes}. " + hint)
    return ds


def _load_imagenette(info: DatasetInfo, split: str, root: Path, download: bool, verify: bool) -> FolderDataset:
    base = root / info.folder
    hint = (_hint(info.url, _IMAGENETTE_ARCHIVE_MD5, base / _IMAGENETTE_ARCHIVE)
            + f" (or extract it so that {base / _IMAGENETTE_DIR} holds train/ and val/).")
    folder = _extracted_dir(info.url, base, _IMAGENETTE_DIR, _IMAGENETTE_ARCHIVE, _IMAGENETTE_ARCHIVE_MD5,
                            download, hint) / _FOLDER_SPLITS[split]
    return _checked_folder(info, split, folder, verify, hint, classes=info.classes)


def _load_imagenet(info: DatasetInfo, split: str, root: Path, verify: bool) -> FolderDataset:
    base = root / info.folder
    hint = (f"ImageNet (ILSVRC2012) cannot be downloaded automatically (its licence needs a sign-in at {info.url}). "
            f"Extract ILSVRC2012_img_train.tar so that {base / 'train'}/<wnid>/*.JPEG holds the 1000 class folders "
            f"(n01440764 ... n15075141, 1,281,167 images), and ILSVRC2012_img_val.tar so that "
            f"{base / 'val'}/<wnid>/*.JPEG holds the 50,000 validation images sorted into the same 1000 wnid "
            "folders (e.g. with valprep.sh from the PyTorch ImageNet example).")
    train_dir, folder = base / "train", base / _FOLDER_SPLITS[split]
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found. " + hint)
    # The training folders fix the class indices, so a val/ copy missing a class cannot shift them.
    classes_dir = train_dir if split != "train" and train_dir.is_dir() else None
    return _checked_folder(info, split, folder, verify, hint, classes_dir=classes_dir)
