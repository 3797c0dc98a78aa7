"""dlphase: measure the physics of training deep nets.

The public API: the plugin interfaces and hooks, spec loading, a :class:`Run` for one grid point,
and :func:`sweep` for a whole grid into an xarray cube.
"""

from .errors import DataError, DlphaseError, PluginError, SpecError
from .hookspecs import hookimpl
from .interfaces import (Analysis, Architecture, Data, Dataset, Dynamics, Loss, Observable, RunState, TorchData,
                         Variable)
from .results import TrainResult
from .specs import GRID_DIMS, Grid, RunOptions, Spec, load_spec, param
from .early_stopping import EarlyStopping
from .manager import PluginManager, get_manager
from .model import AlphaModel, alpha_of
from .net import Net
from .grid_point import Run
from .sweep import sweep
from .files import open_cube
from . import accessor  # noqa: F401  (registers cube.dlphase on xarray Datasets)

__all__ = [
    "AlphaModel", "Analysis", "Architecture", "Data", "DataError", "Dataset", "DlphaseError", "Dynamics",
    "EarlyStopping", "GRID_DIMS", "Grid", "Loss", "Net", "Observable", "PluginError", "PluginManager", "Run",
    "RunOptions", "RunState", "Spec",
    "SpecError", "TorchData", "TrainResult", "Variable", "alpha_of", "get_manager", "hookimpl", "load_spec",
    "open_cube", "param", "sweep",
]
