"""dlphase's built-in plugins, one folder per kind: ``datasets``, ``architectures``, ``dynamics`` (with the
gradient-flow ``integrator``), ``observables``, the losses (``losses``) and the ``workflows`` that add commands.
Each module that registers a plugin implements the hooks of :mod:`dlphase.hookspecs`; its helpers sit beside it.
``registry.toml`` lists the built-ins and is the one place where they are declared."""
