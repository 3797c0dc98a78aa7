"""Analyses: functions from a result cube to a labelled result (xarray in, xarray out), their holoviews plots, and
the HTML report. Each is a :class:`dlphase.Analysis` registered through the ``register_analyses`` hook, so
``dlphase analyze NAME``, ``dlphase plot NAME`` and ``dlphase report`` find third-party ones too."""

from .double_descent import DoubleDescent
from .ensemble import Ensemble, ensemble_members
from .fluctuations import FluctuationScaling
from .hessian_spectrum import hessian_spectrum_plot, save_hessian_spectrum
from .learning_curve import LearningCurve
from .phase_diagram import PhaseDiagram, phase_diagram, phase_diagram_plot, save_phase_diagram
from .dispatch import analyze, get_analysis, save_plot

__all__ = ["DoubleDescent", "Ensemble", "FluctuationScaling", "LearningCurve", "PhaseDiagram", "analyze",
           "ensemble_members", "get_analysis", "hessian_spectrum_plot", "phase_diagram", "phase_diagram_plot",
           "save_hessian_spectrum", "save_phase_diagram", "save_plot"]
