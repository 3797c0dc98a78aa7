"""Analyses: functions from a result cube to labelled tables, and their holoviews plots."""

from .hessian_spectrum import hessian_spectrum_plot, save_hessian_spectrum
from .phase_diagram import phase_diagram, phase_diagram_plot, save_phase_diagram

__all__ = ["hessian_spectrum_plot", "phase_diagram", "phase_diagram_plot", "save_hessian_spectrum",
           "save_phase_diagram"]
