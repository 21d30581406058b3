"""Tests for CIFAR-100, STL-10, ImageNette, ImageNet and image-folder loading (softhebb.data's
cifar, stl and folders modules), including their archive extraction and download hints.

Every file is generated here, tiny, in the official format; nothing touches the network.
"""

from __future__ import annotations

import io
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from softhebb import augment, data  # noqa: E402
from softhebb.data import (UNLABELED, ChainedDataset, DatasetError, FolderDataset, ImageDataset,  # noqa: E402
                           load_dataset)
from softhebb.data import cifar, folders, stl  # noqa: E402

N = 4  # items per tiny split


def make_tar(path: Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def tar_folder(path: Path, folder: Path) -> None:
    make_tar(path, {f"{folder.name}/{p.relative_to(folder).as_posix()}": p.read_bytes()
                    for p in sorted(folder.rglob("*")) if p.is_file()})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# ----------------------------------------------------------------------------- CIFAR-100

def write_cifar100(folder: Path, n: int = N) -> dict[str, dict]:
    """Official layout: `train`, `test`, `meta` pickles with fine and coarse labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in ("train", "test"):
        batches[name] = {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                         b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                         b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=4))
    meta = {b"fine_label_names": [c.encode() for c in cifar.CIFAR100_CLASSES],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    return batches


def test_registry_has_new_datasets():
    assert {"cifar100", "stl10", "imagenette", "imagenet"} <= set(data.DATASETS)
    assert data.DATASETS["cifar100"].num_classes == 100 and data.DATASETS["imagenet"].num_classes == 1000
    assert data.DATASETS["stl10"].shape == (3, 96, 96) and data.DATASETS["imagenette"].shape == (3, 160, 160)
    with pytest.raises(DatasetError, match="train, test, unlabeled, train\\+unlabeled"):
        load_dataset("stl10", "val")


def test_load_cifar100(tmp_path):
    batches = write_cifar100(tmp_path / "cifar100" / "cifar-100-python")
    ds = load_dataset("cifar100", "test", root=tmp_path, verify=False)
    assert isinstance(ds, ImageDataset) and ds.images.shape == (N, 3, 32, 32) and ds.num_classes == 100
    assert ds.labels.tolist() == batches["test"][b"fine_labels"] and ds.classes[1] == "aquarium_fish"
    row = batches["test"][b"data"][2]
    assert np.array_equal(ds.images[2, 0].numpy().ravel(), row[:1024])
    assert np.array_equal(ds.images[2, 2].numpy().ravel(), row[2048:])
    assert len(load_dataset("cifar100", "train", root=tmp_path, verify=False)) == N


def test_cifar100_verify_checks_official_md5(tmp_path):
    write_cifar100(tmp_path / "cifar100" / "cifar-100-python")
    with pytest.raises(DatasetError, match="md5") as err:
        load_dataset("cifar100", "test", root=tmp_path, verify=True)
    assert "cifar-100-python/test" in str(err.value) and cifar.CIFAR100_MD5["test"] in str(err.value)


def test_cifar100_wrong_data_shape(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    batches = write_cifar100(folder)
    batches["test"][b"data"] = batches["test"][b"data"][:, :3000]
    (folder / "test").write_bytes(pickle.dumps(batches["test"], protocol=4))
    with pytest.raises(DatasetError, match=r"uint8 array \[N, 3072\]"):
        load_dataset("cifar100", "test", root=tmp_path, verify=False)


def test_cifar100_from_archive_and_offline_hint(tmp_path, offline):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar100", "test", root=tmp_path)
    assert "eb9058c3a382ffc7106e4002c42a8d85" in str(err.value) and "cifar-100-python.tar.gz" in str(err.value)
    assert offline
    batches = write_cifar100(tmp_path / "src" / "cifar-100-python")
    tar_folder(tmp_path / "cifar100" / "cifar-100-python.tar.gz", tmp_path / "src" / "cifar-100-python")
    ds = load_dataset("cifar100", "test", root=tmp_path, verify=False)
    assert ds.labels.tolist() == batches["test"][b"fine_labels"]
    assert leftovers(tmp_path / "cifar100") == []


def test_cifar100_traversal_member_refused(tmp_path):
    make_tar(tmp_path / "cifar100" / "cifar-100-python.tar.gz", {"cifar-100-python/test": b"x", "../evil": b"owned"})
    with pytest.raises(DatasetError, match="unsafe archive member '../evil'"):
        load_dataset("cifar100", "test", root=tmp_path, verify=False)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cifar100" / "cifar-100-python").exists()


def test_decompression_bomb_refused_before_writing(tmp_path):
    make_tar(tmp_path / "cifar100" / "cifar-100-python.tar.gz", {"cifar-100-python/test": bytes(40 << 20)})
    assert (tmp_path / "cifar100" / "cifar-100-python.tar.gz").stat().st_size < 1 << 20  # 40 MB of zeros, gzipped
    with pytest.raises(DatasetError, match="expand to more than 3x"):
        load_dataset("cifar100", "test", root=tmp_path, verify=False)
    assert sorted(p.name for p in (tmp_path / "cifar100").iterdir()) == ["cifar-100-python.tar.gz"]


# ----------------------------------------------------------------------------- STL-10

def stl_images(n: int, offset: int = 0) -> np.ndarray:
    """Asymmetric pattern: a wrong (row/column) orientation cannot reproduce it."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(96), np.arange(96), indexing="ij")
    return np.stack([(c * 50 + y * 3 + x * 7 + i + offset) % 256 for i in range(n)]).astype(np.uint8)


def write_stl(folder: Path, split: str, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    x_name, y_name, _ = stl.STL_FILES[split]
    (folder / x_name).write_bytes(images.transpose(0, 1, 3, 2).tobytes())  # column-major, like the official files
    if y_name:
        (folder / y_name).write_bytes(labels.astype(np.uint8).tobytes())


def stl_root(tmp_path: Path) -> Path:
    folder = tmp_path / "stl10" / "stl10_binary"
    write_stl(folder, "train", stl_images(N), np.array([1, 10, 3, 4]))
    write_stl(folder, "test", stl_images(3, 9), np.array([2, 2, 7]))
    write_stl(folder, "unlabeled", stl_images(5, 100))
    (folder / "class_names.txt").write_text("\n".join(data.DATASETS["stl10"].classes) + "\n")
    return folder


def test_load_stl_orientation_and_labels(tmp_path):
    stl_root(tmp_path)
    train = load_dataset("stl10", "train", root=tmp_path, verify=False)
    assert train.images.shape == (N, 3, 96, 96) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.numpy(), stl_images(N))
    assert train.labels.tolist() == [0, 9, 2, 3] and train.classes[7] == "monkey"
    assert int(train.images[0, 0, 1, 0]) == 3 and int(train.images[0, 0, 0, 1]) == 7  # (row 1, col 0) vs (0, 1)
    test = load_dataset("stl10", "test", root=tmp_path, verify=False)
    assert test.labels.tolist() == [1, 1, 6] and np.array_equal(test.get_images([2]).numpy(), stl_images(3, 9)[2:])


def mapped_files(address: int) -> list[str]:
    """Files mapped at `address` in this process (Linux /proc/self/maps)."""
    hits = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(v, 16) for v in fields[0].split("-"))
        if lo <= address < hi and len(fields) == 6:
            hits.append(fields[5])
    return hits


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_stl_unlabeled_is_memory_mapped(tmp_path):
    folder = stl_root(tmp_path)
    ds = load_dataset("stl10", "unlabeled", root=tmp_path, verify=False)
    assert ds.labels.tolist() == [UNLABELED] * 5 and ds.images.dtype == torch.uint8
    assert not ds.images.is_contiguous()  # a transposed view of the file, no NCHW copy
    assert mapped_files(ds.images.data_ptr()) == [str((folder / "unlabeled_X.bin").resolve())]
    assert np.array_equal(ds.get_images([4, 1]).numpy(), stl_images(5, 100)[[4, 1]])
    train = load_dataset("stl10", "train", root=tmp_path, verify=False)
    assert train.images.is_contiguous()  # small splits are copied into RAM
    assert str((folder / "train_X.bin").resolve()) not in mapped_files(train.images.data_ptr())


