"""Opening files that may have been tampered with: a pickle loader that can only rebuild numpy arrays,
and a tar.gz extractor that refuses links, devices, absolute paths, '..' and decompression bombs."""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO, Callable

import numpy as np

from .base import DatasetError, download, download_hint

try:  # numpy >= 2 (old pickles name numpy.core, which is a deprecated alias there)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct

EXPANSION_LIMIT = 3


# ----------------------------------------------------------------------------- pickles (CIFAR python batches)

class NumpyOnlyUnpickler(pickle.Unpickler):
    """The batches are pickles; a plain pickle.load would run any callable an attacker names, so allow only array rebuilding."""

    _ALLOWED: dict[tuple[str, str], Callable] = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                                                 ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                                                 ("numpy", "ndarray"): np.ndarray,
                                                 ("numpy", "dtype"): np.dtype}

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Callable:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(f"{self.path}: refusing to unpickle {module}.{name}; a CIFAR batch only "
                               "contains numpy arrays, lists, bytes and ints.") from None


def load_numpy_pickle(path: Path, hint: str) -> dict:
    """The dict a CIFAR batch pickles, loaded with `NumpyOnlyUnpickler`; anything unreadable is a DatasetError."""
    try:
        with open(path, "rb") as f:
            obj = NumpyOnlyUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as err:  # truncated / garbage pickles raise many different types
        raise DatasetError(f"{path} is not a readable CIFAR pickle ({err!r}). " + hint) from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(obj).__name__}. " + hint)
    return obj


# ----------------------------------------------------------------------------- archives

@dataclass(frozen=True)
class Archive:
    """An official .tar.gz and the one folder it extracts to; CIFAR, STL-10 and ImageNette differ only in these."""
    name: str  # the archive's file name, next to which it is extracted
    md5: str
    folder: str  # what it extracts to
    holds: str  # what the extracted folder holds, for the hint

    def hint(self, url: str, base: Path) -> str:
        """Where to put the archive, or its extracted folder, by hand."""
        return (download_hint(url, self.md5, base / self.name)
                + f" (or extract it so that {base / self.folder} holds {self.holds}).")

    def extracted(self, url: str, base: Path, download_ok: bool, hint: str) -> Path:
        """`base/folder`, extracting it from `base/name` first (downloading that if allowed) when missing."""
        target, archive = base / self.folder, base / self.name
        if target.is_dir():
            return target
        if not archive.is_file():
            if not download_ok:
                raise DatasetError(f"Neither {target} nor {archive} exists (download=False). " + hint)
            download(url, archive, self.md5)
        safe_extract(archive, base, self.folder, hint)
        return target


def safe_extract(archive: Path, base: Path, folder: str, hint: str) -> None:
    """Extract into a temp dir and rename `folder` into place, so a bad or interrupted archive leaves nothing behind."""
    tmp: Path | None = None
    # The datasets' archives are JPEGs and raw pixels that gzip hardly shrinks; a far larger expansion is a
    # decompression bomb, refused before it fills the disk.
    budget = EXPANSION_LIMIT * archive.stat().st_size + (16 << 20)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=base))
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                budget -= member.size
                if budget < 0:
                    raise DatasetError(f"{archive}: its members expand to more than {EXPANSION_LIMIT}x the archive's "
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
