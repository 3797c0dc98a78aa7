"""The preprocessing pipeline of the paper's image data, every map fitted on one set of points (the training
pool or the training split) and applied to every split.

Steps, in order, each optional: centre on the fitted mean; rescale each sample to norm sqrt(dim);
PCA on the top d components of the fitted covariance, scaled by 1 / sqrt(mean of those d eigenvalues),
or by 1 / sqrt(each eigenvalue) with whitening. Without PCA the images keep their shape (C, H, W).
"""

from __future__ import annotations

import numpy as np


def center(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Subtract the mean of the first array (the one the maps are fitted on) from every array."""
    mu = train.mean(axis=0)
    return [a - mu for a in (train, *others)]


def normalize(*arrays: np.ndarray) -> list[np.ndarray]:
    """Rescale each sample to norm sqrt(dim), dim = its number of entries."""
    out = []
    for a in arrays:
        flat = a.reshape(len(a), -1)
        norms = np.linalg.norm(flat, axis=1)
        if np.any(norms == 0):
            raise ValueError("a sample is zero after centring; it cannot be rescaled to norm sqrt(dim)")
        out.append((flat * (np.sqrt(flat.shape[1]) / norms)[:, None]).reshape(a.shape))
    return out


def pca(train: np.ndarray, *others: np.ndarray, d: int, whiten: bool = False) -> list[np.ndarray]:
    """Project on the top ``d`` principal components of ``train``.

    Scaled by 1/sqrt(mean of the d eigenvalues), or by 1/sqrt(each eigenvalue) when ``whiten``.
    """
    z = train.reshape(len(train), -1)
    if not 0 < d <= z.shape[1]:
        raise ValueError(f"pca = {d} must be between 1 and the input dimension {z.shape[1]}")
    mu = z.mean(axis=0)
    cov = (z - mu).T @ (z - mu) / len(z)
    val, vec = np.linalg.eigh(cov)
    order = np.argsort(val)[::-1][:d]
    val, vec = val[order], vec[:, order]
    if np.any(val <= 0):
        raise ValueError(f"the training set spans fewer than pca = {d} dimensions; lower pca or raise P")
    # fix each eigenvector's sign (largest entry positive) so the projection is reproducible
    vec = vec * np.sign(vec[np.abs(vec).argmax(axis=0), np.arange(d)])
    scale = 1 / np.sqrt(val) if whiten else np.full(d, 1 / np.sqrt(val.mean()))
    return [(a.reshape(len(a), -1) - mu) @ vec * scale for a in (train, *others)]


def pipeline(train: np.ndarray, *others: np.ndarray, center_: bool = True, normalize_: bool = True,
             pca_: int = 0, whiten: bool = False, fit: np.ndarray | None = None) -> list[np.ndarray]:
    """Apply the enabled steps in order, fitted on ``fit`` (default: ``train``); returns [train, *others] (empty
    ones stay empty). With ``fit`` given, each split's result depends on its own points and ``fit`` only."""
    given = [np.asarray(a, dtype=np.float64) for a in (train, *others)]
    full = [i for i, a in enumerate(given) if len(a) or i == 0]
    arrays = [given[i] for i in full]
    if fit is None:
        done = _steps(arrays, center_, normalize_, pca_, whiten)
    else:
        done = _steps([np.asarray(fit, dtype=np.float64)] + arrays, center_, normalize_, pca_, whiten)[1:]
    out = dict(zip(full, done))
    return [out.get(i, np.empty((0,) + done[0].shape[1:])) for i in range(len(given))]


def _steps(arrays, center_, normalize_, pca_, whiten):
    if center_:
        arrays = center(*arrays)
    if normalize_:
        arrays = normalize(*arrays)
    if pca_:
        arrays = pca(*arrays, d=pca_, whiten=whiten)
    elif whiten:
        raise ValueError("whiten needs pca > 0")
    return arrays


def describe(center_: bool, normalize_: bool, pca_: int, whiten: bool, fitted_on: str = "the training split") -> str:
    """A one-line provenance string for the cube's attributes."""
    steps = (["centre"] if center_ else []) + (["norm sqrt(dim)"] if normalize_ else [])
    if pca_:
        steps.append(f"PCA {pca_}" + (", whitened" if whiten else ", scaled by mean eigenvalue"))
    if not steps:
        return "raw pixels in [0, 1]"
    return ", ".join(steps) + (f"; fitted on {fitted_on}" if center_ or pca_ else "")
