"""``cube.dlphase``: the analyses, their plots and the report from a notebook, without importing dlphase's internals.

    cube = dlphase.open_cube("sweep.nc")
    cube.dlphase.analyses()                        # {name: None if it applies, else why not}
    result = cube.dlphase.analyze("crossover", levels=(1.0, 0.1))
    print(result.attrs["summary"])
    cube.dlphase.plot("crossover")                 # a holoviews object (bokeh), shown inline
    cube.dlphase.report("report.html")
"""

from __future__ import annotations

import os

import xarray as xr


@xr.register_dataset_accessor("dlphase")
class DlphaseAccessor:
    """The registered analyses (built-in and third-party) on this Dataset, by name, with their options as keywords;
    bad names and options raise :class:`dlphase.DlphaseError` or :class:`dlphase.SpecError` naming them."""

    def __init__(self, cube: xr.Dataset):
        self._cube = cube

    def analyses(self) -> dict[str, str | None]:
        """Every registered analysis: None where it applies to this cube, else the reason it does not."""
        from dlphase.analyses.dispatch import get_analysis
        from dlphase.manager import get_manager

        return {name: get_analysis(name).applies(self._cube) for name in get_manager().names("analysis")}

    def analyze(self, name: str, **options) -> xr.Dataset:
        """The result of analysis ``name`` (``crossover``, ``learning-curve``, ...), with its summary lines in
        ``attrs["summary"]``."""
        from dlphase.analyses.dispatch import analyze

        analysis, result = analyze(self._cube, name, **options)
        result.attrs["summary"] = "\n".join(analysis.summary(result))
        return result

    def plot(self, name: str, backend: str = "bokeh", **options):
        """The analysis's holoviews plot (``backend``: bokeh or matplotlib); a notebook shows it inline."""
        from dlphase.analyses.phase_diagram import _load_backend
        from dlphase.analyses.dispatch import analyze
        from dlphase.errors import DlphaseError

        if backend not in ("bokeh", "matplotlib"):
            raise DlphaseError(f"backend = {backend!r}: use 'bokeh' or 'matplotlib'")
        analysis, result = analyze(self._cube, name, **options)
        _load_backend(backend)
        return analysis.plot(result, backend=backend)

    def report(self, path: str | os.PathLike) -> list[str]:
        """Write the HTML report of every analysis that applies to ``path``; returns their names."""
        from dlphase.analyses.report import write_report

        return write_report(self._cube, path)
