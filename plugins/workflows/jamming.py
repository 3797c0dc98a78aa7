"""The jamming line h*(alpha_tilde): the largest width at which every seed ends jammed (N_Delta > 0), found as in
the paper by a scan over widths and then bisection. The line lies between h* and the next
width tried; where it sits depends on the training budget, which is stored with it.

Each (alpha_tilde, P) of the grid is searched on its own, but the searches advance in rounds so that the runs of
one round that share a width train as one ensemble. Every run is saved as it ends (``LINE.runs/``), and the
search is deterministic, so running the command again replays the finished rounds from disk and resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
from pathlib import Path
from typing import Mapping

import attrs
import numpy as np
import xarray as xr

from dlphase.cube import combine
from dlphase.files import open_cube
from dlphase.errors import DlphaseError, SpecError
from dlphase.grid_point import groups
from dlphase.specs import GRID_DIMS, Grid, Spec
from dlphase.sweep import placement, progress_bar, prepare_runs, run_batches, run_path, saved_run, write_cube

#: how the seeds at one width ended
JAMMED, CONVERGED, MIXED, FAILED = "jammed", "converged", "mixed", "failed"
#: the most rounds a search may take (a factor-2 scan from 1 to 2^20 and two bisections take about 60)
MAX_ROUNDS = 200
#: the budget fields of a dynamics, stored with the line (it moves with them)
BUDGET_FIELDS = ("max_steps", "max_time", "max_seconds", "epochs")


def classify(n_delta: list[float], statuses: list[str]) -> str:
    """jammed when every seed ends with N_Delta > 0, converged when every seed ends with N_Delta = 0, else mixed;
    failed when a run failed."""
    if any(s == "failed" for s in statuses) or any(not np.isfinite(n) for n in n_delta):
        return FAILED
    if all(n > 0 for n in n_delta):
        return JAMMED
    if all(n == 0 for n in n_delta):
        return CONVERGED
    return MIXED


def _close(lo: int, hi: int, resolution: float) -> bool:
    return hi - lo <= max(1, math.floor(resolution * lo))


def next_widths(found: Mapping[int, str], h_max: int, resolution: float = 0.0) -> list[int]:
    """The widths to train next, given how each width tried so far ended; [] when the search is over.

    Below the largest width where every seed jammed (h*) the search halves h down to 1; above it, it doubles h
    up to ``h_max`` until every seed converges. Then it bisects both edges: between h* and the next width
    tried, and between the last width where a seed jammed and the first where every seed converged, until
    the gaps are at most max(1, resolution * h)."""
    hs = sorted(found)
    if not hs or any(found[h] == FAILED for h in hs):
        return []
    jammed = [h for h in hs if found[h] == JAMMED]
    if not jammed:
        return [] if hs[0] == 1 else [max(1, hs[0] // 2)]
    lo = max(jammed)
    above = [h for h in hs if h > lo]
    if not above:
        return [] if lo >= h_max else [min(h_max, 2 * lo)]
    want = []
    if not _close(lo, above[0], resolution):
        want.append((lo + above[0]) // 2)
    converged = [h for h in above if found[h] == CONVERGED]
    if not converged:
        if hs[-1] < h_max:
            want.append(min(h_max, 2 * hs[-1]))
    else:
        hi = converged[0]
        below = max(h for h in hs if h < hi)
        if not _close(below, hi, resolution):
            want.append((below + hi) // 2)
    return sorted(set(want))


@attrs.frozen(kw_only=True)
class LineResult:
    """One (alpha_tilde, P) of the line: h* (last width where every seed jammed), the next width tried, the
    first width where every seed converged, and why the search ended."""

    h_star: float
    h_next: float
    h_unjammed: float
    outcome: str


def line_point(found: Mapping[int, str], h_max: int) -> LineResult:
    """Read h*, the next width and the first all-converged width off a finished search."""
    hs = sorted(found)
    bad = [h for h in hs if found[h] == FAILED]
    if bad:
        return LineResult(h_star=math.nan, h_next=math.nan, h_unjammed=math.nan,
                          outcome=f"a run failed at h = {bad[0]} (see its message in the scan)")
    jammed = [h for h in hs if found[h] == JAMMED]
    if not jammed:
        return LineResult(h_star=math.nan, h_next=float(hs[0]), h_unjammed=math.nan,
                          outcome="no width jammed: not every seed jams even at h = 1")
    lo = max(jammed)
    above = [h for h in hs if h > lo]
    converged = [h for h in above if found[h] == CONVERGED]
    if not above:
        return LineResult(h_star=float(lo), h_next=math.nan, h_unjammed=math.nan,
                          outcome=f"every seed jams up to h_max = {h_max}; raise --h-max or the training budget")
    outcome = "found" if converged else f"no width up to h_max = {h_max} has every seed converged"
    return LineResult(h_star=float(lo), h_next=float(above[0]),
                      h_unjammed=float(converged[0]) if converged else math.nan, outcome=outcome)


def with_spectrum(spec: Spec) -> Spec:
    """The spec with the hessian_spectrum observable added (its defaults: U, dense up to max_dense) if missing."""
    if any(o.name == "hessian_spectrum" for o in spec.observables):
        return spec
    raw = spec.to_dict()
    raw["observables"]["names"] = [*raw["observables"]["names"], "hessian_spectrum"]
    return Spec.from_dict(raw)


def budget_of(dynamics) -> dict:
    """The dynamics' budget parameters (those of BUDGET_FIELDS it has) and their values."""
    fields = attrs.fields_dict(type(dynamics))
    return {k: getattr(dynamics, k) for k in BUDGET_FIELDS if k in fields}


