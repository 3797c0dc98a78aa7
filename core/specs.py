"""The TOML spec: parsing into frozen attrs objects, with strict errors that name the key's path.

A spec has the sections ``dataset``, ``architecture``, ``dynamics``, ``observables``, ``grid`` and
``run``. Plugin parameters sit beside ``name``; a plugin's attrs fields are its parameters. The
structuring is hand-written rather than cattrs' because cattrs' int hook calls ``int()``, which
silently turns ``pca = 10.7`` into 10 and ``"10"`` into 10; here a value of the wrong type is an error.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import attrs

from .errors import SpecError
from .interfaces import Component, Dataset, Architecture, Dynamics, Observable
from .manager import PluginManager, get_manager

GRID_DIMS = ("h", "alpha_tilde", "P", "seed")
#: the sections of a spec that, with ``run.dtype`` and the grid point, determine a run's result
RUN_SECTIONS = ("dataset", "architecture", "dynamics", "observables")
SECTIONS = ("dataset", "architecture", "dynamics", "observables", "grid", "run", "cluster")


# -- helpers for plugin authors --------------------------------------------------------------------
def param(default: Any = attrs.NOTHING, doc: str = "", validator=None, **kwargs):
    """An attrs field that documents a plugin parameter (``dlphase plugins`` shows ``doc``)."""
    return attrs.field(default=default, validator=validator, metadata={"doc": doc}, **kwargs)


def positive(instance, attribute, value):
    """attrs validator: value > 0."""
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def non_negative(instance, attribute, value):
    """attrs validator: value >= 0."""
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def probability(instance, attribute, value):
    """attrs validator: 0 < value < 1 (a confidence level, say)."""
    if not 0 < value < 1:
        raise ValueError(f"{attribute.name} = {value} must be between 0 and 1")


# -- grid and run sections -------------------------------------------------------------------------
def _grid_values(check, what):
    def validator(instance, attribute, values):
        if len(values) == 0:
            raise ValueError(f"{attribute.name} is empty; give at least one value")
        if len(set(values)) != len(values):
            raise ValueError(f"{attribute.name} has repeated values {list(values)}; list each value once")
        for v in values:
            if not check(v):
                raise ValueError(f"{attribute.name} = {v!r} is invalid; every value must be {what}")
    return validator


@attrs.frozen(kw_only=True)
class Grid:
    """The Cartesian product of runs: width h, rescaled output scale alpha_tilde, P and init seed."""

    h: tuple[int, ...] = param(doc="widths h (> 0)", validator=_grid_values(lambda v: v > 0, "> 0"))
    alpha_tilde: tuple[float, ...] = param(
        doc="alpha_tilde (> 0): f is alpha_tilde / h times a sum over the read-out units (alpha = alpha_tilde / "
            "sqrt(h) for fc and cnn)",
        validator=_grid_values(lambda v: v > 0 and math.isfinite(v), "finite and > 0"))
    P: tuple[int, ...] = param(doc="numbers of training points (> 0)", validator=_grid_values(lambda v: v > 0, "> 0"))
    seed: tuple[int, ...] = param(default=(0,), doc="initialisation seeds (>= 0)",
                                  validator=_grid_values(lambda v: v >= 0, ">= 0"))

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, in row-major order over (h, alpha_tilde, P, seed)."""
        return [dict(zip(GRID_DIMS, values))
                for values in itertools.product(self.h, self.alpha_tilde, self.P, self.seed)]


@attrs.frozen(kw_only=True)
class RunOptions:
    """How each run executes: floating-point type and device. Not part of a run's identity but dtype."""

    dtype: Literal["float64", "float32"] = param(default="float64",
                                                 doc="float64 (default, as the reference) or float32")
    device: str = param(default="cpu", doc="torch device: cpu, cuda, cuda:1, ...")
    ensemble: bool = param(default=True, doc="train the runs that share h and P (all seeds and alpha_tilde) as "
                                             "batched ensembles (dynamics with train_ensemble: gradient_flow, gd, "
                                             "sgd); results equal those of runs made alone")
    batch_size: int | None = param(default=None, validator=positive,
                                   doc="at most this many runs per batch, the unit a worker trains and saves at once "
                                       "(default: up to 64, fewer for large h P); smaller batches keep more workers "
                                       "of a cluster busy")

    @device.validator
    def _check_device(self, attribute, value):
        import torch

        try:
            dev = torch.device(value)
        except RuntimeError:
            raise ValueError(f"device {value!r} is not a torch device; use cpu or cuda") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {value!r} asked for but CUDA is not available here; use cpu")


_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*[KMGT]i?B$")


