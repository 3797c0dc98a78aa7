"""The result cube: every run of a sweep on the dims (h, alpha_tilde, P, seed) plus each observable's own.

Coordinates carry long_name and units; the spec (as TOML), the software versions and the git commit
are attributes. Numeric variables are float64 with NaN where a run has no value (a failed run);
strings are "" there and booleans False. A variable whose attribute ``over`` names a subset of the grid
dims (``y_test`` depends on P only) is stored on those dims alone.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import xarray as xr

from .specs import GRID_DIMS, Spec

COORD_ATTRS = {
    "h": {"long_name": "width h (hidden units or channels per layer)", "units": "1"},
    "alpha_tilde": {"long_name": "rescaled output scale alpha_tilde (alpha = alpha_tilde / sqrt(h) for 1 / sqrt(h) "
                                 "read-outs)", "units": "1"},
    "P": {"long_name": "number of training points P", "units": "1"},
    "seed": {"long_name": "initialisation seed", "units": "1"},
}


def provenance() -> dict[str, str]:
    """Software versions and the git commit of dlphase's source, for the cube's attributes."""
    import importlib.metadata

    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "xarray": xr.__version__}
    try:
        versions["dlphase"] = importlib.metadata.version("dlphase")
    except importlib.metadata.PackageNotFoundError:
        versions["dlphase"] = "unknown"
    out = {f"version_{k}": v for k, v in versions.items()}
    out["git_commit"] = git_commit()
    out["platform"] = platform.platform()
    return out


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "-C", str(here), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        commit = proc.stdout.strip() if proc.returncode == 0 else ""
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def _fill_for(values: list[np.ndarray]) -> tuple[np.dtype, Any]:
    kinds = {v.dtype.kind for v in values}
    if kinds <= {"U", "S", "O"}:
        return np.dtype(object), ""
    if kinds == {"b"}:
        return np.dtype(bool), False
    return np.dtype(np.float64), np.nan


def _pad(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.full(shape, np.nan)
    out[tuple(slice(0, n) for n in v.shape)] = v
    return out


def combine(runs: Iterable[xr.Dataset], spec: Spec) -> xr.Dataset:
    """Stack per-run Datasets into the cube over the spec's grid (in the spec's order). A float variable whose
    own dims have no coordinate and whose length differs between runs (one eigenvalue per parameter, say) is
    padded with NaN to the longest."""
    grid = {k: list(getattr(spec.grid, k)) for k in GRID_DIMS}
    index = {k: {v: i for i, v in enumerate(vals)} for k, vals in grid.items()}
    shape = tuple(len(grid[k]) for k in GRID_DIMS)
    collected: dict[str, list[tuple[tuple[int, ...], np.ndarray]]] = {}
    meta: dict[str, tuple[tuple[str, ...], dict]] = {}
    run_ids = np.full(shape, "", dtype=object)
    data_attrs: dict[str, str] = {}
    own_coords: dict[str, xr.Variable] = {}
    for ds in runs:
        for name, c in ds.coords.items():
            if name not in GRID_DIMS:
                own_coords.setdefault(name, c.variable)
        pos = tuple(index[k][ds[k].item()] for k in GRID_DIMS)
        run_ids[pos] = ds.attrs.get("run_id", "")
        data_attrs.update({k: v for k, v in ds.attrs.items() if k.startswith("data_")})
        for name, var in ds.data_vars.items():
            if name in meta and meta[name][0] != var.dims:
                raise ValueError(f"variable {name!r} has dims {var.dims} in one run and {meta[name][0]} in another")
            meta.setdefault(name, (var.dims, dict(var.attrs)))
            collected.setdefault(name, []).append((pos, var.values))
    variables = {"run_id": xr.Variable(GRID_DIMS, run_ids, {"long_name": "stable id of the run (hash of its spec)"})}
    for name, items in collected.items():
        own_dims, attrs = meta[name]
        sizes = {v.shape for _, v in items}
        dtype, fill = _fill_for([v for _, v in items])
        if len(sizes) != 1:
            # a dim whose length follows the run (N eigenvalues of a Hessian): pad with the fill value
            fixed = [d for d in own_dims if d in own_coords]
            if len({len(s) for s in sizes}) != 1 or fixed or dtype.kind != "f":
                raise ValueError(f"variable {name!r} has different shapes across runs: {sorted(sizes)}")
            own_shape = tuple(max(s[k] for s in sizes) for k in range(len(own_dims)))
            items = [(pos, _pad(v, own_shape)) for pos, v in items]
        else:
            own_shape = sizes.pop()
        keep = tuple(attrs["over"].split()) if "over" in attrs else GRID_DIMS
        axes = [GRID_DIMS.index(d) for d in keep]
        full = np.full(tuple(shape[a] for a in axes) + own_shape, fill, dtype=dtype)
        filled = np.zeros(full.shape[:len(axes)], dtype=bool)
        for pos, v in items:
            key = tuple(pos[a] for a in axes)
            if filled[key] and not np.array_equal(full[key], v, equal_nan=dtype.kind == "f"):
                raise ValueError(f"variable {name!r} should depend only on {keep} but differs across runs")
            full[key], filled[key] = (v.item() if v.ndim == 0 else v), True
        variables[name] = xr.Variable(keep + own_dims, full, attrs)
    coords = {**own_coords, **{k: xr.Variable(k, np.asarray(grid[k]), COORD_ATTRS[k]) for k in GRID_DIMS}}
    cube = xr.Dataset(variables, coords=coords)
    cube.attrs.update({"title": "dlphase result cube", "spec_toml": spec.to_toml(),
                       "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       **provenance(), **data_attrs})
    return cube
