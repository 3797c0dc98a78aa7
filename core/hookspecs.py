"""All of dlphase's pluggy hook specifications, in one place.

A plugin (a built-in module listed in ``registry.toml`` or a third-party package exposing an
entry point in the group ``dlphase``) implements any of these with ``@dlphase.hookimpl``. Each hook
receives a ``register`` callable; call it with a class that implements the matching interface of
:mod:`dlphase.interfaces` and carries a unique ``name`` class attribute::

    import dlphase

    @dlphase.hookimpl
    def register_datasets(register):
        register(MyDataset)
"""

import pluggy

PROJECT = "dlphase"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_datasets(register):
    """Register :class:`dlphase.Dataset` classes: ``register(cls)``."""


@hookspec
def register_architectures(register):
    """Register :class:`dlphase.Architecture` classes: ``register(cls)``."""


@hookspec
def register_dynamics(register):
    """Register :class:`dlphase.Dynamics` classes (training algorithms): ``register(cls)``."""


@hookspec
def register_losses(register):
    """Register :class:`dlphase.Loss` classes, the per-sample losses l(y f): ``register(cls)``."""


@hookspec
def register_observables(register):
    """Register :class:`dlphase.Observable` classes, measured at the end of a run: ``register(cls)``."""


@hookspec
def register_analyses(register):
    """Register :class:`dlphase.Analysis` classes, functions from a result cube to a labelled result:
    ``register(cls)``."""


@hookspec
def register_commands(cli):
    """Add commands to the ``dlphase`` command line: ``cli`` is its top-level click group, and
    ``cli.commands["plot"]`` the ``plot`` group. Call ``cli.add_command(command)`` with a click command. A name
    that is already taken keeps its command (a warning names the clash)."""


#: kind name -> hook name; the order is the order of ``dlphase plugins``.
KINDS = {
    "dataset": "register_datasets",
    "architecture": "register_architectures",
    "dynamics": "register_dynamics",
    "loss": "register_losses",
    "observable": "register_observables",
    "analysis": "register_analyses",
}