def _matches(pattern: re.Pattern, example: str):
    def validator(instance, attribute, value):
        if not pattern.match(value):
            raise ValueError(f"{attribute.name} = {value!r} is not like {example!r}")
    return validator


@attrs.frozen(kw_only=True)
class ClusterSettings:
    """The batch jobs that ``--cluster slurm`` (or pbs, sge) submits through dask-jobqueue, one or more dask
    workers each. Not part of any run's identity: the same spec runs anywhere."""

    queue: str | None = param(default=None, doc="partition (slurm) or queue (pbs, sge); the system's default if unset")
    account: str | None = param(default=None, doc="account or project charged for the jobs")
    cores: int = param(default=1, validator=positive, doc="cores per job")
    processes: int = param(default=1, validator=positive, doc="dask workers per job, one batch at a time each, "
                                                                "with cores / processes torch threads")
    memory: str = param(default="4GB", validator=_matches(_MEMORY, "16GB"), doc="memory per job, e.g. 16GB")
    walltime: str = param(default="01:00:00", validator=_matches(_WALLTIME, "04:00:00"),
                          doc="wall time per job, [D-]HH:MM:SS")
    jobs: int = param(default=1, validator=non_negative, doc="jobs to start when adapt_maximum is unset")
    adapt_minimum: int = param(default=0, validator=non_negative, doc="adaptive scaling: fewest jobs")
    adapt_maximum: int | None = param(default=None, validator=positive,
                                      doc="adaptive scaling: most jobs (unset: a fixed number of jobs)")
    job_extra: tuple[str, ...] = param(default=(), converter=tuple,
                                       doc="extra scheduler directives, e.g. [\"--gres=gpu:1\"] for slurm")
    prologue: tuple[str, ...] = param(default=(), converter=tuple,
                                      doc="shell lines run in each job before the worker, e.g. module loads")
    python: str | None = param(default=None, doc="python on the nodes (default: this one)")
    shared_fs: bool = param(default=False, doc="the workers see the output's folder and write each run themselves, "
                                               "instead of sending it back to the command")

    def __attrs_post_init__(self):
        if self.processes > self.cores:
            raise ValueError(f"processes = {self.processes} exceeds cores = {self.cores}; each worker needs a core")
        if self.adapt_maximum is not None and self.adapt_minimum > self.adapt_maximum:
            raise ValueError(f"adapt_minimum = {self.adapt_minimum} exceeds adapt_maximum = {self.adapt_maximum}")


# -- the whole spec --------------------------------------------------------------------------------
@attrs.frozen(kw_only=True)
class Spec:
    """A validated spec: one component object per section plus the grid and run options."""

    dataset: Dataset
    architecture: Architecture
    dynamics: Dynamics
    observables: tuple[Observable, ...]
    grid: Grid
    run: RunOptions = attrs.field(factory=RunOptions)
    cluster: ClusterSettings | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical nested dict, defaults filled in; ``Spec.from_dict`` of it gives this spec back."""
        obs: dict[str, Any] = {"names": [o.name for o in self.observables]}
        for o in self.observables:
            params = component_to_dict(o)
            params.pop("name")
            if params:
                obs[o.name] = params
        return {"dataset": component_to_dict(self.dataset),
                "architecture": component_to_dict(self.architecture),
                "dynamics": component_to_dict(self.dynamics),
                "observables": obs,
                "grid": {k: list(v) for k, v in attrs.asdict(self.grid).items()},
                "run": attrs.asdict(self.run),
                **({"cluster": attrs.asdict(self.cluster)} if self.cluster is not None else {})}

    def to_toml(self, cluster: bool = False) -> str:
        """The spec as TOML; parameters that are None (TOML has no null) are left out: they are defaults. The
        [cluster] section says where runs execute, not what they compute, so cubes and runs folders, which
        store this TOML, leave it out (``cluster=True`` keeps it): a cube is the same from a laptop or a cluster."""
        import tomli_w

        def drop_none(d):
            return {k: drop_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

        d = self.to_dict()
        if not cluster:
            d.pop("cluster", None)
        return tomli_w.dumps(drop_none(d))

    def run_id(self, point: Mapping[str, Any]) -> str:
        """A stable id of one run: a hash of everything that determines its result."""
        d = self.to_dict()
        ident = {k: d[k] for k in RUN_SECTIONS}
        ident["dtype"] = self.run.dtype
        ident["point"] = {k: point[k] for k in GRID_DIMS}
        blob = json.dumps(ident, sort_keys=True, default=repr).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_point(self, **point) -> "Spec":
        """The same spec with a one-point grid."""
        return attrs.evolve(self, grid=Grid(**{k: (point[k],) for k in GRID_DIMS}))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], manager: PluginManager | None = None) -> "Spec":
        return build_spec(raw, manager)


def component_to_dict(obj: Component) -> dict[str, Any]:
    out: dict[str, Any] = {"name": obj.name}
    for f in attrs.fields(type(obj)):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        if isinstance(v, Component):
            v = component_to_dict(v)
        elif attrs.has(type(v)):
            v = {k: list(x) if isinstance(x, tuple) else x for k, x in attrs.asdict(v, recurse=False).items()}
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


# -- structuring -----------------------------------------------------------------------------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if isinstance(tp, type) and issubclass(tp, Component):
        return f"{tp.kind} name or table"
    if isinstance(tp, type) and attrs.has(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str, manager: PluginManager) -> Any:
    """Check ``value`` against annotation ``tp`` strictly; convert lists to tuples, tables to plugins."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
    elif origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # X | None: X's own error, which names the inner key
            return _convert(value, real[0], path, manager)
        for arg in real:
            try:
                return _convert(value, arg, path, manager)
            except SpecError:
                pass
    elif origin in (tuple, list):
        args = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_convert(v, args[0], f"{path}[{i}]", manager) for i, v in enumerate(items))
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and issubclass(tp, Component):
        return build_component(tp.kind, value, path, manager)
    elif isinstance(tp, type) and attrs.has(tp) and isinstance(value, Mapping):
        return build_attrs(tp, value, path, manager, what=f"[{path}]")
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise SpecError(f"{path} = {value!r} is invalid: expected {_type_name(tp)}")


