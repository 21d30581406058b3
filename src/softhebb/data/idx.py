"""MNIST and Fashion-MNIST: IDX files, gzipped or not, checked by the sha256 of their decompressed content
(so Debian's re-compressed Fashion-MNIST copy passes too)."""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np

from .base import DatasetError, DatasetInfo, ImageDataset, array_dataset, check_label_range, download, download_hint

# Debian/Ubuntu package `dataset-fashion-mnist` installs the four IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
# file -> (md5 of the official .gz, for downloads; sha256 of the decompressed bytes, for content)
IDX_CHECKSUMS = {
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


def load_idx(info: DatasetInfo, split: str, root: Path, download_ok: bool, verify: bool) -> ImageDataset:
    """One split of an IDX dataset from `root/<folder>` (or Debian's Fashion-MNIST copy), downloading missing files."""
    folder = root / info.folder
    if info.name == "fashion-mnist" and not folder.exists() and DEBIAN_FASHION_MNIST.is_dir():
        folder = DEBIAN_FASHION_MNIST
    images_name, labels_name = IDX_FILES[split]
    images, images_path = _read_idx(info, root, folder, images_name, _IMAGES_MAGIC, download_ok, verify)
    labels, labels_path = _read_idx(info, root, folder, labels_name, _LABELS_MAGIC, download_ok, verify)
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels; the counts must match. Re-fetch both from {info.url}.")
    check_label_range(labels, info, labels_path)
    return array_dataset(info, split, images.reshape(len(images), *info.shape), labels, info.classes)


def _read_idx(info: DatasetInfo, root: Path, folder: Path, name: str, magic: int,
              download_ok: bool, verify: bool) -> tuple[np.ndarray, Path]:
    """Find (or download) one IDX file, parse it and check its content; returns the array and the path it came from."""
    md5, sha256 = IDX_CHECKSUMS[info.name][name]
    url, dest = info.url + name + ".gz", root / info.folder / (name + ".gz")
    hint = download_hint(url, md5, dest) + " An uncompressed copy without .gz is accepted too."
    path = next((p for p in (folder / name, folder / (name + ".gz")) if p.is_file()), None)
    if path is None:
        if not download_ok:
            raise DatasetError(f"{dest} not found (download=False). " + hint)
        download(url, dest, md5)
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
