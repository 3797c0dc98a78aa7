"""One grid point: its data, its model f = alpha (f~ - f~0), its training, its xarray record."""

from __future__ import annotations

import functools
import traceback
from typing import Any, Mapping

import numpy as np
import torch
import xarray as xr

from . import data_cache
from .errors import DlphaseError, SpecError
from .interfaces import Data, RunState, TorchData, Variable, per_seed_training
from .model import AlphaModel, reference_time_factor
from .results import TrainResult
from .specs import GRID_DIMS, Spec, validation_points
from .monitor import Monitor

#: Variables every run records, whatever its observables.
RUN_VARIABLES = {
    "status": Variable(long_name="why the run stopped: converged, early_stopped, budget, diverged or failed"),
    "message": Variable(long_name="details of the stop (error message for failed runs)"),
    "steps": Variable(long_name="accepted steps"),
    "rejected": Variable(long_name="rejected trial steps"),
    "t": Variable(long_name="flow time reached", units="time"),
    "t_reference": Variable(long_name="flow time reached, in the reference code's units: t alpha_tilde / alpha^2",
                            units="time"),
    "wall_seconds": Variable(long_name="wall time of the run", units="s"),
}


@functools.lru_cache(maxsize=16)
def load_data(dataset, P: int, n_validation: int = 0) -> Data:
    """``dataset.load(P)`` (with ``n_validation`` validation points for early stopping), cached in memory
    per process and on disk across processes."""
    return data_cache.load(dataset, P, n_validation)


class Run:
    """One point (h, alpha_tilde, P, seed) of a spec's grid.

    ``run.data`` and ``run.tensors`` hold its data, ``run.model`` the predictor as a torch module,
    ``run.train()`` trains it and returns the point's xarray Dataset.
    """

    def __init__(self, spec: Spec, **point: Any):
        if not point:
            if len(spec.grid.points()) != 1:
                raise SpecError("this spec's grid has several points; name one, e.g. "
                                "Run(spec, h=100, alpha_tilde=1e3, P=1000, seed=0)")
            point = spec.grid.points()[0]
        point = {"seed": 0, **point}
        if set(point) != set(GRID_DIMS):
            raise SpecError(f"a run point needs h, alpha_tilde, P (and seed, default 0); got {sorted(point)}")
        self.spec = spec.with_point(**point)  # validates the point like a grid
        self.point = {k: self.spec.grid.points()[0][k] for k in GRID_DIMS}
        self.dtype = getattr(torch, spec.run.dtype)
        self.device = torch.device(spec.run.device)
        self.id = spec.run_id(self.point)
        self.result: TrainResult | None = None
        times = [t for t in (obs.checkpoints() for obs in spec.observables) if t is not None]
        keep = any(obs.needs_snapshots() for obs in spec.observables)
        self.monitor = Monitor(times[0], keep_params=keep) if times else None

    @property
    def alpha(self) -> float:
        """alpha of f = alpha (f~ - f~0), as the architecture defines it from alpha_tilde and h."""
        return self.spec.architecture.alpha(self.point["alpha_tilde"], self.point["h"])

    @functools.cached_property
    def data(self) -> Data:
        dataset = self.spec.dataset.for_seed(self.point["seed"])
        return load_data(dataset, self.point["P"], validation_points(self.spec.dynamics))

    @functools.cached_property
    def tensors(self) -> TorchData:
        return self.data.tensors(self.dtype, self.device)

    @functools.cached_property
    def model(self) -> AlphaModel:
        """f = alpha (f~_theta - f~_theta0); weights drawn on the CPU in float64 from the seed, then moved."""
        generator = torch.Generator().manual_seed(int(self.point["seed"]))
        net = self.spec.architecture.build(self.point["h"], self.data.input_shape, generator)
        return AlphaModel(net, self.alpha).to(dtype=self.dtype, device=self.device)

    def train(self) -> xr.Dataset:
        """Train with the spec's dynamics and measure every observable; the point's Dataset."""
        if self.monitor is None:
            self.result = self.spec.dynamics.train(self.model, self.tensors)
        else:
            self.result = self.spec.dynamics.train(self.model, self.tensors, monitor=self.monitor)
        return self.record()

    def record(self) -> xr.Dataset:
        """The point's Dataset from the current model and ``self.result``."""
        state = RunState(model=self.model, data=self.data, tensors=self.tensors, result=self.result,
                         loss=self.spec.dynamics.loss, point=self.point, monitor=self.monitor, cache={})
        values: dict[str, Any] = {}
        schema: dict[str, Variable] = {}
        coords: dict[str, Any] = {}
        for obs in self.spec.observables:
            coords.update(obs.coords())
            measured = obs.measure(state)
            for key, value in measured.items():
                if key not in obs.variables:
                    raise RuntimeError(f"observable {obs.name!r} returned {key!r}, which it does not declare")
                if key in values:
                    raise RuntimeError(f"two observables produce the variable {key!r}")
                values[key] = value
                schema[key] = obs.variables[key]
        return point_dataset(self.point, self.id, self.result, values, schema, self.data.attrs, coords,
                             alpha=self.alpha)


