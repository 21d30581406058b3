"""Loading MNIST, Fashion-MNIST and CIFAR-10 from their official on-disk formats.

Training runs are only reproducible if the bytes they train on are the published ones, so every
file is checked against hard-coded checksums of its *content* (decompressed IDX bytes, CIFAR
pixel/label arrays).  Content hashes, unlike archive md5s, also accept re-compressed copies
(Debian's Fashion-MNIST) and re-packed copies (the CIFAR-10 batches in the shared data folder).
Images stay uint8 in memory: float copies of CIFAR-10 would cost 4x the RAM for no benefit, and
the training code normalises per batch anyway.
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

import numpy as np
import torch

try:  # numpy >= 2 (old pickles name numpy.core, which is a deprecated alias there)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

DATA_ENV = "SOFTHEBB_DATA"
SPLITS = ("train", "test")
# Debian/Ubuntu package `dataset-fashion-mnist` installs the four IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_DOWNLOAD_TIMEOUT_S = 30


class DatasetError(RuntimeError):
    """A dataset file is missing, malformed or not the published one; the message says how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    folder: str  # sub-folder of the data root
    shape: tuple[int, int, int]  # (C, H, W) of one image
    classes: tuple[str, ...]
    url: str  # base URL of the IDX files, or URL of the CIFAR archive

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# eq=False: field-wise == on tensors is ambiguous, identity comparison is what callers expect.
@dataclass(frozen=True, eq=False)
class ImageDataset:
    name: str
    split: str
    images: torch.Tensor  # uint8 (N, C, H, W)
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
}

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

_CIFAR_DIR, _CIFAR_ARCHIVE = "cifar-10-batches-py", "cifar-10-python.tar.gz"
_CIFAR_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
# batch -> (sha256 of `data` as uint8 [10000, 3072], sha256 of labels as uint8)
_CIFAR_SHA256 = {
    "data_batch_1": ("a50e8b48728e1667d682a807155c375279d5ae321fb12242c02e3104a6bc8b21", "d829dbdf32167c9d7b3687cee66d92d80d46c441308b5aca0d11e8b69e27dac9"),
    "data_batch_2": ("0b825e5592c3b72ea18d6ec2ff5f5b19d33e41a75f5039054a9bb87be3cf69a0", "5d18f7371ed35ea9ade77952fe958b0660a45cd6c8b8a8970030f21612cfd7e3"),
    "data_batch_3": ("c6ee1dd4601a69ec085d8ebf53ee6441775491a6839a0a9ae8fa198e88a3a429", "32cf77b0ee2e790b1c4384d2d82e42dc1571b87e67f6da8f444b2725b2973f65"),
    "data_batch_4": ("1f6b6c799cff375a9f8fae2fac909d51ee09f38a6a60eebb9e8fec6f47ddc48f", "d2815e3f8f656272864920fc0edde56b04ec9cf81bf397c0dd3069f4aea51aeb"),
    "data_batch_5": ("58e3bbf713e28357476a351d3a05d056372f94c681d04ca9d62a076fdf2a643b", "2ddf3ab27d5d04409c94ce7b56849c243129c10de1058ae0bfe14c77e934800c"),
    "test_batch": ("177777c33ba79825320efa646ad04a94bdc3c80e4ebe3bd21724f8cdfd4b9d56", "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"),
}


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Explicit argument, else $SOFTHEBB_DATA (lets offline machines share one read-only copy), else a user cache."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or "~/.cache/softhebb/data"
    return Path(chosen).expanduser()


def load_dataset(name: str, split: str, root: str | os.PathLike | None = None,
                 download: bool = True, verify: bool = True) -> ImageDataset:
    """Load one split as uint8 images + int64 labels.

    Only missing files are downloaded, and content is checked against the published data unless
    `verify=False` (meant for tiny synthetic files in tests), so results are comparable across machines.
    """
    if name not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DatasetError(f"Unknown split {split!r} for {name}; valid splits: {', '.join(SPLITS)}")
    info, data_root = DATASETS[name], resolve_data_root(root)
    if name == "cifar10":
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


