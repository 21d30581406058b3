"""Image folders, `root/<class>/<image>`, decoded per batch: own data, ImageNette and ImageNet.  Checked
by image counts, since file-level checksums of 1.3 M JPEGs would be a file of their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch

from ..augment import IMAGENET_MEAN_STD, random_resized_crop, resize
from .base import DatasetBase, DatasetError, DatasetInfo, Indices, as_indices
from .safe import Archive

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

# ImageNette's classes are its folder names (ImageNet wnids): tench, English springer, cassette player, chain saw,
# church, French horn, garbage truck, gas pump, golf ball, parachute.
IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888257")
_IMAGENETTE_ARCHIVE = Archive("imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412", "imagenette2-160",
                              "train/ and val/")
_FOLDER_SPLITS = {"train": "train", "test": "val"}
# Official image counts, checked when verify=True.
_FOLDER_COUNTS = {"imagenette": {"train": 9469, "test": 3925}, "imagenet": {"train": 1281167, "test": 50000}}

# Dataset archives and file browsers leave these next to images; anything else that is not an image is an error.
_IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"})
_IGNORED_EXTS = frozenset({".txt", ".csv", ".json", ".md", ".xml", ".db", ".ini", ".mat", ".sh",
                           ".tar", ".tgz", ".gz", ".zip"})


class FolderDataset(DatasetBase):
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
    def shape(self) -> tuple[int, int, int]:
        return 3, self.size, self.size

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self._files[index])

    def get_images(self, indices: Indices, augment: bool = False,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Decode, then RandomResizedCrop + flip if `augment`, else the test resize -> uint8 (B, 3, size, size)."""
        idx = as_indices(indices, len(self))
        out = torch.empty((len(idx), *self.shape), dtype=torch.uint8)
        for k, i in enumerate(idx.tolist()):
            img = open_rgb(self.path(i))
            out[k] = (random_resized_crop(img, self.size, generator) if augment
                      else resize(img, self.size, self.center_crop))
        return out


def open_rgb(path: Path) -> PILImage:
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


def _ignored(name: str) -> bool:
    return name.startswith(".") or os.path.splitext(name)[1].lower() in _IGNORED_EXTS


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


# ----------------------------------------------------------------------------- ImageNette / ImageNet

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


def load_imagenette(info: DatasetInfo, split: str, root: Path, download_ok: bool, verify: bool) -> FolderDataset:
    """One split of ImageNette ("test" is its val/ folder), extracting (and downloading) the archive when missing."""
    base = root / info.folder
    hint = _IMAGENETTE_ARCHIVE.hint(info.url, base)
    folder = _IMAGENETTE_ARCHIVE.extracted(info.url, base, download_ok, hint) / _FOLDER_SPLITS[split]
    return _checked_folder(info, split, folder, verify, hint, classes=info.classes)


def load_imagenet(info: DatasetInfo, split: str, root: Path, download_ok: bool, verify: bool) -> FolderDataset:
    """One split of ImageNet from extracted folders; `download_ok` is ignored, as its licence needs a sign-in."""
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
