"""cube.dlphase: the analyses, plots and report from a Dataset, as the command line gives them."""

import holoviews as hv
import numpy as np
import pytest
import xarray as xr

import dlphase
from dlphase.analyses.dispatch import analyze
from tests.synthetic_cubes import fluctuation_cube


def test_the_accessor_gives_what_analyze_gives():
    cube = fluctuation_cube()
    analysis, expected = analyze(cube, "fluctuation_scaling", near_jamming=3.0)
    result = cube.dlphase.analyze("fluctuation-scaling", near_jamming=3.0)
    xr.testing.assert_identical(result.drop_attrs(), expected.drop_attrs())
    assert result.attrs["summary"].splitlines() == analysis.summary(expected)
    applies = cube.dlphase.analyses()
    assert applies["fluctuation_scaling"] is None and applies["double_descent"] is None
    assert "the cube has no" in applies["stripe"]


def test_the_accessor_plots_and_reports(tmp_path):
    cube = fluctuation_cube()
    plot = cube.dlphase.plot("double_descent", backend="matplotlib")
    assert isinstance(plot, hv.core.dimension.ViewableTree)
    names = cube.dlphase.report(tmp_path / "r.html")
    assert "fluctuation_scaling" in names and (tmp_path / "r.html").stat().st_size > 10000


def test_the_accessor_errors_name_the_problem():
    cube = fluctuation_cube()
    with pytest.raises(dlphase.DlphaseError, match="fluctuation_scaling"):  # the list of installed analyses
        cube.dlphase.analyze("no_such_analysis")
    with pytest.raises(dlphase.DlphaseError, match="near_jamming"):
        cube.dlphase.analyze("fluctuation_scaling", near_jamming=0.5)
    with pytest.raises(dlphase.DlphaseError, match="does not apply to this cube: the cube has no"):
        cube.dlphase.analyze("stripe")
    with pytest.raises(dlphase.DlphaseError, match="use 'bokeh' or 'matplotlib'"):
        cube.dlphase.plot("double_descent", backend="plotly")
    assert np.isfinite(float(cube.dlphase.analyze("double_descent")["n_jamming"].max()))
