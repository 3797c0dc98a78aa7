"""Kernel PCA of a Gram matrix against the labels (the paper's Fig. 11).

With K = sum_lambda lambda phi_lambda phi_lambda^T (eigenvalues in decreasing order, |phi_lambda| = 1) on n points
with labels y:
- the fraction of |y|^2 carried by the top k eigenvectors, sum_{lambda <= k} (phi_lambda . y)^2 / |y|^2;
- the projection omega_lambda = (phi_lambda . y)^2 / |y|^2 of each top eigenvector;
- the mutual information (nats; the ntk_kpca observable converts to bits) between the components phi_lambda(x_mu)
  and the labels y_mu, by scikit-learn's nearest-neighbour estimator for a continuous variable against a discrete
  one (Ross 2014).
"""

from __future__ import annotations

import numpy as np


def kernel_pca(gram: np.ndarray, y: np.ndarray, ks, top: int, neighbors: int = 3) -> dict[str, np.ndarray]:
    """``{"fraction": (len(ks),), "projection": (top,), "mutual_information": (top,)}``; NaN where k or the
    eigenvector's rank exceeds n."""
    from sklearn.feature_selection import mutual_info_classif

    gram = np.asarray(gram, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if gram.shape != (n, n):
        raise ValueError(f"the Gram matrix is {gram.shape} but there are {n} labels")
    _, vecs = np.linalg.eigh((gram + gram.T) / 2)
    vecs = vecs[:, ::-1]                                    # decreasing eigenvalues
    omega = (vecs.T @ y) ** 2 / (y @ y)
    cumulative = np.cumsum(omega)
    fraction = np.array([cumulative[k - 1] if k <= n else np.nan for k in ks])
    m = min(top, n)
    projection = np.full(top, np.nan)
    projection[:m] = omega[:m]
    mi = np.full(top, np.nan)
    if len(np.unique(y)) > 1:
        mi[:m] = mutual_info_classif(vecs[:, :m], y, discrete_features=False, n_neighbors=neighbors,
                                     random_state=0)
    return {"fraction": fraction, "projection": projection, "mutual_information": mi}
