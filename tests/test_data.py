"""Tests for softhebb.data: tiny files in the official formats, every rejection path, and (opt-in) the real data."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from softhebb import data
from softhebb.data import DATA_ENV, DatasetError, load_dataset, resolve_data_root
from softhebb.data import cifar, idx

N = 5  # items per tiny split
CIFAR_CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


# ----------------------------------------------------------------------------- tiny official-format files

def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def tiny_mnist(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_idx(folder: Path, split: str = "test", images=None, labels=None, gz: bool = True,
              image_bytes: bytes | None = None, label_bytes: bytes | None = None) -> tuple[Path, Path]:
    """Write an image/label IDX pair under the official names; the *_bytes overrides allow corrupt files."""
    if images is None:
        images, labels = tiny_mnist()
    folder.mkdir(parents=True, exist_ok=True)
    if image_bytes is None:
        image_bytes = idx_bytes(2051, images.shape, images.tobytes())
    if label_bytes is None:
        label_bytes = idx_bytes(2049, labels.shape, labels.tobytes())
    paths = []
    for name, content in zip(idx.IDX_FILES[split], (image_bytes, label_bytes)):
        path = folder / (name + ".gz" if gz else name)
        path.write_bytes(gzip.compress(content) if gz else content)
        paths.append(path)
    return paths[0], paths[1]


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"tiny batch", b"labels": [int(x) for x in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar(batch_dir: Path, n: int = N) -> dict[str, dict]:
    """The official python-version layout; protocol 4 keeps bytes as bytes (protocol 2 would need _codecs.encode)."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    batches = {name: cifar_batch(n, seed) for seed, name in enumerate(list(cifar.CIFAR10_SHA256))}
    for name, batch in batches.items():
        (batch_dir / name).write_bytes(pickle.dumps(batch, protocol=4))
    meta = {b"num_cases_per_batch": n, b"label_names": CIFAR_CLASSES, b"num_vis": 3072}
    (batch_dir / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return batches


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# ----------------------------------------------------------------------------- API basics

def test_resolve_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv(DATA_ENV)
    assert resolve_data_root() == Path.home() / ".cache" / "softhebb" / "data"


def test_registry():
    assert {"mnist", "fashion-mnist", "cifar10"} <= set(data.DATASETS)
    assert data.DATASETS["cifar10"].shape == (3, 32, 32) and data.DATASETS["mnist"].num_classes == 10


def test_unknown_name_and_split(tmp_path):
    with pytest.raises(DatasetError, match="mnist, fashion-mnist, cifar10"):
        load_dataset("nope", "train", root=tmp_path)
    with pytest.raises(DatasetError, match="train, test"):
        load_dataset("mnist", "val", root=tmp_path)


# ----------------------------------------------------------------------------- IDX loading

@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_load_idx(tmp_path, name, gz):
    images, labels = tiny_mnist()
    write_idx(tmp_path / name, "train", images, labels, gz=gz)
    ds = load_dataset(name, "train", root=tmp_path, verify=False)
    assert len(ds) == N and ds.split == "train" and ds.classes == data.DATASETS[name].classes
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (N, 1, 28, 28) and ds.images.is_contiguous()
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (N,)
    assert np.array_equal(ds.images[:, 0].numpy(), images) and np.array_equal(ds.labels.numpy(), labels)


def test_fashion_mnist_falls_back_to_debian_copy(tmp_path, monkeypatch):
    images, labels = tiny_mnist(seed=3)
    write_idx(tmp_path / "debian", "test", images, labels)
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    ds = load_dataset("fashion-mnist", "test", root=tmp_path / "root", verify=False)
    assert np.array_equal(ds.labels.numpy(), labels)


def test_truncated_gz(tmp_path):
    image_path, _ = write_idx(tmp_path / "mnist")
    image_path.write_bytes(image_path.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=str(image_path)):
        load_dataset("mnist", "test", root=tmp_path, verify=False)


def test_truncated_payload(tmp_path):
    images, labels = tiny_mnist()
    bad = idx_bytes(2051, images.shape, images.tobytes()[:-1])
    image_path, _ = write_idx(tmp_path / "mnist", images=images, labels=labels, gz=False, image_bytes=bad)
    with pytest.raises(DatasetError, match="payload") as err:
        load_dataset("mnist", "test", root=tmp_path, verify=False)
    assert str(image_path) in str(err.value)


def test_wrong_magic(tmp_path):
    images, labels = tiny_mnist()
    bad = idx_bytes(2049, labels.shape, labels.tobytes())  # a label file where images belong
    image_path, _ = write_idx(tmp_path / "mnist", images=images, labels=labels, image_bytes=bad)
    with pytest.raises(DatasetError, match="magic number is 2049, expected 2051") as err:
        load_dataset("mnist", "test", root=tmp_path, verify=False)
    assert str(image_path) in str(err.value)


def test_mismatched_counts(tmp_path):
    images, labels = tiny_mnist()
    image_path, label_path = write_idx(tmp_path / "mnist", images=images, labels=labels[:-1])
    with pytest.raises(DatasetError, match="counts must match") as err:
        load_dataset("mnist", "test", root=tmp_path, verify=False)
    assert image_path.name in str(err.value) and label_path.name in str(err.value)


def test_label_out_of_range(tmp_path):
    images, labels = tiny_mnist()
    labels[2] = 10
    _, label_path = write_idx(tmp_path / "mnist", images=images, labels=labels)
    with pytest.raises(DatasetError, match="label 10 at index 2") as err:
        load_dataset("mnist", "test", root=tmp_path, verify=False)
    assert label_path.name in str(err.value)


def test_idx_checksum_mismatch(tmp_path):
    image_path, _ = write_idx(tmp_path / "mnist")
    with pytest.raises(DatasetError, match="sha256") as err:
        load_dataset("mnist", "test", root=tmp_path, verify=True)
    message = str(err.value)
    assert str(image_path) in message and idx.IDX_CHECKSUMS["mnist"]["t10k-images-idx3-ubyte"][1] in message


# ----------------------------------------------------------------------------- missing files and downloads

def test_missing_file_offline(tmp_path, offline):
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz") in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz" in message
    assert "9fb629c4189551a2d022fa330f9573f3" in message
    assert offline and leftovers(tmp_path) == []


def test_missing_file_no_download(tmp_path, offline):
    with pytest.raises(DatasetError, match="download=False") as err:
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in str(err.value)
    assert offline == []


def serve(monkeypatch, content: bytes) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(content))