def test_stl_train_plus_unlabeled_is_chained(tmp_path):
    stl_root(tmp_path)
    ds = load_dataset("stl10", "train+unlabeled", root=tmp_path, verify=False)
    assert isinstance(ds, ChainedDataset) and len(ds) == N + 5 and ds.shape == (3, 96, 96) and ds.num_classes == 10
    assert ds.labels.tolist() == [0, 9, 2, 3] + [UNLABELED] * 5
    every = np.concatenate([stl_images(N), stl_images(5, 100)])
    order = [8, 0, 3, 4, 5]
    assert np.array_equal(ds.get_images(torch.tensor(order)).numpy(), every[order])
    with pytest.raises(IndexError):
        ds.get_images([N + 5])


@pytest.mark.parametrize("split, cut, match", [
    ("train", 1, "not a positive multiple of 27648"),
    ("test", 27648, "counts must match"),
])
def test_stl_truncated_images(tmp_path, split, cut, match):
    folder = stl_root(tmp_path)
    path = folder / stl.STL_FILES[split][0]
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(DatasetError, match=match) as err:
        load_dataset("stl10", split, root=tmp_path, verify=False)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("bad", [0, 11])
def test_stl_label_out_of_range(tmp_path, bad):
    folder = stl_root(tmp_path)
    write_stl(folder, "train", stl_images(N), np.array([1, bad, 3, 4]))
    with pytest.raises(DatasetError, match=f"label {bad} at index 1 is outside 1..10") as err:
        load_dataset("stl10", "train", root=tmp_path, verify=False)
    assert "train_y.bin" in str(err.value)


