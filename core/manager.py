"""The plugin manager: built-ins from ``registry.toml``, third parties from entry points.

Both go through the same pluggy hooks (:mod:`dlphase.hookspecs`). A plugin that fails to import
or to register gives a warning that names it; the others keep working. An unknown name raises an
error that lists what is installed, as xarray does for its backends.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import inspect
import tomllib
import types
import warnings
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError
from .interfaces import Component

ENTRY_POINT_GROUP = "dlphase"
_ENTRY_KEYS = {"kind", "name", "object", "description"}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered; it is skipped."""


@attrs.frozen
class Registered:
    """One registered class, where it came from, and its one-line description."""

    kind: str
    name: str
    cls: type
    origin: str
    description: str


def read_registry() -> dict[str, Any]:
    """Parse the built-in registry (``registry.toml``, shipped as package data)."""
    text = importlib.resources.files("dlphase.plugins").joinpath("registry.toml").read_text()
    reg = tomllib.loads(text)
    unknown = set(reg) - {"defaults", "plugin", "commands"}
    if unknown:
        raise PluginError(f"registry.toml: unknown section(s) {sorted(unknown)}")
    for i, entry in enumerate(reg.get("plugin", [])):
        if set(entry) != _ENTRY_KEYS:
            raise PluginError(f"registry.toml: plugin[{i}] must have exactly the keys {sorted(_ENTRY_KEYS)}")
        if entry["kind"] not in hookspecs.KINDS:
            raise PluginError(f"registry.toml: plugin[{i}].kind {entry['kind']!r} is not one of "
                              f"{list(hookspecs.KINDS)}")
    for i, entry in enumerate(reg.get("commands", [])):
        if set(entry) != {"object", "description"}:
            raise PluginError(f"registry.toml: commands[{i}] must have exactly the keys ['description', 'object']")
    return reg


def _origin_of(plugin: object, default: str) -> str:
    module = plugin if isinstance(plugin, types.ModuleType) else inspect.getmodule(plugin)
    top = (getattr(module, "__name__", "") or "").split(".")[0]
    if not top:
        return default
    dists = importlib.metadata.packages_distributions().get(top)
    return dists[0] if dists else top