def test_download_verifies_md5_and_renames(tmp_path, monkeypatch):
    images, labels = tiny_mnist()
    payloads = {"images": gzip.compress(idx_bytes(2051, images.shape, images.tobytes())),
                "labels": gzip.compress(idx_bytes(2049, labels.shape, labels.tobytes()))}
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: io.BytesIO(payloads["images" if "images" in url else "labels"]))
    sums = idx.IDX_CHECKSUMS["mnist"]
    for kind, name in zip(payloads, idx.IDX_FILES["test"]):
        monkeypatch.setitem(sums, name, (hashlib.md5(payloads[kind]).hexdigest(), sums[name][1]))
    ds = load_dataset("mnist", "test", root=tmp_path, verify=False)
    assert np.array_equal(ds.labels.numpy(), labels)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                                     "t10k-labels-idx1-ubyte.gz"]


def test_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    serve(monkeypatch, b"not the real file")
    with pytest.raises(DatasetError, match="md5") as err:
        load_dataset("mnist", "test", root=tmp_path)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value)
    assert list((tmp_path / "mnist").iterdir()) == []


# ----------------------------------------------------------------------------- CIFAR-10

def test_load_cifar_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train", root=tmp_path, verify=False)
    test = load_dataset("cifar10", "test", root=tmp_path, verify=False)
    assert train.images.shape == (5 * N, 3, 32, 32) and test.images.shape == (N, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert test.classes[3] == "cat"
    row = batches["test_batch"][b"data"][1]
    assert np.array_equal(test.images[1, 0].numpy().ravel(), row[:1024])  # red plane first
    assert np.array_equal(test.images[1, 2].numpy().ravel(), row[2048:])
    assert test.labels.tolist() == batches["test_batch"][b"labels"]
    assert train.labels[N:2 * N].tolist() == batches["data_batch_2"][b"labels"]


def test_cifar_checksum_mismatch(tmp_path):
    write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    with pytest.raises(DatasetError, match="sha256") as err:
        load_dataset("cifar10", "test", root=tmp_path, verify=True)
    assert "test_batch" in str(err.value)


def test_cifar_truncated_pickle(tmp_path):
    batch_dir = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(batch_dir)
    path = batch_dir / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match="test_batch"):
        load_dataset("cifar10", "test", root=tmp_path, verify=False)


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_rejected(tmp_path):
    batch_dir = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar(batch_dir)
    marker = tmp_path / "pwned"
    (batch_dir / "test_batch").write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    with pytest.raises(DatasetError, match="refusing to unpickle") as err:
        load_dataset("cifar10", "test", root=tmp_path, verify=False)
    assert "test_batch" in str(err.value) and "system" in str(err.value)
    assert not marker.exists()


