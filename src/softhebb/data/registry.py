"""The datasets softhebb knows, and `load_dataset`, which hands each to the loader of its on-disk format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

from .base import ChainedDataset, DatasetError, DatasetInfo, ImageDataset, Protocol, resolve_data_root
from .cifar import CIFAR100_CLASSES, load_cifar
from .folders import IMAGENETTE_WNIDS, FolderDataset, load_imagenet, load_imagenette
from .idx import load_idx
from .stl import load_stl

AnyDataset = Union[ImageDataset, ChainedDataset, FolderDataset]

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
    "cifar100": DatasetInfo("cifar100", "cifar100", (3, 32, 32), CIFAR100_CLASSES,
                            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "stl10": DatasetInfo(
        "stl10", "stl10", (3, 96, 96),
        ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        splits=("train", "test", "unlabeled", "train+unlabeled"),
        protocol=Protocol(in_memory=False, hebb_split="unlabeled", hebb_batch=32, probe_epochs=100, probe_augment=True)),
    # Folder datasets: "test" is the official val/ folder; images are resized to the reference's 160 px.
    "imagenette": DatasetInfo("imagenette", "imagenette", (3, 160, 160), IMAGENETTE_WNIDS,
                              "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
                              protocol=Protocol(in_memory=False, probe_epochs=200, probe_batch=32, probe_augment=True)),
    # all 1,281,167 training images for the probe (the original drew only from the first 1,000,000)
    "imagenet": DatasetInfo("imagenet", "imagenet", (3, 160, 160), (), "https://image-net.org/download-images",
                            n_classes=1000, protocol=Protocol(in_memory=False, hebb_images=128_116, hebb_augment=True,
                                                              probe_epochs=200, probe_batch=32, probe_augment=True)),
}

# name -> loader(info, split, data root, download allowed, verify); one per on-disk format.
_LOADERS: dict[str, Callable[[DatasetInfo, str, Path, bool, bool], AnyDataset]] = {
    "mnist": load_idx, "fashion-mnist": load_idx, "cifar10": load_cifar, "cifar100": load_cifar,
    "stl10": load_stl, "imagenette": load_imagenette, "imagenet": load_imagenet,
}


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
    return _LOADERS[name](info, split, data_root, download, verify)