def point_dataset(point: Mapping[str, Any], run_id: str, result: TrainResult,
                  values: Mapping[str, Any], schema: Mapping[str, Variable],
                  data_attrs: Mapping[str, Any] | None = None,
                  coords: Mapping[str, Any] | None = None, *, alpha: float) -> xr.Dataset:
    """Assemble one run's variables (no grid dims; grid values as scalar coordinates). ``alpha``: the run's
    alpha, for ``t_reference``."""
    run_values = {"status": result.status, "message": result.message, "steps": result.steps,
                  "rejected": result.rejected, "t": result.t,
                  "t_reference": result.t * reference_time_factor(point["alpha_tilde"], alpha),
                  "wall_seconds": result.wall_seconds}
    variables = {}
    for key, value in {**run_values, **values}.items():
        var = RUN_VARIABLES.get(key) or schema[key]
        arr = np.asarray(value)
        if arr.ndim != len(var.dims):
            raise RuntimeError(f"variable {key!r} has {arr.ndim} dims, its schema says {var.dims}")
        attrs = {"long_name": var.long_name, "units": var.units}
        if var.over is not None:
            attrs["over"] = " ".join(var.over)
        variables[key] = xr.Variable(var.dims, arr, attrs)
    ds = xr.Dataset(variables, coords={**{k: point[k] for k in GRID_DIMS}, **(coords or {})})
    ds.attrs["run_id"] = run_id
    for key, value in (data_attrs or {}).items():
        ds.attrs[f"data_{key}"] = str(value)
    return ds


def execute(spec: Spec, point: Mapping[str, Any]) -> xr.Dataset:
    """Train one point; never raises for the run's own failure: it is recorded as status ``failed``."""
    run = Run(spec, **point)
    try:
        return run.train()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        if isinstance(exc, DlphaseError):
            message = str(exc)
        else:
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            message = f"{type(exc).__name__}: {exc} (at {tb.filename}:{tb.lineno})"
        return failed_point(spec, run.point, message, run.result)


def failed_point(spec: Spec, point: Mapping[str, Any], message: str,
                 result: TrainResult | None = None) -> xr.Dataset:
    """The record of a run that raised: status ``failed`` and the message, no observables."""
    result = result or TrainResult(status="failed")
    result.status, result.message = "failed", message
    return point_dataset(point, spec.run_id(point), result, {}, {},
                         alpha=spec.architecture.alpha(point["alpha_tilde"], point["h"]))


def _members_per_batch(h: int, P: int) -> int:
    """How many points make one sweep group: the unit that trains as one ensemble and is saved together (so an
    interrupted sweep loses at most one group). At most 64 points, and fewer for large h P (2^31 / (128 h P),
    a bound from before the engines split a group into passes; each pass's size now comes from
    ``ensemble.members_per_pass``)."""
    return int(min(64, max(1, 2 ** 31 // (16 * 8 * max(h, 1) * max(P, 1)))))


def groups(spec: Spec, points: list[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Batches of points that can train as one ensemble: same h and P (every seed and alpha_tilde; the same seed
    too where seeds train on sets of their own), of at most ``run.batch_size`` points."""
    if not spec.run.ensemble or not spec.dynamics.batched:
        return [[p] for p in points]
    own_sets = per_seed_training(spec.dataset)
    by_key: dict[tuple, list] = {}
    for p in points:
        by_key.setdefault((p["h"], p["P"], p["seed"] if own_sets else None), []).append(p)
    out = []
    for (h, P, _), members in by_key.items():
        size = min(_members_per_batch(h, P), spec.run.batch_size or 64)
        out.extend(members[i:i + size] for i in range(0, len(members), size))
    return out


def execute_group(spec: Spec, points: list[Mapping[str, Any]]) -> list[xr.Dataset]:
    """Train a batch of points as one ensemble; each is recorded as if it had run alone.

    If the batched path fails (an architecture torch.func cannot vmap, say), the points run one by one.
    """
    if len(points) == 1:
        return [execute(spec, points[0])]
    runs = [Run(spec, **p) for p in points]
    try:
        tensors = runs[0].tensors
        if runs[0].monitor is None:
            results = spec.dynamics.train_ensemble([r.model for r in runs], tensors)
        else:
            results = spec.dynamics.train_ensemble([r.model for r in runs], tensors, [r.monitor for r in runs])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        import warnings

        warnings.warn(f"ensemble training failed ({type(exc).__name__}: {exc}); running the points one by one")
        return [execute(spec, p) for p in points]
    records = []
    for run, result in zip(runs, results):
        run.result = result
        try:
            records.append(run.record())
        except Exception as exc:
            records.append(failed_point(spec, run.point, f"{type(exc).__name__}: {exc}", result))
    return records