# ----------------------------------------------------------------------------- CIFAR-10 python batches

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
            raise DatasetError(f"{self.path}: refusing to unpickle {module}.{name}; a CIFAR-10 batch only "
                               "contains numpy arrays, lists, bytes and ints.") from None


def _unpickle(path: Path, hint: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as err:  # truncated / garbage pickles raise many different types
        raise DatasetError(f"{path} is not a readable CIFAR-10 pickle ({err!r}). " + hint) from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(obj).__name__}. " + hint)
    return obj


def _load_cifar(info: DatasetInfo, split: str, root: Path, download: bool, verify: bool):
    base = root / info.folder
    hint = (_hint(info.url, _CIFAR_ARCHIVE_MD5, base / _CIFAR_ARCHIVE)
            + f" (or extract it so that {base / _CIFAR_DIR} holds the batch files).")
    batch_dir = _cifar_batch_dir(info, base, download, hint)
    images, labels = [], []
    for name in _CIFAR_BATCHES[split]:
        path = batch_dir / name
        if not path.is_file():
            raise DatasetError(f"{path} not found. " + hint)
        batch = _unpickle(path, hint)
        data, batch_labels = batch.get(b"data"), np.asarray(batch.get(b"labels", []))
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == int(np.prod(info.shape))):
            raise DatasetError(f"{path}: 'data' must be a uint8 array [N, 3072]. " + hint)
        if batch_labels.shape != (len(data),) or not np.issubdtype(batch_labels.dtype, np.integer):
            raise DatasetError(f"{path}: 'labels' must be {len(data)} integers, "
                               f"found shape {batch_labels.shape}. " + hint)
        _check_label_range(batch_labels, info, path)
        if verify:
            got = (hashlib.sha256(np.ascontiguousarray(data)).hexdigest(),
                   hashlib.sha256(batch_labels.astype(np.uint8).tobytes()).hexdigest())
            if got != _CIFAR_SHA256[name]:
                raise DatasetError(f"{path}: sha256 of (data, labels as uint8) is {got}, "
                                   f"expected {_CIFAR_SHA256[name]}. " + hint)
        images.append(data.reshape(len(data), *info.shape))  # rows are R plane, G plane, B plane
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels), _cifar_classes(info, batch_dir / "batches.meta", verify, hint)


def _cifar_classes(info: DatasetInfo, path: Path, verify: bool, hint: str) -> tuple[str, ...]:
    if not path.is_file():
        raise DatasetError(f"{path} not found. " + hint)
    names = _unpickle(path, hint).get(b"label_names")
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names) or len(names) != info.num_classes:
        raise DatasetError(f"{path}: expected 'label_names' with {info.num_classes} byte strings. " + hint)
    classes = tuple(n.decode() for n in names)
    if verify and classes != info.classes:
        raise DatasetError(f"{path}: class names {classes} differ from the official {info.classes}. " + hint)
    return classes


def _cifar_batch_dir(info: DatasetInfo, base: Path, download: bool, hint: str) -> Path:
    batch_dir, archive = base / _CIFAR_DIR, base / _CIFAR_ARCHIVE
    if batch_dir.is_dir():
        return batch_dir
    if not archive.is_file():
        if not download:
            raise DatasetError(f"Neither {batch_dir} nor {archive} exists (download=False). " + hint)
        _download(info.url, archive, _CIFAR_ARCHIVE_MD5)
    _safe_extract(archive, base, hint)
    return batch_dir


def _safe_extract(archive: Path, base: Path, hint: str) -> None:
    """Extract into a temp dir and rename into place, so a bad or interrupted archive leaves nothing behind."""
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
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
        if not (tmp / _CIFAR_DIR).is_dir():
            raise DatasetError(f"{archive} does not contain the folder {_CIFAR_DIR}/. " + hint)
        os.replace(tmp / _CIFAR_DIR, base / _CIFAR_DIR)
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        raise DatasetError(f"{archive} cannot be extracted into {base} ({err}). " + hint) from err
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