def build_component(kind: str, table: Any, path: str, manager: PluginManager | None = None,
                    default_name: str | None = None) -> Component:
    """Turn ``"name"`` or ``{name = ..., param = ...}`` into the plugin's validated attrs object."""
    manager = manager or get_manager()
    if isinstance(table, str):
        table = {"name": table}
    if not isinstance(table, Mapping):
        raise SpecError(f"{path} must be a {kind} name or a table with 'name', got {table!r}")
    table = dict(table)
    name = table.pop("name", default_name)
    if name is None:
        raise SpecError(f"{path}.name is missing; installed {kind if kind.endswith('s') else kind + 's'}: "
                        f"{', '.join(manager.names(kind))}")
    if not isinstance(name, str):
        raise SpecError(f"{path}.name must be a string, got {name!r}")
    cls = manager.get(kind, name, where=f"{path}.name")
    return build_attrs(cls, table, path, manager, what=f"{kind} {name!r}")


def build_attrs(cls: type, table: Mapping[str, Any], path: str, manager: PluginManager, what: str):
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            valid = ", ".join(fields) or "none"
            raise SpecError(f"unknown key {path}.{key} for {what}; valid keys: {valid}")
        kwargs[key] = _convert(value, hints.get(key, Any), f"{path}.{key}", manager)
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in kwargs]
    if missing:
        raise SpecError(f"{path}: missing required key(s) {', '.join(missing)} for {what}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        # validators start their message with the field's name: report it as the key's path
        raise SpecError(f"{path}.{msg}" if msg.split(" ")[0] in fields else f"{path}: {msg}") from None


def build_spec(raw: Mapping[str, Any], manager: PluginManager | None = None) -> Spec:
    """Validate a parsed TOML document and build the :class:`Spec`."""
    manager = manager or get_manager()
    defaults = manager.defaults
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise SpecError(f"unknown section [{unknown[0]}]; valid sections: {', '.join(SECTIONS)}")
    for key in SECTIONS:
        if key in raw and not isinstance(raw[key], Mapping):
            raise SpecError(f"{key} must be a table ([{key}]), got {raw[key]!r}")
    if "grid" not in raw:
        raise SpecError("the spec has no [grid] section; give at least grid.h, grid.alpha_tilde and grid.P")

    dataset = build_component("dataset", raw.get("dataset", {}), "dataset", manager, defaults.get("dataset"))
    architecture = build_component("architecture", raw.get("architecture", {}), "architecture", manager,
                                   defaults.get("architecture"))
    dyn_table = dict(raw.get("dynamics", {}))
    if "loss" not in dyn_table and defaults.get("loss") and "name" not in dyn_table:
        dyn_table["loss"] = defaults["loss"]
    dynamics = build_component("dynamics", dyn_table, "dynamics", manager, defaults.get("dynamics"))

    obs_table = dict(raw.get("observables", {}))
    names = obs_table.pop("names", defaults.get("observables", ["errors"]))
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SpecError(f"observables.names must be a list of names, got {names!r}")
    if len(set(names)) != len(names):
        raise SpecError(f"observables.names lists a name twice: {names}")
    for key in obs_table:
        if key not in names:
            raise SpecError(f"unknown key observables.{key}; parameters of an observable go in "
                            f"[observables.NAME] for a NAME in observables.names ({', '.join(names)})")
    observables = tuple(
        build_component("observable", {"name": n, **_table(obs_table.get(n, {}), f"observables.{n}")},
                        f"observables.{n}", manager) for n in names)

    grid = build_attrs(Grid, raw["grid"], "grid", manager, what="[grid]")
    run = build_attrs(RunOptions, raw.get("run", {}), "run", manager, what="[run]")
    cluster = build_attrs(ClusterSettings, raw["cluster"], "cluster", manager, what="[cluster]") \
        if "cluster" in raw else None

    try:
        architecture.check(dataset)
    except ValueError as exc:
        raise SpecError(f"architecture: {exc}") from None
    try:
        dynamics.check(architecture, dataset)
    except ValueError as exc:
        raise SpecError(f"dynamics: {exc}") from None
    for obs in observables:
        try:
            obs.check(dataset)
            obs.check_architecture(architecture)
        except ValueError as exc:
            raise SpecError(f"observables.{obs.name}: {exc}") from None
    tracked = [o.name for o in observables if o.checkpoints() is not None]
    snapshots = [o.name for o in observables if o.needs_snapshots()]
    if snapshots and not tracked:
        raise SpecError(f"observable {snapshots[0]!r} measures the net along the flow, at the checkpoints of the "
                        f"trajectory observable; add 'trajectory' to observables.names")
    if len(tracked) > 1:
        raise SpecError(f"observables {tracked} each set checkpoints; keep one of them")
    if tracked and not dynamics.records_checkpoints:
        raise SpecError(f"observable {tracked[0]!r} records along the flow, but dynamics {dynamics.name!r} "
                        f"records no checkpoints; drop {tracked[0]!r} or use a dynamics that does")
    limit = dataset.max_train()
    held = validation_points(dynamics)
    if limit is not None and max(grid.P) + held > limit:
        if held:
            raise SpecError(f"grid.P = {max(grid.P)} plus dynamics.early_stopping.n_validation = {held} is more than "
                            f"the {limit} training points dataset {dataset.name!r} can serve with these parameters; "
                            f"lower P or n_validation (or the test set size)")
        raise SpecError(f"grid.P = {max(grid.P)} is larger than the {limit} training points dataset "
                        f"{dataset.name!r} can serve with these parameters; lower P (or the test set size)")
    return Spec(dataset=dataset, architecture=architecture, dynamics=dynamics,
                observables=observables, grid=grid, run=run, cluster=cluster)


def validation_points(dynamics: Dynamics) -> int:
    """Validation points the dynamics holds out for early stopping (0 without early stopping)."""
    return dynamics.early_stopping.n_validation if dynamics.early_stopping is not None else 0


def _table(value, path):
    if not isinstance(value, Mapping):
        raise SpecError(f"{path} must be a table of parameters, got {value!r}")
    return value


# -- files and overrides ---------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"grid.h=100"`` -> (["grid", "h"], 100); the value is read as TOML, else as a string."""
    if "=" not in text:
        raise SpecError(f"--set {text!r} is not KEY=VALUE; write e.g. --set grid.h=100")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"--set {text!r}: bad key {key!r}; write e.g. --set dataset.pca=10")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if isinstance(node.get(part), str):  # a plugin given by name: loss = "hinge"
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {text!r}: {'.'.join(parts[:i + 1])} is not a table")
        node[parts[-1]] = value
    return raw


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} does not exist; check the path") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {str(path)!r}: {exc.__class__.__name__}; give a TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}; fix the syntax") from None


def load_cluster_settings(path: str | Path) -> ClusterSettings:
    """Cluster settings from a TOML file of their own: the keys of a spec's [cluster], at the top or in a
    [cluster] table."""
    if not Path(path).is_file():
        raise SpecError(f"cluster config {str(path)!r} does not exist; check the path")
    raw = read_toml(path)
    table = raw["cluster"] if set(raw) == {"cluster"} and isinstance(raw["cluster"], Mapping) else raw
    return build_attrs(ClusterSettings, table, "cluster", get_manager(), what=f"[cluster] in {path}")


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
              manager: PluginManager | None = None) -> Spec:
    """Read a TOML spec file, apply ``--set``-style overrides, validate, and return the :class:`Spec`."""
    return build_spec(apply_overrides(read_toml(path), list(overrides)), manager)
