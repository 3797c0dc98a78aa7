"""scikit-learn's bundled 8x8 digits (1797 images, no download), as a second offline real dataset."""

from __future__ import annotations

import functools
from typing import ClassVar

import attrs
import numpy as np

import dlphase
from dlphase import param
from dlphase.specs import non_negative, positive

from .image_data import ImageDataset, Pools


@functools.lru_cache(maxsize=1)
def _digits() -> Pools:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Pools(x=bunch.images[:, None].astype(np.float64) / 16.0, classes=bunch.target.astype(np.int64),
                 source="scikit-learn load_digits, 1797 8x8 images")


@attrs.frozen(kw_only=True)
class Digits(ImageDataset):
    """The 1797 8x8 digits bundled with scikit-learn (parity labels by default)."""

    name: ClassVar[str] = "digits"
    pca: int = param(default=10, doc="principal components, fitted as fit_on says (0: raw (1, 8, 8) "
                                     "images)", validator=non_negative)
    n_test: int = param(default=400, doc="test points (class-balanced, independent of P)",
                        validator=positive)

    def pools(self) -> Pools:
        return _digits()


@dlphase.hookimpl
def register_datasets(register):
    register(Digits)
