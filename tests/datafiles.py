"""Writers of tiny dataset files in the real formats, from hand-made arrays (for the loader tests)."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, n_train=40, n_test=20, gz=False, seed=0, size=28):
    """The four MNIST-style IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": (rng.integers(0, 256, (n_train, size, size)), np.arange(n_train) % 10),
              "t10k": (rng.integers(0, 256, (n_test, size, size)), np.arange(n_test) % 10)}
    for prefix, (images, labels) in arrays.items():
        for kind, arr, magic in (("images-idx3-ubyte", images, 0x803), ("labels-idx1-ubyte", labels, 0x801)):
            data = idx_bytes(arr, magic)
            name = f"{prefix}-{kind}" + (".gz" if gz else "")
            (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def write_cifar_folder(folder: Path, n_per_batch=12, n_test=10, kind="bin", seed=0):
    """The six CIFAR10 batches in the binary or python format; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        labels = rng.integers(0, 10, n)
        labels[:10 if n >= 10 else n] = np.arange(min(n, 10))
        batches[name] = (data, labels)
        if kind == "bin":
            table = np.concatenate([labels[:, None].astype(np.uint8), data], axis=1)
            (folder / f"{name}.bin").write_bytes(table.tobytes())
        else:
            obj = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
                   b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
            (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    return batches
