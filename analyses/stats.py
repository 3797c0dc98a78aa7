"""Statistics the analyses share: power-law fits with confidence intervals, and bootstrap resampling over seeds."""

from __future__ import annotations

import math

import numpy as np


def power_law_fit(x, y, level: float = 0.95) -> dict[str, float]:
    """Fit y = A x^b by least squares on (log x, log y) over the points where both are finite and > 0.

    Returns the exponent b with its ``level`` confidence interval (Student t on the slope's standard error,
    n - 2 degrees of freedom), the prefactor A and the number of points n; NaN where n < 3."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    n = int(ok.sum())
    out = {"exponent": math.nan, "low": math.nan, "high": math.nan, "prefactor": math.nan, "n": n}
    if n < 3 or len(np.unique(x[ok])) < 2:
        return out
    import scipy.stats  # imported here: it costs a second, and every command loads this module

    fit = scipy.stats.linregress(np.log(x[ok]), np.log(y[ok]))
    half = scipy.stats.t.ppf((1 + level) / 2, n - 2) * fit.stderr
    out.update(exponent=float(fit.slope), low=float(fit.slope - half), high=float(fit.slope + half),
               prefactor=float(np.exp(fit.intercept)))
    return out


def power_law_fit2(x1, x2, y, level: float = 0.95) -> dict[str, float]:
    """Fit y = A x1^b1 x2^b2 by least squares on the logs over the points where all are finite and > 0: the two
    exponents with their ``level`` intervals (Student t, n - 3 degrees of freedom) and n; NaN where the points do
    not fix both (n < 4, or log x1 and log x2 collinear)."""
    x1, x2, y = (np.asarray(v, dtype=float).ravel() for v in (x1, x2, y))
    ok = np.isfinite(x1) & np.isfinite(x2) & np.isfinite(y) & (x1 > 0) & (x2 > 0) & (y > 0)
    n = int(ok.sum())
    out = {k: math.nan for k in ("b1", "b1_low", "b1_high", "b2", "b2_low", "b2_high")} | {"n": n}
    if n < 4:
        return out
    A = np.column_stack([np.ones(n), np.log(x1[ok]), np.log(x2[ok])])
    if np.linalg.matrix_rank(A) < 3:
        return out
    import scipy.stats

    coef, *_ = np.linalg.lstsq(A, np.log(y[ok]), rcond=None)
    resid = np.log(y[ok]) - A @ coef
    cov = resid @ resid / (n - 3) * np.linalg.inv(A.T @ A)
    t = scipy.stats.t.ppf((1 + level) / 2, n - 3)
    for k, i in (("b1", 1), ("b2", 2)):
        half = t * math.sqrt(cov[i, i])
        out.update({k: float(coef[i]), f"{k}_low": float(coef[i] - half), f"{k}_high": float(coef[i] + half)})
    return out


def power_law_fits(x, y, along: str, level: float = 0.95):
    """:func:`power_law_fit` of the DataArray ``y`` against ``x`` (broadcast to it) along the dim ``along``, at every
    point of y's other dims. Returns ({exponent, low, high, prefactor, n}: DataArrays over those dims, and the
    curves [(x, y), ...] that were fitted, for :func:`common_slope_fit`)."""
    import xarray as xr

    x = x.broadcast_like(y).transpose(*y.dims)
    rest = [d for d in y.dims if d != along]
    fits = {k: np.full([y.sizes[d] for d in rest], np.nan) for k in ("exponent", "low", "high", "prefactor", "n")}
    curves = []
    for idx in np.ndindex(*fits["n"].shape):
        sel = dict(zip(rest, idx))
        xs, ys = x.isel(sel).values, y.isel(sel).values
        for k, v in power_law_fit(xs, ys, level).items():
            fits[k][idx] = v
        curves.append((xs, ys))
    coords = {d: y[d] for d in rest if d in y.coords}
    return {k: xr.DataArray(v, dims=rest, coords=coords) for k, v in fits.items()}, curves


def common_slope_fit(groups: list[tuple[np.ndarray, np.ndarray]], level: float = 0.95) -> dict[str, float]:
    """One exponent b for several curves y_g = A_g x^b (each its own prefactor), by least squares on
    (log x, log y) with one intercept per curve; the interval is Student t with n - 1 - (number of curves)
    degrees of freedom. Curves with fewer than 2 usable points are left out (their prefactor A_g is NaN)."""
    groups = list(groups)
    xs, ys, ids, kept = [], [], [], []
    for g, (x, y) in enumerate(groups):
        x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
        if ok.sum() >= 2 and len(np.unique(x[ok])) >= 2:
            xs.append(np.log(x[ok]))
            ys.append(np.log(y[ok]))
            ids.append(np.full(ok.sum(), len(ids)))
            kept.append(g)
    n = int(sum(len(v) for v in xs))
    out = {"exponent": math.nan, "low": math.nan, "high": math.nan, "n": n, "curves": len(xs),
           "prefactors": [math.nan] * len(groups)}
    dof = n - 1 - len(xs)
    if not xs or dof < 1:
        return out
    lx, ly, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(ids)
    design = np.column_stack([lx, (g[:, None] == np.arange(len(xs))[None, :]).astype(float)])
    coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
    resid = ly - design @ coef
    cov = np.linalg.inv(design.T @ design) * float(resid @ resid) / dof
    import scipy.stats

    half = scipy.stats.t.ppf((1 + level) / 2, dof) * math.sqrt(cov[0, 0])
    out.update(exponent=float(coef[0]), low=float(coef[0] - half), high=float(coef[0] + half))
    out["prefactors"] = [math.nan] * len(groups)
    for k, g in enumerate(kept):
        out["prefactors"][g] = float(np.exp(coef[1 + k]))
    return out


def bootstrap_weights(m: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, m) weights of ``n_boot`` resamples with replacement of m members; each row sums to 1."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot) / m


def interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap samples (NaN when there are none)."""
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