class PluginManager:
    """Finds, registers and looks up plugin classes by kind and name."""

    def __init__(self, builtins: bool = True, entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = read_registry()
        self.defaults: dict[str, Any] = dict(self.registry.get("defaults", {}))
        self._origins: dict[int, str] = {}
        self._table: dict[str, dict[str, Registered]] | None = None
        if builtins:
            self._load_builtins()
        if entry_points:
            self._load_entry_points()

    # -- loading -------------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        for entry in self.registry.get("plugin", []) + self.registry.get("commands", []):
            module_name = entry["object"].split(":")[0]
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # a broken built-in must not take the others down
                warnings.warn(f"dlphase: built-in plugin module {module_name!r} failed to load "
                              f"({type(exc).__name__}: {exc}); it is skipped", PluginWarning, stacklevel=2)
                continue
            if not self.pm.is_registered(module):
                self.register(module, origin="dlphase")

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else ep.value
            try:
                plugin = ep.load()
            except Exception as exc:
                warnings.warn(f"dlphase: plugin {ep.name!r} from package {dist!r} failed to load "
                              f"({type(exc).__name__}: {exc}); it is skipped", PluginWarning, stacklevel=2)
                continue
            if not self.pm.is_registered(plugin):
                self.register(plugin, origin=dist)

    def register(self, plugin: object, origin: str | None = None) -> None:
        """Register a module or object with ``@dlphase.hookimpl`` functions (tests, notebooks)."""
        self.pm.register(plugin)
        self._origins[id(plugin)] = origin or _origin_of(plugin, "unknown")
        self._table = None

    def unregister(self, plugin: object) -> None:
        self.pm.unregister(plugin)
        self._origins.pop(id(plugin), None)
        self._table = None

    def register_commands(self, cli) -> None:
        """Let every plugin add its commands to the click group ``cli`` (the ``register_commands`` hook). A plugin
        that fails, or takes a name already taken, gives a warning; the commands already there stay."""
        import click

        for impl in reversed(self.pm.hook.register_commands.get_hookimpls()):
            origin = self._origins.get(id(impl.plugin), impl.plugin_name)
            groups = [cli] + [g for g in cli.commands.values() if isinstance(g, click.Group)]
            before = {id(g): dict(g.commands) for g in groups}
            try:
                impl.function(cli)
            except Exception as exc:
                warnings.warn(f"dlphase: plugin {impl.plugin_name!r} ({origin}) failed to register its commands "
                              f"({type(exc).__name__}: {exc}); they are skipped", PluginWarning, stacklevel=2)
                for g in groups:
                    g.commands.clear()
                    g.commands.update(before[id(g)])
                continue
            for g in groups:
                for name, command in before[id(g)].items():
                    if g.commands.get(name) is not command:
                        warnings.warn(f"dlphase: command {name!r} from {origin} clashes with one already there; "
                                      f"keeping that one", PluginWarning, stacklevel=2)
                        g.commands[name] = command

    # -- the table of registered classes -----------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, Registered]]:
        table: dict[str, dict[str, Registered]] = {kind: {} for kind in hookspecs.KINDS}
        described = {(e["kind"], e["name"]): e for e in self.registry.get("plugin", [])}
        for kind, hook_name in hookspecs.KINDS.items():
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
                origin = self._origins.get(id(impl.plugin), impl.plugin_name)

                def register(cls, _kind=kind, _origin=origin):
                    self._add(table, _kind, cls, _origin, described)

                try:
                    impl.function(register)
                except Exception as exc:
                    warnings.warn(f"dlphase: plugin {impl.plugin_name!r} ({origin}) failed to register "
                                  f"its {kind} classes ({type(exc).__name__}: {exc}); they are skipped",
                                  PluginWarning, stacklevel=3)
        for (kind, name), entry in described.items():
            got = table[kind].get(name)
            if got is not None and f"{got.cls.__module__}:{got.cls.__qualname__}" != entry["object"]:
                raise PluginError(f"registry.toml says {kind} {name!r} is {entry['object']}, but "
                                  f"{got.cls.__module__}:{got.cls.__qualname__} registered that name")
        return table

    @staticmethod
    def _add(table, kind, cls, origin, described) -> None:
        base = {"dataset": "Dataset", "architecture": "Architecture", "dynamics": "Dynamics",
                "loss": "Loss", "observable": "Observable", "analysis": "Analysis"}[kind]
        if not (isinstance(cls, type) and issubclass(cls, Component) and getattr(cls, "kind", None) == kind):
            raise TypeError(f"{cls!r} is not a dlphase.{base} subclass")
        if not attrs.has(cls):
            raise TypeError(f"{cls.__qualname__} must be an attrs class (its fields are its parameters)")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} has no 'name' class attribute")
        if name in table[kind]:
            prev = table[kind][name]
            warnings.warn(f"dlphase: {kind} {name!r} from {origin} clashes with the one from "
                          f"{prev.origin}; keeping the one from {prev.origin}", PluginWarning, stacklevel=4)
            return
        entry = described.get((kind, name))
        doc = (inspect.getdoc(cls) or "").strip().splitlines()
        description = entry["description"] if entry and origin == "dlphase" else (doc[0] if doc else "")
        table[kind][name] = Registered(kind, name, cls, origin, description)

    @property
    def table(self) -> dict[str, dict[str, Registered]]:
        if self._table is None:
            self._table = self._collect()
        return self._table

    def names(self, kind: str) -> list[str]:
        return sorted(self.table[kind])

    def get(self, kind: str, name: str, where: str | None = None) -> type:
        """The class registered as ``name``; an error listing the installed names otherwise."""
        try:
            return self.table[kind][name].cls
        except KeyError:
            at = f"{where}: " if where else ""
            raise PluginError(f"{at}unknown {kind} {name!r}; installed: {', '.join(self.names(kind)) or 'none'} "
                              f"(see `dlphase plugins`)") from None

    def describe(self) -> list[dict[str, Any]]:
        """Every registered class with its origin package, description and parameters."""
        out = []
        for kind in hookspecs.KINDS:
            for name in self.names(kind):
                reg = self.table[kind][name]
                out.append({"kind": kind, "name": name, "origin": reg.origin, "description": reg.description,
                            "object": f"{reg.cls.__module__}:{reg.cls.__qualname__}",
                            "parameters": parameters_of(reg.cls)})
        return out


def parameters_of(cls: type) -> list[dict[str, Any]]:
    """The attrs fields of a plugin class as (name, type, default, doc) records."""
    out = []
    for f in attrs.fields(cls):
        if not f.init:
            continue
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory() if not default.takes_self else None
        elif default is attrs.NOTHING:
            default = None
        if isinstance(default, Component):
            default = {"name": default.name, **attrs.asdict(default, recurse=False)}
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        out.append({"name": f.name, "type": type_name, "default": default,
                    "doc": f.metadata.get("doc", "")})
    return out


_MANAGER: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager (built-ins and entry points, loaded on first use)."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER
