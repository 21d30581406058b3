"""CIFAR-10 and CIFAR-100: the python-pickle batches, unpickled with the numpy-only loader.  CIFAR-10 is
checked by the sha256 of its pixel/label arrays (so re-packed copies pass), CIFAR-100 by its official files' md5."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DatasetError, DatasetInfo, ImageDataset, array_dataset, check_label_range, file_md5, require_file
from .safe import Archive, load_numpy_pickle

CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup
    dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
    pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew
    skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())


@dataclass(frozen=True)
class _CifarFormat:
    """Where the python-pickle versions of CIFAR-10 and CIFAR-100 differ; the loading code is shared."""
    archive: Archive
    batches: dict[str, tuple[str, ...]]  # split -> batch files
    labels_key: bytes
    meta: str
    names_key: bytes


_CIFAR = {
    "cifar10": _CifarFormat(Archive("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                                    "cifar-10-batches-py", "the batch files"),
                            {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                            b"labels", "batches.meta", b"label_names"),
    "cifar100": _CifarFormat(Archive("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                                     "cifar-100-python", "the batch files"),
                             {"train": ("train",), "test": ("test",)}, b"fine_labels", "meta", b"fine_label_names"),
}
# batch -> (sha256 of `data` as uint8 [10000, 3072], sha256 of labels as uint8)
CIFAR10_SHA256 = {
    "data_batch_1": ("a50e8b48728e1667d682a807155c375279d5ae321fb12242c02e3104a6bc8b21", "d829dbdf32167c9d7b3687cee66d92d80d46c441308b5aca0d11e8b69e27dac9"),
    "data_batch_2": ("0b825e5592c3b72ea18d6ec2ff5f5b19d33e41a75f5039054a9bb87be3cf69a0", "5d18f7371ed35ea9ade77952fe958b0660a45cd6c8b8a8970030f21612cfd7e3"),
    "data_batch_3": ("c6ee1dd4601a69ec085d8ebf53ee6441775491a6839a0a9ae8fa198e88a3a429", "32cf77b0ee2e790b1c4384d2d82e42dc1571b87e67f6da8f444b2725b2973f65"),
    "data_batch_4": ("1f6b6c799cff375a9f8fae2fac909d51ee09f38a6a60eebb9e8fec6f47ddc48f", "d2815e3f8f656272864920fc0edde56b04ec9cf81bf397c0dd3069f4aea51aeb"),
    "data_batch_5": ("58e3bbf713e28357476a351d3a05d056372f94c681d04ca9d62a076fdf2a643b", "2ddf3ab27d5d04409c94ce7b56849c243129c10de1058ae0bfe14c77e934800c"),
    "test_batch": ("177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56", "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
}
# CIFAR-100 content hashes are not known here, only the md5s of the official extracted files (as torchvision
# lists them), so a re-packed CIFAR-100 copy needs verify=False.
CIFAR100_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}


def load_cifar(info: DatasetInfo, split: str, root: Path, download_ok: bool, verify: bool) -> ImageDataset:
    """One split of CIFAR-10/100 from `root/<folder>`, extracting (and downloading) the archive when missing."""
    fmt, base = _CIFAR[info.name], root / info.folder
    hint = fmt.archive.hint(info.url, base)
    batch_dir = fmt.archive.extracted(info.url, base, download_ok, hint)
    images, labels = [], []
    for name in fmt.batches[split]:
        data, batch_labels = _read_batch(info, fmt, batch_dir / name, verify, hint)
        images.append(data.reshape(len(data), *info.shape))  # rows are R plane, G plane, B plane
        labels.append(batch_labels)
    classes = _cifar_classes(info, batch_dir / fmt.meta, fmt.names_key, verify, hint)
    return array_dataset(info, split, np.concatenate(images), np.concatenate(labels), classes)


def _read_batch(info: DatasetInfo, fmt: _CifarFormat, path: Path, verify: bool,
                hint: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's (uint8 [N, 3072] rows, integer labels), shape-, range- and (if `verify`) checksum-checked."""
    require_file(path, hint)
    key = fmt.labels_key.decode()
    batch = load_numpy_pickle(path, hint)
    data, batch_labels = batch.get(b"data"), np.asarray(batch.get(fmt.labels_key, []))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == int(np.prod(info.shape))):
        raise DatasetError(f"{path}: 'data' must be a uint8 array [N, 3072]. " + hint)
    if batch_labels.shape != (len(data),) or not np.issubdtype(batch_labels.dtype, np.integer):
        raise DatasetError(f"{path}: '{key}' must be {len(data)} integers, "
                           f"found shape {batch_labels.shape}. " + hint)
    check_label_range(batch_labels, info, path)
    if verify and path.name in CIFAR10_SHA256:
        got = (hashlib.sha256(np.ascontiguousarray(data)).hexdigest(),
               hashlib.sha256(batch_labels.astype(np.uint8).tobytes()).hexdigest())
        if got != CIFAR10_SHA256[path.name]:
            raise DatasetError(f"{path}: sha256 of (data, labels as uint8) is {got}, "
                               f"expected {CIFAR10_SHA256[path.name]}. " + hint)
    elif verify and (got := file_md5(path)) != CIFAR100_MD5[path.name]:
        raise DatasetError(f"{path}: md5 is {got}, expected {CIFAR100_MD5[path.name]} (the official file). " + hint)
    return data, batch_labels


def _cifar_classes(info: DatasetInfo, path: Path, key: bytes, verify: bool, hint: str) -> tuple[str, ...]:
    require_file(path, hint)
    names = load_numpy_pickle(path, hint).get(key)
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names) or len(names) != info.num_classes:
        raise DatasetError(f"{path}: expected '{key.decode()}' with {info.num_classes} byte strings. " + hint)
    classes = tuple(n.decode() for n in names)
    if verify and classes != info.classes:
        raise DatasetError(f"{path}: class names {classes} differ from the official {info.classes}. " + hint)
    return classes