def test_stl_verify_checks_counts_md5_and_class_names(tmp_path, monkeypatch):
    folder = stl_root(tmp_path)
    with pytest.raises(DatasetError, match="holds 4 images, expected 5000"):
        load_dataset("stl10", "train", root=tmp_path, verify=True)
    monkeypatch.setitem(stl.STL_FILES, "test", ("test_X.bin", "test_y.bin", 3))
    with pytest.raises(DatasetError, match="test_X.bin: md5 is .*, expected 7f263ba9f9e0b06b93213547f721ac82"):
        load_dataset("stl10", "test", root=tmp_path, verify=True)
    (folder / "class_names.txt").write_text("cat\ndog\n")
    with pytest.raises(DatasetError, match="class names"):
        load_dataset("stl10", "test", root=tmp_path, verify=True)


def test_stl_missing_file_and_archive(tmp_path, offline):
    with pytest.raises(DatasetError, match="download=False") as err:
        load_dataset("stl10", "train", root=tmp_path, download=False)
    assert "91f7769df0f17e558f3565bffb0c7dfb" in str(err.value) and offline == []
    folder = stl_root(tmp_path / "src")
    (folder / "test_y.bin").unlink()
    tar_folder(tmp_path / "stl10" / "stl10_binary.tar.gz", folder)
    assert len(load_dataset("stl10", "unlabeled", root=tmp_path, verify=False)) == 5
    with pytest.raises(DatasetError, match="test_y.bin not found"):
        load_dataset("stl10", "test", root=tmp_path, verify=False)


# ----------------------------------------------------------------------------- image folders

COLOURS = {"a": (250, 10, 10), "b": (10, 10, 250), "c": (10, 250, 10)}


def write_tree(root: Path, counts: dict[str, int], ext: str = ".JPEG", sizes=((40, 30), (25, 50))) -> None:
    """root/<class>/<i><ext>, each image a solid class colour with sizes varying across files."""
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", sizes[i % len(sizes)], COLOURS.get(cls, (128, 128, 128))).save(
                root / cls / f"{i}{ext}", format="PNG" if ext == ".png" else "JPEG", quality=95)


def test_folder_dataset_order_labels_and_decode(tmp_path):
    write_tree(tmp_path, {"b": 2, "a": 3})
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("readme")
    ds = FolderDataset(tmp_path, size=16)
    assert ds.classes == ("a", "b") and len(ds) == 5 and ds.shape == (3, 16, 16) and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 0, 1, 1] and ds.path(3) == tmp_path / "b" / "0.JPEG"
    batch = ds.get_images([0, 4])
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.uint8
    assert (batch[0, 0].float().mean() > 200) and (batch[1, 2].float().mean() > 200)  # red class a, blue class b
    assert ds.mean_std == augment.IMAGENET_MEAN_STD


def test_folder_test_split_uses_training_classes(tmp_path):
    write_tree(tmp_path, {"c": 1})
    ds = FolderDataset(tmp_path, 8, classes=("a", "b", "c"), split="test")
    assert ds.labels.tolist() == [2] and ds.num_classes == 3
    with pytest.raises(DatasetError, match="not one of the 2 known classes"):
        FolderDataset(tmp_path, 8, classes=("a", "b"))


@pytest.mark.parametrize("make, match", [
    (lambda root: (root / "a" / "scan.docx").write_bytes(b"PK"), "scan.docx is not an image file"),
    (lambda root: (root / "b").mkdir(), "Class folder .*b holds no images"),
    (lambda root: (root / "a" / "sub").mkdir(), "nested folders"),
    (lambda root: (root / "loose.JPEG").write_bytes(b""), "loose.JPEG: files must be inside a class folder"),
])
def test_folder_listing_errors(tmp_path, make, match):
    write_tree(tmp_path, {"a": 1})
    make(tmp_path)
    with pytest.raises(DatasetError, match=match):
        FolderDataset(tmp_path, 8)


def test_folder_empty_or_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="holds no class folders"):
        FolderDataset(tmp_path, 8)
    with pytest.raises(DatasetError, match="is not a folder"):
        FolderDataset(tmp_path / "nope", 8)


