"""The reference's preprocessing (SCIENCE.md section 3), fitted on the training split only.

centre on the training mean; rescale each sample to norm sqrt(dim); PCA on the top d components of the
training covariance, scaled by 1 / sqrt(mean of those d eigenvalues). The same maps apply to the test set.
"""

from __future__ import annotations

import numpy as np


def center(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Subtract the training mean from every split."""
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
    # fix each eigenvector's sign (largest entry positive) so the projection is reproducible
    vec = vec * np.sign(vec[np.abs(vec).argmax(axis=0), np.arange(d)])
    scale = 1 / np.sqrt(val) if whiten else np.full(d, 1 / np.sqrt(val.mean()))
    return [(a.reshape(len(a), -1) - mu) @ vec * scale for a in (train, *others)]
