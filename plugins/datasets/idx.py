"""Readers for the IDX files of MNIST, Fashion-MNIST and KMNIST, gzipped or not, checked strictly."""

from __future__ import annotations

import math
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


#: deflate never expands data more than this (its longest match, 258 bytes, costs at least 2 bits): a gzipped
#: file that claims more than this times its size is corrupt, and is refused before anything is allocated
DEFLATE_RATIO = 1032


class _Contents:
    """A file's bytes, gunzipped as they are asked for, so that no more than its header's claim is ever
    decompressed or allocated."""

    def __init__(self, path: Path):
        self.path, self.raw = path, path.read_bytes()
        self.gzipped = self.raw[:2] == b"\x1f\x8b"
        self.stream = zlib.decompressobj(wbits=31) if self.gzipped else None
        self.data = b"" if self.gzipped else self.raw
        self.pending = self.raw if self.gzipped else b""     # compressed input not yet decompressed

    def upto(self, n: int) -> bytes:
        """The first n bytes (fewer if the file ends before), plus one more if there is one."""
        if self.gzipped and len(self.data) <= n and not self.stream.eof:
            try:
                self.data += self.stream.decompress(self.pending, n + 1 - len(self.data))
            except zlib.error as exc:
                raise DataError(f"{self.path} is a corrupt or truncated gzip file ({exc}); download it "
                                f"again") from None
            self.pending = self.stream.unconsumed_tail
        return self.data[:n + 1]

    def truncated(self) -> str:
        return ("is a corrupt or truncated gzip file" if self.gzipped else "is truncated") + "; download it again"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array stored in an IDX file whose magic number must be ``magic``."""
    contents = _Contents(path)
    kind = "images" if magic == IMAGES_MAGIC else "labels"
    head = contents.upto(4)
    if len(head) < 4:
        raise DataError(f"{path} {contents.truncated()} (only {len(head)} bytes)")
    (found,) = struct.unpack(">I", head[:4])
    if found != magic:
        raise DataError(f"{path} has IDX magic number 0x{found:08x}, expected 0x{magic:08x} for {kind}; "
                        f"is it the right file?")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    head = contents.upto(header)
    if len(head) < header:
        raise DataError(f"{path} {contents.truncated()} (it ends inside its header)")
    dims = struct.unpack(f">{ndim}I", head[4:header])
    expected = header + math.prod(dims)
    if contents.gzipped and expected > DEFLATE_RATIO * len(contents.raw):
        raise DataError(f"{path}: its header claims {' x '.join(map(str, dims))} bytes, more than {len(contents.raw)} "
                        f"gzipped bytes can hold; the file is corrupt, download it again")
    raw = contents.upto(expected)
    if contents.gzipped and len(raw) < expected:
        raise DataError(f"{path} {contents.truncated()} (it holds {len(raw)} of the {expected} bytes its header "
                        f"({' x '.join(map(str, dims))}) needs)")
    if len(raw) != expected:
        raise DataError(f"{path} holds {len(raw) if len(raw) < expected else 'more'} bytes but its header "
                        f"({' x '.join(map(str, dims))}) needs {expected}; the file is truncated or corrupt, "
                        f"download it again")
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
