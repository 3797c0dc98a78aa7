"""The eigenvalue histogram of a run's Hessian on log axes (the paper's Fig. 8C): at jamming the spectrum of H0
has a delta peak at zero (numerically about 1e-16 of the largest eigenvalue), a gap, then a continuum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dlphase.errors import DlphaseError

from .html import save_figure
from .phase_diagram import _load_backend

MATRICES = ("h0", "h", "hp")


def select_run(cube: xr.Dataset, variable: str, **point) -> xr.Dataset:
    """The one run of the cube at ``point`` (h, alpha_tilde, P, seed; unnamed dims must have one value). In a
    jamming line the spectra are those at h* and have no h dim."""
    if variable not in cube:
        raise DlphaseError(f"the cube has no {variable}; sweep with the hessian_spectrum observable (dense spectra "
                           f"need N <= max_dense)")
    sel = {}
    for dim in [d for d in ("h", "alpha_tilde", "P", "seed") if d in cube[variable].dims]:
        values = cube[dim].values
        if point.get(dim) is not None:
            if point[dim] not in values:
                raise DlphaseError(f"{dim} = {point[dim]} is not in the cube; it holds {dim} = "
                                   f"{', '.join(map(str, values))}")
            sel[dim] = point[dim]
        elif len(values) == 1:
            sel[dim] = values[0]
        else:
            raise DlphaseError(f"the cube holds {len(values)} values of {dim} ({', '.join(map(str, values))}); "
                               f"pick one with --{dim.replace('_', '-')}")
    return cube.sel(sel)


def log_spectrum(eigenvalues, floor: float = 1e-18) -> tuple[np.ndarray, int]:
    """log10 |lambda| of the finite eigenvalues, each at least floor times the largest, and how many are negative."""
    eig = np.asarray(eigenvalues, dtype=np.float64)
    eig = eig[np.isfinite(eig)]
    if len(eig) == 0:
        raise DlphaseError("this run has no eigenvalues (it failed, or its N is above max_dense)")
    top = np.abs(eig).max()
    if top == 0:
        raise DlphaseError("every eigenvalue is 0 (with N_Delta = 0 the energy U and its Hessian vanish); plot a "
                           "jammed run, one with N_Delta > 0")
    return np.log10(np.maximum(np.abs(eig), floor * top)), int((eig < 0).sum())


def hessian_spectrum_plot(cube: xr.Dataset, matrix: str = "h0", backend: str = "bokeh", bins: int = 80, **point):
    """A histogram of log10 |eigenvalue| of H0 (or H, Hp) for one run of the cube."""
    import holoviews as hv

    if matrix not in MATRICES:
        raise DlphaseError(f"matrix must be one of {', '.join(MATRICES)}, not {matrix!r}")
    run = select_run(cube, f"hess_eig_{matrix}", **point)
    logs, negative = log_spectrum(run[f"hess_eig_{matrix}"].values)
    counts, edges = np.histogram(logs, bins=bins)
    name = {"h0": "H0", "h": "H", "hp": "Hp"}[matrix]
    h = int(run["h_star"]) if "h" in run.dims and "h_star" in run else run["h"].item()
    title = (f"{name} spectrum: h = {h}, alpha_tilde = {run['alpha_tilde'].item():g}, "
             f"P = {run['P'].item()}, seed = {run['seed'].item()}")
    if "hess_n_delta" in run and run["hess_n_delta"].ndim == 0:
        title += f", N_Delta = {int(run['hess_n_delta'])}"
    if negative:
        title += f" ({negative} negative: |lambda| shown)"
    hist = hv.Histogram((edges, counts), kdims=[hv.Dimension("log10_abs_eig", label="log10 |eigenvalue|")],
                        vdims=[hv.Dimension("count", label="number of eigenvalues")])
    opts = dict(title=title, logy=True, ylim=(0.5, None))
    if backend == "bokeh":
        return hist.opts(width=700, height=400, tools=["hover"], **opts)
    return hist.opts(fig_inches=(8, 4), **opts)


def save_hessian_spectrum(cube: xr.Dataset, path: str | Path, matrix: str = "h0", **point) -> None:
    """Write the histogram as self-contained HTML (bokeh) or PNG (matplotlib), by suffix."""
    path = Path(path)
    backend = "matplotlib" if path.suffix.lower() == ".png" else "bokeh"
    if matrix not in MATRICES:
        raise DlphaseError(f"matrix must be one of {', '.join(MATRICES)}, not {matrix!r}")
    log_spectrum(select_run(cube, f"hess_eig_{matrix}", **point)[f"hess_eig_{matrix}"].values)  # errors first
    _load_backend(backend)
    plot = hessian_spectrum_plot(cube, matrix, backend=backend, **point)
    save_figure(plot, path, "dlphase Hessian spectrum")
