"""Small cubes with known answers for the analyses: planted power laws with noise, planted jammed points."""

import numpy as np
import xarray as xr

GRID = ("h", "alpha_tilde", "P", "seed")


def ensemble_error(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """eps(<f>) by hand: the mean over the seed axis (-2) of f, then the fraction of test points with <f> y <= 0."""
    return (f.mean(axis=-2) * y <= 0).mean(axis=-1)


def fluctuation_cube(widths=(4, 6, 10, 14, 32, 64, 128, 256, 512), alphas=(0.01, 100.0), seeds=12, n_test=400,
                     b_fluct=-0.25, b_gap=-0.5, noise=0.05, seed=0):
    """f = g(x) + c_a N^(b_fluct / 1) z_s(x) and eps(f_s) = eps(<f>) + d_a N^b_gap (1 + noise), N = h^2 + 10 h.

    The two smallest widths are jammed (N_Delta > 0 for every seed, values off the law), the third has one
    jammed seed; the fourth lies within a factor 2 in N of the third (near jamming)."""
    rng = np.random.default_rng(seed)
    h = np.asarray(widths)
    n = h ** 2 + 10 * h
    y = np.where(rng.random(n_test) < 0.5, 1.0, -1.0)
    g = y * (0.3 + rng.random(n_test))
    shape = (len(h), len(alphas), 1, seeds)
    c = np.array([1.0, 2.0])[: len(alphas)]
    z = rng.standard_normal(shape + (n_test,))
    f = g + (c[None, :, None, None, None] * n[:, None, None, None, None] ** b_fluct) * z
    n_delta = np.zeros(shape)
    n_delta[:2] = 5
    n_delta[2, :, :, 0] = 1
    f[:2] *= 10  # the jammed points are far off the law: a fit that kept them would be wrong
    eps_ens = ensemble_error(f, y)
    gap = np.array([0.3, 0.5])[: len(alphas)][None, :, None] * n[:, None, None] ** b_gap
    test_error = eps_ens[..., None] + gap[..., None] * (1 + noise * rng.standard_normal(shape))
    return xr.Dataset(
        {"f_test": (GRID + ("test",), f), "y_test": (("P", "test"), y[None]), "test_error": (GRID, test_error),
         "n_delta": (GRID, n_delta), "n_params": (("h",), n.astype(float)),
         "f_norm": (GRID, np.sqrt((f ** 2).mean(-1))),
         "status": (GRID, np.where(n_delta > 0, "budget", "converged").astype(object))},
        coords={"h": h, "alpha_tilde": list(alphas), "P": [1000], "seed": np.arange(seeds)},
        attrs={"spec_toml": "[grid]\nh = [4]\n", "git_commit": "synthetic"})


def learning_curve_cube(Ps=(100, 200, 400, 800, 1600, 3200), betas=(0.4, 0.25), seeds=6, noise=0.05, seed=1):
    """eps(P) = A P^(-beta_a) (1 + noise) per seed, for two alpha_tilde; h = 100."""
    rng = np.random.default_rng(seed)
    P = np.asarray(Ps, dtype=float)
    beta = np.asarray(betas)
    eps = 2.0 * P[None, None, :, None] ** -beta[None, :, None, None] * (
        1 + noise * rng.standard_normal((1, len(beta), len(P), seeds)))
    return xr.Dataset({"test_error": (GRID, eps), "status": (GRID, np.full(eps.shape, "converged", dtype=object))},
                      coords={"h": [100], "alpha_tilde": [0.01, 1000.0], "P": list(Ps), "seed": np.arange(seeds)})