def check_spec(spec: Spec) -> None:
    """The line needs N_Delta (the errors observable), and a budget chosen on purpose: the line moves with it, and
    a jammed run under the default budget trains for hours."""
    if not any(o.name == "errors" for o in spec.observables):
        raise SpecError("dlphase jamming needs N_Delta: add 'errors' to observables.names")
    fields = attrs.fields_dict(type(spec.dynamics))
    budget = budget_of(spec.dynamics)
    if budget and all(v == fields[k].default for k, v in budget.items()):
        raise SpecError(f"dlphase jamming needs a training budget chosen for it (the line moves with it): set one of "
                        f"dynamics.{', dynamics.'.join(budget)} in the spec")


def find_jamming_line(spec: Spec, out: str | os.PathLike, *, h_max: int | None = None, resolution: float = 0.0,
                      spectrum: bool = True, workers: int = 1, executor: cf.Executor | None = None, client=None,
                      progress: bool = True, shared_fs: bool | None = None) -> xr.Dataset:
    """Search h* at each (alpha_tilde, P) of ``spec.grid`` starting from its widths, write the line (with every
    run of the search as a cube over the widths tried) to ``out``, and return it.

    ``h_max`` bounds the widths (default 8 times the largest of the grid); ``resolution`` is the relative gap
    at which bisection stops (0: down to consecutive integers); with ``spectrum`` the hessian_spectrum
    observable is added, so that the spectrum at h* is stored. The runs execute as :func:`dlphase.sweep`'s do:
    here, in a pool of ``workers``, on ``executor`` or on a dask ``client``'s cluster, whose workers write their
    runs themselves with ``shared_fs`` (default: the spec's ``cluster.shared_fs``)."""
    if resolution < 0 or not math.isfinite(resolution):
        raise DlphaseError(f"resolution = {resolution} must be >= 0 (0 bisects down to consecutive widths)")
    check_spec(spec)
    if spectrum:
        spec = with_spectrum(spec)
    h_max = h_max or 8 * max(spec.grid.h)
    if h_max < max(spec.grid.h):
        raise DlphaseError(f"h_max = {h_max} is below the grid's largest width {max(spec.grid.h)}; raise --h-max")
    executor, shared_fs = placement(spec, executor, client, shared_fs)
    out, runs_dir, lock = prepare_runs(spec, out, workers, "line")

    keys = [(a, P) for a in spec.grid.alpha_tilde for P in spec.grid.P]
    seeds = list(spec.grid.seed)
    found: dict[tuple, dict[int, str]] = {k: {} for k in keys}
    records: dict[tuple, xr.Dataset] = {}
    wanted = {k: sorted(set(spec.grid.h)) for k in keys}
    bar = progress_bar(total=None, initial=0, enabled=progress, desc="jamming")
    try:
        for _ in range(MAX_ROUNDS):
            points = [dict(zip(GRID_DIMS, (h, a, P, s))) for (a, P), hs in wanted.items() for h in hs for s in seeds]
            _train(spec, points, runs_dir, records, workers, executor, bar, shared_fs)
            for (a, P), hs in wanted.items():
                for h in hs:
                    runs = [records[(h, a, P, s)] for s in seeds]
                    found[(a, P)][h] = classify([float(r["n_delta"]) if "n_delta" in r else math.nan for r in runs],
                                                [r["status"].item() for r in runs])
            wanted = {k: w for k in keys if (w := next_widths(found[k], h_max, resolution))}
            if not wanted:
                break
        else:
            raise DlphaseError(f"the search did not end in {MAX_ROUNDS} rounds; every run is saved in {runs_dir}")
        line = line_dataset(spec, records, found, h_max, resolution)
        write_cube(line, out, runs_dir)
    finally:
        bar.close()
        lock.release()
    return line


