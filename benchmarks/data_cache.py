"""Loading full-size MNIST-format data: first load (read + preprocessing) against a disk-cache hit.

Builds a 60000 + 10000 image IDX folder (gzipped, from the 5000 bundled digits, tiled) in a temporary
folder, then times, in the same run:
  - the first load of P = 5000 with 10 PCA (read the files, split, centre, normalise, PCA),
  - the same load again from the on-disk cache, as every later run of a sweep does.
Usage: python benchmarks/data_cache.py
"""

import gzip
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np


def write_idx(folder: Path):
    from dlphase.plugins.datasets.mnist import bundled_digits

    x, c = bundled_digits()
    for prefix, n in (("train", 60000), ("t10k", 10000)):
        reps = -(-n // len(x))
        images = np.tile(x, (reps, 1))[:n].astype(np.uint8).reshape(n, 28, 28)
        labels = np.tile(c, reps)[:n].astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes(), compresslevel=1))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
            struct.pack(">II", 0x801, n) + labels.tobytes(), compresslevel=1))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "mnist").mkdir()
        write_idx(tmp / "mnist")
        os.environ["DLPHASE_CACHE"] = str(tmp / "cache")
        from dlphase import data_cache
        from dlphase.plugins.datasets import mnist
        from dlphase.plugins.datasets.mnist import MNIST

        ds = MNIST(data_dir=str(tmp / "mnist"), pca=10, n_test=10000, n_kernel=2500)
        t0 = time.perf_counter()
        first = data_cache.load(ds, 5000)
        t_first = time.perf_counter() - t0
        mnist._read_idx_folder.cache_clear()  # as in a new process: nothing in memory
        t0 = time.perf_counter()
        again = data_cache.load(ds, 5000)
        t_hit = time.perf_counter() - t0
        assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.x_test, again.x_test)
        print("full-size MNIST IDX (60000 + 10000 images), P = 5000, pca = 10, n_test = 10000, n_kernel = 2500")
        print(f"first load (read + split + PCA): {t_first:.2f} s")
        print(f"disk-cache hit:                  {t_hit:.3f} s")
        print(f"ratio first / hit:               {t_first / t_hit:.1f}x")


if __name__ == "__main__":
    main()
