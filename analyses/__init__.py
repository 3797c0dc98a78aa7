"""Analyses: functions from a result cube to labelled tables, and their holoviews plots."""

from .phase_diagram import phase_diagram, phase_diagram_plot, save_phase_diagram

__all__ = ["phase_diagram", "phase_diagram_plot", "save_phase_diagram"]
