"""CIFAR10 from its binary (``*.bin``) or python (pickled) distribution, never unpickling arbitrary objects."""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path
from typing import ClassVar, Literal

import attrs
import numpy as np

import dlphase
from dlphase import DataError, param
from dlphase.specs import non_negative

from .image_data import ImageDataset, Pools, data_folder

WHERE = "https://www.cs.toronto.edu/~kriz/cifar.html"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = "test_batch"
RECORD = 1 + 3 * 32 * 32
SUBFOLDERS = ("cifar-10-batches-bin", "cifar-10-batches-py")


class RestrictedUnpickler(pickle.Unpickler):
    """Accepts only what a CIFAR batch holds: dicts, lists, bytes, numbers and numpy uint8 arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(path: Path) -> dict:
    try:
        obj = RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path} is not a valid CIFAR10 python batch ({exc}); download it again") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of a CIFAR10 batch")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DataError(f"{path} lacks the 'data' or 'labels' entry of a CIFAR10 batch; download it again")
    data = np.asarray(obj["data"])
    labels = np.asarray(obj["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != RECORD - 1:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (n, 3072)")
    if len(data) != len(labels):
        raise DataError(f"{path} holds {len(data)} images but {len(labels)} labels; the file is corrupt")
    return {"data": data, "labels": labels}


def _read_bin(path: Path) -> dict:
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % RECORD:
        raise DataError(f"{path} holds {len(raw)} bytes, not a whole number of {RECORD}-byte records; "
                        f"the file is truncated or corrupt, download it again")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    return {"data": table[:, 1:], "labels": table[:, 0].astype(np.int64)}


def _layout(folder: Path) -> tuple[Path, str] | None:
    """(folder, "bin" or "py") of the distribution found in ``folder`` or its standard subfolders."""
    for f in (folder, *(folder / s for s in SUBFOLDERS)):
        if all((f / f"{b}.bin").is_file() for b in TRAIN + [TEST]):
            return f, "bin"
        if all((f / b).is_file() for b in TRAIN + [TEST]):
            return f, "py"
    return None


def _files(path: Path, kind: str) -> list[Path]:
    return [path / (b + (".bin" if kind == "bin" else "")) for b in TRAIN + [TEST]]


@functools.lru_cache(maxsize=2)
def _read(folder: str, kind: str, stamp: tuple) -> Pools:
    path = Path(folder)
    read = _read_bin if kind == "bin" else _unpickle
    batches = [read(f) for f in _files(path, kind)]
    for b, name in zip(batches, TRAIN + [TEST]):
        bad = b["labels"][(b["labels"] < 0) | (b["labels"] > 9)]
        if bad.size:
            raise DataError(f"{path / name}: label {int(bad[0])} is outside 0..9; the file is corrupt")

    def images(bs):
        return np.concatenate([b["data"] for b in bs]).reshape(-1, 3, 32, 32).astype(np.float64) / 255.0

    return Pools(x=images(batches[:-1]), classes=np.concatenate([b["labels"] for b in batches[:-1]]),
                 x_test=images(batches[-1:]), classes_test=batches[-1]["labels"],
                 source=f"CIFAR10 {'binary' if kind == 'bin' else 'python'} batches in {path}")


@attrs.frozen(kw_only=True)
class CIFAR10(ImageDataset):
    """CIFAR10 (the sorted classes alternate +1/-1 by default, as in the paper), from local batch files."""

    name: ClassVar[str] = "cifar10"
    data_dir: str | None = param(default=None, doc="folder with the batches (default: $DLPHASE_DATA/cifar10)")
    labels: Literal["parity", "alternate", "positive"] = param(
        default="alternate", doc="+-1 labels: alternate (sorted classes alternate, as in the paper), parity, "
                                 "or positive (the classes in `positive` are +1)")
    pca: int = param(default=30, doc="principal components, fitted as fit_on says (0: raw (3, 32, 32) "
                                     "images)", validator=non_negative)

    def cache_token(self) -> str:
        path, kind = self._locate()
        return repr([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in _files(path, kind)])

    def pools(self) -> Pools:
        path, kind = self._locate()
        return _read(str(path.resolve()), kind, tuple((f.stat().st_size, f.stat().st_mtime_ns)
                                                      for f in _files(path, kind)))

    def _locate(self) -> tuple[Path, str]:
        folder = data_folder(self.name, self.data_dir)
        expected = (f"data_batch_1..5 and test_batch, as .bin (binary version) or python pickles, in the folder "
                    f"or its {' or '.join(SUBFOLDERS)} subfolder, from {WHERE}")
        if folder is None:
            raise DataError(f"cifar10: no data folder; set data_dir in [dataset] or use $DLPHASE_DATA/cifar10/ "
                            f"with {expected}")
        if not folder.is_dir():
            raise DataError(f"cifar10: data folder {folder} does not exist; it needs {expected}")
        found = _layout(folder)
        if found is None:
            raise DataError(f"cifar10: {folder} lacks the CIFAR10 batches; it needs {expected}")
        return found


@dlphase.hookimpl
def register_datasets(register):
    register(CIFAR10)
