"""User-facing errors: each says what is wrong and how to fix it, in one line.

The CLI turns a :class:`DlphaseError` into ``error: <message>`` on stderr and exit status 2.
"""


class DlphaseError(Exception):
    """Bad input from the user (spec, data files, paths). Never a bug in dlphase."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SpecError(DlphaseError):
    """The spec names something unknown or holds an invalid value."""


class DataError(DlphaseError):
    """A dataset cannot be loaded or cannot serve the requested points."""


class PluginError(SpecError):
    """A plugin name is unknown or a plugin is inconsistent with its registry entry."""


class DiskFullError(DlphaseError):
    """A file could not be written for lack of space on its filesystem."""