def _train(spec: Spec, points: list[dict], runs_dir: Path, records: dict, workers: int, executor, bar,
           shared_fs: bool) -> None:
    """Load the points already saved, train the rest (batched by width), and put every record in ``records``."""
    for p in points:
        key = tuple(p[k] for k in GRID_DIMS)
        if key not in records and (ds := saved_run(runs_dir, spec, p)) is not None:
            records[key] = ds
    # batches are formed from the round's points, never from what is left, so that a resumed search trains
    # exactly the batches an uninterrupted one does (a batch with any unsaved run is trained whole)
    batches = [b for b in groups(spec, points) if any(tuple(p[k] for k in GRID_DIMS) not in records for p in b)]
    if batches:
        bar.total = (bar.total or 0) + sum(map(len, batches))
        batches.sort(key=lambda b: -b[0]["h"])
        run_batches(spec, batches, runs_dir, workers=workers, executor=executor, bar=bar, keep=set(records),
                    shared_fs=shared_fs)
    for p in points:
        key = tuple(p[k] for k in GRID_DIMS)
        if key not in records:
            records[key] = open_cube(run_path(runs_dir, spec, p))


def _is_spectrum(name: str) -> bool:
    return name.startswith("hess_")


def line_dataset(spec: Spec, records: Mapping[tuple, xr.Dataset], found: Mapping[tuple, Mapping[int, str]],
                 h_max: int, resolution: float) -> xr.Dataset:
    """The line over (alpha_tilde, P), N_Delta / N at h* and at the next width (over seed), the spectrum at h*,
    and every run of the search as a cube over the widths tried (NaN, status "", where a width was not tried
    at that alpha_tilde)."""
    widths = sorted({k[0] for k in records})
    scan_spec = attrs.evolve(spec, grid=Grid(h=tuple(widths), alpha_tilde=spec.grid.alpha_tilde, P=spec.grid.P,
                                             seed=spec.grid.seed))
    scan = combine((r[[v for v in r.data_vars if not _is_spectrum(v)]] for r in records.values()), scan_spec)
    alphas, Ps, seeds = spec.grid.alpha_tilde, spec.grid.P, spec.grid.seed
    shape = (len(alphas), len(Ps))
    results = {(a, P): line_point(found[(a, P)], h_max) for a in alphas for P in Ps}

    def grid2(field):
        return np.array([[getattr(results[(a, P)], field) for P in Ps] for a in alphas], dtype=float)

    dims2, dims3 = ("alpha_tilde", "P"), ("alpha_tilde", "P", "seed")
    line = xr.Dataset({
        "h_star": (dims2, grid2("h_star"), {"long_name": "h*: largest width where every seed ends jammed "
                                                         "(N_Delta > 0); the line lies in (h*, h_next]"}),
        "h_next": (dims2, grid2("h_next"), {"long_name": "the next width tried above h* (not every seed jammed)"}),
        "h_unjammed": (dims2, grid2("h_unjammed"), {"long_name": "smallest width above h* where every seed "
                                                                 "converges (N_Delta = 0)"}),
        "jamming_outcome": (dims2, np.array([[results[(a, P)].outcome for P in Ps] for a in alphas], dtype=object),
                            {"long_name": "how the search ended: found, or why not"}),
    })
    for tag, field in (("star", "h_star"), ("next", "h_next")):
        n_params = np.full(shape, np.nan)
        ratio = np.full(shape + (len(seeds),), np.nan)
        for i, a in enumerate(alphas):
            for j, P in enumerate(Ps):
                h = getattr(results[(a, P)], field)
                if not math.isfinite(h):
                    continue
                for k, s in enumerate(seeds):
                    r = records[(int(h), a, P, s)]
                    n_params[i, j] = float(r["n_params"])
                    ratio[i, j, k] = float(r["n_delta"]) / float(r["n_params"])
        line[f"n_params_{tag}"] = (dims2, n_params, {"long_name": f"N at {field}"})
        line[f"n_delta_over_n_{tag}"] = (dims3, ratio, {"long_name": f"N_Delta / N at {field}"})
    star = [r for (h, a, P, s), r in records.items() if math.isfinite(results[(a, P)].h_star)
            and h == int(results[(a, P)].h_star)]
    names = [v for v in (star[0].data_vars if star else ()) if _is_spectrum(v)]
    if names:
        # the spectrum at h*: each run's Hessian variables stacked over (alpha_tilde, P, seed), padded with NaN
        one = attrs.evolve(spec, grid=Grid(h=(1,), alpha_tilde=alphas, P=Ps, seed=seeds))
        spectra = combine((r[names].assign_coords(h=1) for r in star), one).isel(h=0, drop=True)
        line = line.merge(spectra[names])
    line = xr.merge([scan, line], combine_attrs="override")
    line = line.assign_coords(seed=list(seeds))
    line.attrs.update({"title": "dlphase jamming line", "h_max": h_max, "resolution": resolution,
                       **{f"budget_{k}": float(v) for k, v in budget_of(spec.dynamics).items()}})
    return line
