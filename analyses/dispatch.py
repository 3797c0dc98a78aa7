"""Running an analysis by name: find it among the registered ones, check that the cube suits it, and present its
result as text, JSON, netCDF or a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from dlphase.errors import DlphaseError


def canonical(name: str) -> str:
    """Analysis names use underscores; the command line also takes hyphens (double-descent)."""
    return name.replace("-", "_")


def get_analysis(name: str, manager=None, **options):
    """The registered analysis ``name`` built with ``options`` (checked like a spec: unknown keys and bad values
    are errors that name them)."""
    from dlphase.specs import build_component

    options = {k: v for k, v in options.items() if v is not None and v != ()}  # () : a repeatable option not given
    return build_component("analysis", {"name": canonical(name), **options}, "analysis", manager)


def analyze(cube: xr.Dataset, name: str, manager=None, **options):
    """(analysis, result) of analysis ``name`` on ``cube``; an error saying why when the cube does not suit it."""
    analysis = get_analysis(name, manager, **options)
    reason = analysis.applies(cube)
    if reason is not None:
        raise DlphaseError(f"analysis {analysis.name!r} does not apply to this cube: {reason}")
    return analysis, analysis.compute(cube)


def table_groups(result: xr.Dataset, numeric: bool = False) -> list[tuple[tuple[str, ...], list[str]]]:
    """The result's small variables (not over test points, at most 5000 values; with ``numeric`` only numbers and
    booleans) grouped by their dims, scalars first: one table per group."""
    by_dims: dict[tuple, list[str]] = {}
    for name, var in result.data_vars.items():
        if "test" in var.dims or var.size > 5000 or (numeric and var.dtype.kind not in "fiub"):
            continue
        by_dims.setdefault(var.dims, []).append(name)
    return sorted(by_dims.items(), key=lambda kv: len(kv[0]))


def _tables(result: xr.Dataset, max_rows: int = 60) -> list[str]:
    """The result's small variables as text tables, one per set of dims, each cut to ``max_rows`` rows (``--json``
    and ``-o`` give every value)."""
    import pandas as pd

    out = []
    with pd.option_context("display.max_rows", max_rows, "display.width", 160, "display.max_columns", 12,
                           "display.float_format", lambda v: f"{v:.4g}"):
        for dims, names in table_groups(result):
            if not dims:
                out.append("\n".join(f"{n} = {_scalar(result[n])}" for n in names))
            else:
                out.append(result[names].to_dataframe()[names].to_string(max_rows=max_rows))
    return out


def _scalar(da: xr.DataArray):
    value = da.values.item()
    return f"{value:.4g}" if isinstance(value, float) else value


def text(analysis, result: xr.Dataset) -> str:
    """What ``dlphase analyze`` prints: the summary lines, then the tables."""
    lines = [f"# {analysis.name}"] + list(analysis.summary(result))
    return "\n".join(lines) + "\n\n" + "\n\n".join(_tables(result)) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def to_json(analysis, result: xr.Dataset) -> str:
    """The result as JSON: the summary, the attributes, and every variable with its dims (NaN as null)."""
    d = result.to_dict(data="list")
    return json.dumps(_plain({"analysis": analysis.name, "summary": list(analysis.summary(result)),
                              "attrs": d["attrs"], "coords": d["coords"], "variables": d["data_vars"]}), indent=1)


def save_plot(analysis, result: xr.Dataset, path: str | Path, title: str | None = None) -> None:
    """Write the analysis's plot as self-contained HTML (bokeh) or PNG (matplotlib), by suffix."""
    from .html import save_figure
    from .phase_diagram import _load_backend

    path = Path(path)
    backend = "matplotlib" if path.suffix.lower() == ".png" else "bokeh"
    _load_backend(backend)
    save_figure(analysis.plot(result, backend=backend), path, title or f"dlphase {analysis.name}")
