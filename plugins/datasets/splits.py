"""Binary label maps and the deterministic, class-balanced, nested splits shared by every image dataset."""

from __future__ import annotations

import numpy as np

from dlphase import DataError


def binary_labels(classes: np.ndarray, labels: str, positive: tuple[int, ...] = ()) -> np.ndarray:
    """+-1 labels from integer classes.

    ``parity``: even +1, odd -1 (MNIST parity). ``alternate``: the sorted classes alternate +1, -1, ...
    (the paper's CIFAR10 map). ``positive``: the classes listed in ``positive`` are +1, the others -1.
    """
    if labels == "parity":
        return np.where(classes % 2 == 0, 1.0, -1.0)
    if labels == "alternate":
        rank = np.searchsorted(np.unique(classes), classes)
        return np.where(rank % 2 == 0, 1.0, -1.0)
    if labels == "positive":
        return np.where(np.isin(classes, positive), 1.0, -1.0)
    raise ValueError(f"unknown label map {labels!r}; use parity, alternate or positive")


def _counts(n: int) -> tuple[int, int]:
    """(+1, -1) counts of a balanced draw of n points."""
    return n // 2, n - n // 2


def balanced_split(y: np.ndarray, n_test: int, P: int, seed: int, n_kernel: int = 0,
                   y_test_pool: np.ndarray | None = None, what: str = "the data", n_validation: int = 0):
    """Indices (test, kernel, train), each balanced between +1 and -1, deterministic given ``seed``;
    with ``n_validation`` > 0, (test, kernel, train, validation).

    Each label's points are shuffled once by ``seed``; the test set takes the first ones, the kernel set
    the next ones, the training set the next P, the validation set the next n_validation. So the test
    and kernel sets do not depend on P, the training set for a smaller P is contained in the one for a
    larger P, and asking for a validation set leaves the training set as it was. With ``y_test_pool``
    the test set is drawn from that separate pool (an official test split) and the others from ``y``.
    """
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(y == label)) for label in (1, -1)]
    if y_test_pool is not None:
        test_rng = np.random.default_rng([seed, 2])
        test_pools = [test_rng.permutation(np.flatnonzero(y_test_pool == label)) for label in (1, -1)]
        skip = (0, 0)
    else:
        test_pools, skip = pools, _counts(n_test)
    test, kernel, train, val = [], [], [], []
    for i, (pool, tpool) in enumerate(zip(pools, test_pools)):
        kt, kk, kp, kv = _counts(n_test)[i], _counts(n_kernel)[i], _counts(P)[i], _counts(n_validation)[i]
        if kt > len(tpool):
            raise DataError(f"n_test = {n_test} needs {kt} test points of label {(1, -1)[i]:+d} but {what} has "
                            f"{len(tpool)}; lower n_test")
        need = skip[i] + kk + kp
        if need + kv > len(pool):
            extra = f" and n_validation = {n_validation}" if n_validation else ""
            raise DataError(f"P = {P} with n_test = {n_test}, n_kernel = {n_kernel}{extra} needs {need + kv} points "
                            f"of label {(1, -1)[i]:+d} but {what} has {len(pool)}; lower P, n_test or n_kernel"
                            + (" or n_validation" if n_validation else ""))
        test.append(tpool[:kt])
        kernel.append(pool[skip[i]:skip[i] + kk])
        train.append(pool[skip[i] + kk:need])
        val.append(pool[need:need + kv])
    order = np.random.default_rng([seed, 1])
    out = tuple(np.concatenate(parts)[order.permutation(sum(map(len, parts)))] for parts in (test, kernel, train))
    if not n_validation:
        return out
    return out + (np.concatenate(val)[np.random.default_rng([seed, 4]).permutation(sum(map(len, val)))],)


def max_balanced(y: np.ndarray, n_test: int, n_kernel: int, separate_test: bool) -> int:
    """The largest P that :func:`balanced_split` can serve."""
    best = None
    for i, label in enumerate((1, -1)):
        left = int(np.sum(y == label)) - _counts(n_kernel)[i] - (0 if separate_test else _counts(n_test)[i])
        # P // 2 (label +1) and P - P // 2 (label -1) must fit
        cap = 2 * left + 1 if i == 0 else 2 * left
        best = cap if best is None else min(best, cap)
    return max(best, 0)
