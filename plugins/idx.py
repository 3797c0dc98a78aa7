"""Readers for the IDX files of MNIST, Fashion-MNIST and KMNIST, gzipped or not, checked strictly."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from dlphase import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim


def find(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder`` (also the ``stem.idx3-ubyte`` spelling some mirrors use)."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({exc}); download it again") from None
    return raw


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array stored in an IDX file whose magic number must be ``magic``."""
    raw = read_bytes(path)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    if len(raw) < 4:
        raise DataError(f"{path} is truncated (only {len(raw)} bytes); download it again")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DataError(f"{path} has IDX magic number 0x{found:08x}, expected 0x{magic:08x} for {kind}; "
                        f"is it the right file?")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path} holds {len(raw)} bytes but its header ({' x '.join(map(str, dims))}) needs "
                        f"{expected}; the file is truncated or corrupt, download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_split(folder: Path, prefix: str, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images as float (n, 1, H, W) in [0, 1] and classes (n,) of the split ``train`` or ``t10k``."""
    img_path = find(folder, f"{prefix}-images-idx3-ubyte")
    lab_path = find(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(img_path, IMAGES_MAGIC)
    labels = read_idx(lab_path, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{img_path.name} holds {len(images)} images but {lab_path.name} holds {len(labels)} "
                        f"labels in {folder}; the files do not belong together")
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise DataError(f"{lab_path} has label {int(bad[0])}, outside 0..{n_classes - 1}; the file is corrupt")
    return images[:, None].astype(np.float64) / 255.0, labels


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def check_folder(folder: Path, name: str, where_to_get: str) -> None:
    """A one-line error naming the folder, the expected files and where to get them, if any is missing."""
    if not folder.is_dir():
        raise DataError(f"{name}: data folder {folder} does not exist; put {', '.join(IDX_FILES)} (gzipped or "
                        f"not) there, from {where_to_get}")
    missing = [f for f in IDX_FILES if find(folder, f) is None]
    if missing:
        raise DataError(f"{name}: {folder} lacks {', '.join(missing)} (gzipped or not); it needs "
                        f"{', '.join(IDX_FILES)}, from {where_to_get}")
