"""An on-disk cache of loaded and preprocessed datasets, keyed by the dataset's spec and P.

A sweep of a thousand runs then does not repeat the PCA a thousand times, across processes and
sessions. Arrays are stored losslessly (npz, float64), so a hit returns exactly what ``load`` would.
``$DLPHASE_CACHE`` sets the folder (default ``~/.cache/dlphase/data``); ``DLPHASE_CACHE=off`` disables it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from .files import atomic_write, temporaries_of
from .interfaces import Data, Dataset

VERSION = 1
#: a temporary file of an entry older than this (seconds) was left by a writer that was killed: it is removed
STALE_AFTER = 3600.0
FIELDS = ("x_train", "y_train", "x_test", "y_test", "x_kernel", "y_kernel", "x_val", "y_val",
          "classes_train", "classes_test", "classes_kernel", "informative")


def cache_dir() -> Path | None:
    value = os.environ.get("DLPHASE_CACHE")
    if value is not None and value.strip().lower() in ("", "0", "off", "no", "false"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dlphase" / "data"


def cache_key(dataset: Dataset, P: int, n_validation: int = 0) -> str:
    from .specs import component_to_dict

    ident = {"class": f"{type(dataset).__module__}:{type(dataset).__qualname__}", "spec": component_to_dict(dataset),
             "P": P, "token": dataset.cache_token(), "version": VERSION}
    if n_validation:
        ident["n_validation"] = n_validation
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=repr).encode()).hexdigest()[:24]


def _compute(dataset: Dataset, P: int, n_validation: int) -> Data:
    return dataset.load_validation(P, n_validation) if n_validation else dataset.load(P)


def load(dataset: Dataset, P: int, n_validation: int = 0) -> Data:
    """``dataset.load(P)`` (``load_validation`` with a validation set), through the disk cache where the
    dataset allows it."""
    folder = cache_dir()
    if folder is None or not dataset.cacheable:
        return _compute(dataset, P, n_validation)
    path = folder / f"{dataset.name}-{cache_key(dataset, P, n_validation)}.npz"
    drop_stale(path)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in FIELDS if k in z.files}
                attrs = json.loads(str(z["attrs"]))
            return Data(**arrays, attrs=attrs)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # unreadable entry: recompute and overwrite it
    data = _compute(dataset, P, n_validation)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(data, k) for k in FIELDS if getattr(data, k) is not None}

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, attrs=np.array(json.dumps(dict(data.attrs), default=str)))

        atomic_write(path, write, suffix=".npz")
    except OSError:
        pass  # a read-only or full cache folder must not stop a run
    return data


def drop_stale(path: Path) -> None:
    """Remove the temporary files that writers of ``path`` killed mid-write left behind; a fresh one may be
    another process's write in progress, and stays."""
    for tmp in temporaries_of(path, ".npz"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_AFTER:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to remove
