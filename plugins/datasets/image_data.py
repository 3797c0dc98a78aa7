"""The base of every image dataset: label maps, balanced nested splits, and the preprocessing pipeline.

A subclass only says where its pixels and classes come from (:meth:`ImageDataset.pools`); the split
into test, kernel and training sets and the preprocessing are the same for all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import attrs
import numpy as np

from dlphase import Data, DataError, Dataset, param
from dlphase.specs import non_negative
from dlphase.specs import positive as greater_than_zero

from . import preprocessing, splits

#: at most this many points of the training pool fit the preprocessing maps (fit_on = "pool"): the maps are then
#: the same for every P, and fitting them on all of MNIST's 60000 images would cost seconds and GBs per load
FIT_POOL = 20000


@attrs.frozen(kw_only=True)
class Pools:
    """Pixels in [0, 1] as (n, C, H, W) and integer classes; ``test`` is None without an official split."""

    x: np.ndarray
    classes: np.ndarray
    x_test: np.ndarray | None = None
    classes_test: np.ndarray | None = None
    source: str = ""


def _check_positive(instance, attribute, value):
    if instance.labels == "positive" and not value:
        raise ValueError("positive must list the classes labelled +1 when labels = 'positive'")
    if instance.labels != "positive" and value:
        raise ValueError("positive is only used with labels = 'positive'; set labels = 'positive'")


@attrs.frozen(kw_only=True)
class ImageDataset(Dataset):
    """Parameters and loading shared by the image datasets (subclasses implement ``pools``)."""

    pca: int = param(default=10, doc="principal components, fitted as fit_on says (0: raw pixels, images keep "
                                     "their (C, H, W) shape)", validator=non_negative)
    whiten: bool = param(default=False, doc="scale each principal component to unit variance (needs pca > 0)")
    center: bool = param(default=True, doc="subtract the mean (of the points fit_on says)")
    normalize: bool = param(default=True, doc="rescale each sample to norm sqrt(dim)")
    labels: Literal["parity", "alternate", "positive"] = param(
        default="parity", doc="+-1 labels: parity (even +1), alternate (sorted classes alternate), "
                              "or positive (the classes in `positive` are +1)")
    positive: tuple[int, ...] = param(default=(), doc="classes labelled +1 when labels = 'positive'",
                                      validator=_check_positive)
    n_test: int = param(default=1000, doc="test points (class-balanced, independent of P)", validator=greater_than_zero)
    n_kernel: int = param(default=0, doc="kernel-set points for NTK observables (disjoint from train and test)",
                          validator=non_negative)
    seed: int = param(default=0, doc="data seed: which points go to the test, kernel and training sets",
                      validator=non_negative)
    fit_on: Literal["pool", "train"] = param(
        default="pool", doc="what centring, normalisation and PCA are fitted on: pool (the points that can be "
                            f"training points for this data seed, up to {FIT_POOL}, the same for every P) or train "
                            "(the P training points, as the reference code does)")

    def __attrs_post_init__(self):
        if self.whiten and not self.pca:
            raise ValueError("whiten needs pca > 0")

    # -- to implement --------------------------------------------------------------------------
    def pools(self) -> Pools:
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def _labelled(self):
        pools = self.pools()
        dim = int(np.prod(pools.x.shape[1:]))
        if self.pca > dim:
            raise DataError(f"{self.name}: pca = {self.pca} is more than the {dim} input dimensions; lower pca")
        y = splits.binary_labels(pools.classes, self.labels, self.positive)
        y_test = None if pools.x_test is None else splits.binary_labels(pools.classes_test, self.labels, self.positive)
        return pools, y, y_test

    def max_train(self) -> int:
        _, y, y_test = self._labelled()
        return self._max_train(y, y_test)

    def _max_train(self, y: np.ndarray, y_test: np.ndarray | None) -> int:
        return splits.max_balanced(y, self.n_test, self.n_kernel, separate_test=y_test is not None)

    def load(self, P: int) -> Data:
        return self.load_validation(P, 0)

    def load_validation(self, P: int, n_validation: int) -> Data:
        """The validation points come after the P training points in each label's shuffled pool, so the
        training set is the same as without them; every map is fitted on the training points only."""
        pools, y, y_test_pool = self._labelled()
        parts = splits.balanced_split(y, self.n_test, P, self.seed, self.n_kernel, y_test_pool,
                                      what=f"{self.name} ({pools.source})", n_validation=n_validation)
        test, kernel, train = parts[:3]
        val = parts[3] if n_validation else np.zeros(0, dtype=np.int64)
        x_test_pool = pools.x if pools.x_test is None else pools.x_test
        c_test_pool = pools.classes if pools.classes_test is None else pools.classes_test
        y_test_all = y if y_test_pool is None else y_test_pool
        if self.pca and P < 2 and self.fit_on == "train":
            raise DataError(f"PCA needs at least 2 training points, got P = {P}")
        fit, fitted_on = None, "the training split"
        if self.fit_on == "pool":
            n_pool = min(self._max_train(y, y_test_pool), FIT_POOL)
            pool = splits.balanced_split(y, self.n_test, n_pool, self.seed, self.n_kernel, y_test_pool)[2]
            fit, fitted_on = pools.x[pool], f"a pool of {n_pool} points that holds every training set"
        try:
            xtr, xte, xk, xv = preprocessing.pipeline(pools.x[train], x_test_pool[test], pools.x[kernel], pools.x[val],
                                                  center_=self.center, normalize_=self.normalize,
                                                  pca_=self.pca, whiten=self.whiten, fit=fit)
        except ValueError as exc:
            raise DataError(f"{self.name}: {exc}") from None
        return Data(x_train=xtr, y_train=y[train], x_test=xte, y_test=y_test_all[test],
                    x_kernel=xk, y_kernel=y[kernel],
                    x_val=xv if n_validation else None, y_val=y[val] if n_validation else None,
                    classes_train=pools.classes[train], classes_test=c_test_pool[test],
                    classes_kernel=pools.classes[kernel],
                    attrs={"source": pools.source, "labels": self._label_text(),
                           "preprocessing": preprocessing.describe(self.center, self.normalize, self.pca, self.whiten,
                                                                   fitted_on)})

    def _label_text(self) -> str:
        if self.labels == "positive":
            return f"classes {list(self.positive)} +1, others -1"
        return {"parity": "parity (even +1, odd -1)", "alternate": "sorted classes alternate +1, -1"}[self.labels]


def data_folder(name: str, data_dir: str | None) -> Path | None:
    """``data_dir`` from the spec, else ``$DLPHASE_DATA/<name>`` if that folder exists, else None."""
    if data_dir:
        return Path(os.path.expanduser(data_dir))
    root = os.environ.get("DLPHASE_DATA")
    if root and (Path(root) / name).is_dir():
        return Path(root) / name
    return None
