"""dlphase's built-in plugins. Each module implements the hooks of :mod:`dlphase.hookspecs`;
``registry.toml`` lists them and is the one place where built-ins are declared."""