def make_tar(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


def test_load_cifar_from_archive(tmp_path):
    source = tmp_path / "src"
    batches = write_cifar(source / "cifar-10-batches-py")
    (tmp_path / "cifar10").mkdir()
    make_tar(tmp_path / "cifar10" / "cifar-10-python.tar.gz",
             {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in (source / "cifar-10-batches-py").iterdir()})
    ds = load_dataset("cifar10", "test", root=tmp_path, verify=False)
    assert ds.labels.tolist() == batches["test_batch"][b"labels"]
    assert (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert leftovers(tmp_path / "cifar10") == []


@pytest.mark.parametrize("members, symlinks", [
    ({"cifar-10-batches-py/test_batch": b"x", "../evil": b"owned"}, None),
    ({"/tmp/evil": b"owned"}, None),
    ({}, {"cifar-10-batches-py/test_batch": "/etc/passwd"}),
])
def test_unsafe_archive_rejected(tmp_path, members, symlinks):
    (tmp_path / "cifar10").mkdir()
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    make_tar(archive, members, symlinks)
    with pytest.raises(DatasetError, match="unsafe archive member") as err:
        load_dataset("cifar10", "test", root=tmp_path, verify=False)
    assert str(archive) in str(err.value)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()
    assert leftovers(tmp_path / "cifar10") == []


# ----------------------------------------------------------------------------- real data (opt-in)

def test_real_mnist_and_cifar10(data_root):
    mnist_test = load_dataset("mnist", "test", root=data_root, download=False, verify=True)
    assert len(mnist_test) == 10000 and mnist_test.images.shape == (10000, 1, 28, 28)
    mnist_train = load_dataset("mnist", "train", root=data_root, download=False, verify=True)
    assert torch.bincount(mnist_train.labels).tolist()[:2] == [5923, 6742]
    cifar_test = load_dataset("cifar10", "test", root=data_root, download=False, verify=True)
    assert len(cifar_test) == 10000 and cifar_test.images.shape == (10000, 3, 32, 32)
    assert int(cifar_test.labels[0]) == 3 and cifar_test.classes[3] == "cat"


def test_real_fashion_mnist(data_root):
    if not (data_root / "fashion-mnist").exists() and not idx.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("no Fashion-MNIST copy (install Debian's dataset-fashion-mnist or add <root>/fashion-mnist)")
    ds = load_dataset("fashion-mnist", "test", root=data_root, download=False, verify=True)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10 and int(ds.labels[0]) == 9