def test_folder_corrupt_image_names_file(tmp_path):
    write_tree(tmp_path, {"a": 2})
    bad = tmp_path / "a" / "1.JPEG"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # truncated JPEG
    (tmp_path / "a" / "2.JPEG").write_bytes(b"not a jpeg at all")
    ds = FolderDataset(tmp_path, 8)
    assert ds.get_images([0]).shape == (1, 3, 8, 8)  # listing never decodes; only the asked-for images are
    for i, path in ((1, bad), (2, tmp_path / "a" / "2.JPEG")):
        with pytest.raises(DatasetError, match="cannot be decoded") as err:
            ds.get_images([i])
        assert str(path) in str(err.value)


def test_folder_grey_png_becomes_rgb_and_augment_is_seeded(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("L", (30, 20), 77).save(tmp_path / "a" / "g.png")
    write_tree(tmp_path, {"b": 3}, ext=".png")
    ds = FolderDataset(tmp_path, 12)
    assert ds.get_images([0]).unique().tolist() == [77]
    one = ds.get_images([0, 1, 2, 3], augment=True, generator=torch.Generator().manual_seed(5))
    two = ds.get_images([0, 1, 2, 3], augment=True, generator=torch.Generator().manual_seed(5))
    assert one.shape == (4, 3, 12, 12) and torch.equal(one, two)


def imagenette_tree(root: Path, train: int = 2, val: int = 1) -> Path:
    base = root / "imagenette" / "imagenette2-160"
    for split, n in (("train", train), ("val", val)):
        write_tree(base / split, {wnid: n for wnid in folders.IMAGENETTE_WNIDS}, sizes=((16, 12),))
    return base


def test_load_imagenette(tmp_path):
    imagenette_tree(tmp_path)
    train = load_dataset("imagenette", "train", root=tmp_path, verify=False)
    test = load_dataset("imagenette", "test", root=tmp_path, verify=False)
    assert isinstance(train, FolderDataset) and len(train) == 20 and len(test) == 10
    assert train.shape == (3, 160, 160) and test.classes == folders.IMAGENETTE_WNIDS
    assert test.labels.tolist() == list(range(10)) and test.get_images([9]).shape == (1, 3, 160, 160)
    with pytest.raises(DatasetError, match="holds 20 images in 10 classes, expected 9469"):
        load_dataset("imagenette", "train", root=tmp_path, verify=True)


def test_imagenette_from_archive_and_offline_hint(tmp_path, offline):
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenette", "train", root=tmp_path)
    assert "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz" in str(err.value) and offline
    src = imagenette_tree(tmp_path / "src", train=1, val=1)
    tar_folder(tmp_path / "imagenette" / "imagenette2-160.tgz", src)
    assert len(load_dataset("imagenette", "test", root=tmp_path, verify=False)) == 10
    assert leftovers(tmp_path / "imagenette") == []


def test_imagenette_traversal_member_refused(tmp_path):
    make_tar(tmp_path / "imagenette" / "imagenette2-160.tgz", {"/etc/evil": b"owned"})
    with pytest.raises(DatasetError, match="unsafe archive member '/etc/evil'"):
        load_dataset("imagenette", "train", root=tmp_path, verify=False)


def test_imagenet_missing_says_where_to_put_it(tmp_path, offline):
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet", "train", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "imagenet" / "train") + "/<wnid>/*.JPEG" in message
    assert str(tmp_path / "imagenet" / "val") + "/<wnid>/*.JPEG" in message and "licence" in message
    assert offline == []


def test_imagenet_val_uses_train_class_indices(tmp_path):
    write_tree(tmp_path / "imagenet" / "train", {"n01": 2, "n02": 1, "n03": 1}, sizes=((10, 10),))
    write_tree(tmp_path / "imagenet" / "val", {"n03": 1}, sizes=((10, 10),))
    train = load_dataset("imagenet", "train", root=tmp_path, verify=False)
    val = load_dataset("imagenet", "test", root=tmp_path, verify=False)
    assert train.labels.tolist() == [0, 0, 1, 2] and val.labels.tolist() == [2] and val.num_classes == 3
    with pytest.raises(DatasetError, match="expected 1281167 in 1000"):
        load_dataset("imagenet", "train", root=tmp_path, verify=True)
    (tmp_path / "imagenet" / "val" / "stray.JPEG").write_bytes(b"")  # flat val/ folder, not sorted by wnid
    with pytest.raises(DatasetError, match="inside a class folder.*valprep.sh"):
        load_dataset("imagenet", "test", root=tmp_path, verify=False)
