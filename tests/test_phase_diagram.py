"""The phase-diagram analysis against hand-computed values on a synthetic cube, and its files."""

import numpy as np
import pytest
import xarray as xr

from dlphase.analyses.phase_diagram import crossover, log_edges, phase_diagram, save_phase_diagram


def synthetic_cube():
    h, a, P, seed, n = [2, 8], [0.1, 10.0], [50], [0, 1, 2], 4
    y = np.array([1.0, -1.0, 1.0, -1.0])
    f = np.zeros((2, 2, 1, 3, n))
    # (h=2, a=0.1): seeds make 1, 2, 0 errors; their mean output has sign errors on point 1 only
    f[0, 0, 0, 0] = [1, 1, 1, -1]     # error on point 1
    f[0, 0, 0, 1] = [1, 1, -1, -1]    # errors on points 1 and 2
    f[0, 0, 0, 2] = [1, -1, 1, -1]    # none
    f[..., :] = np.where(f == 0, y, f)  # the other cells: always right
    f[1, 1, 0, 2] = [-1, 1, -1, 1]    # one seed of (h=8, a=10) wrong everywhere
    err = (f * y <= 0).mean(-1)
    n_delta = np.zeros((2, 2, 1, 3))
    n_delta[0, :, 0, :2] = 5          # h=2: seeds 0 and 1 jammed at both alpha_tilde
    status = np.full((2, 2, 1, 3), "converged", dtype=object)
    status[1, 0, 0, 1] = "failed"
    err[1, 0, 0, 1] = np.nan
    f[1, 0, 0, 1] = np.nan
    dims = ("h", "alpha_tilde", "P", "seed")
    return xr.Dataset({"test_error": (dims, err), "n_delta": (dims, n_delta), "status": (dims, status),
                       "f_test": (dims + ("test",), f), "y_test": (("P", "test"), y[None])},
                      coords={"h": h, "alpha_tilde": a, "P": P, "seed": seed})


def test_values_by_hand():
    pd = phase_diagram(synthetic_cube())
    assert pd["test_error"].sel(h=2, alpha_tilde=0.1).item() == pytest.approx((0.25 + 0.5 + 0) / 3)
    # <f> at (2, 0.1) = [1, 1/3, 1/3, -1]: wrong on point 1 only
    assert pd["ensemble_test_error"].sel(h=2, alpha_tilde=0.1).item() == pytest.approx(0.25)
    # (8, 10): errors 0, 0, 1 -> mean 1/3; <f> = [1/3, -1/3, 1/3, -1/3], right everywhere
    assert pd["test_error"].sel(h=8, alpha_tilde=10.0).item() == pytest.approx(1 / 3)
    assert pd["ensemble_test_error"].sel(h=8, alpha_tilde=10.0).item() == 0.0
    assert pd["jammed_fraction"].sel(h=2).values.tolist() == pytest.approx([2 / 3, 2 / 3])
    assert pd["jammed_fraction"].sel(h=8).values.tolist() == [0.0, 0.0]
    # the failed run is left out of the averages
    assert pd["n_seeds"].sel(h=8, alpha_tilde=0.1).item() == 2
    assert pd["test_error"].sel(h=8, alpha_tilde=0.1).item() == 0.0


def test_log_edges():
    np.testing.assert_allclose(log_edges([1, 100, 10]), [10 ** -0.5, 10 ** 0.5, 10 ** 1.5, 10 ** 2.5])
    np.testing.assert_allclose(log_edges([4]), [4 / np.sqrt(2), 4 * np.sqrt(2)])


@pytest.mark.parametrize("suffix", ["html", "png"])
def test_files(tmp_path, suffix):
    path = tmp_path / f"pd.{suffix}"
    save_phase_diagram(synthetic_cube(), path)
    data = path.read_bytes()
    if suffix == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    else:
        text = data.decode()
        assert "Bokeh" in text and "ensemble test error" in text and "jammed" in text
        assert "cdn.bokeh.org" not in text, "the HTML must be self-contained"


def test_unknown_P():
    from dlphase import DlphaseError

    with pytest.raises(DlphaseError, match="P = 7 is not in the cube; it holds P = 50"):
        phase_diagram(synthetic_cube(), P=7)


def ntk_cube():
    """ratio = c(h) / alpha_tilde for the geometric mean of seeds at 2x and x/2, c = 0.3 (h=2), 3 (h=8)."""
    cube = synthetic_cube()
    c = xr.DataArray([0.3, 3.0], coords={"h": [2, 8]})
    a = xr.DataArray([0.01, 1.0, 100.0], coords={"alpha_tilde": [0.01, 1.0, 100.0]})
    spread = xr.DataArray([2.0, 0.5, 1.0], coords={"seed": [0, 1, 2]})
    ratio = (c / a * spread).expand_dims(P=[50]).transpose("h", "alpha_tilde", "P", "seed")
    cube = cube.reindex(alpha_tilde=[0.01, 1.0, 100.0], fill_value=0.0)
    cube["status"] = cube["status"].where(cube["status"] != 0, "converged")
    cube["ntk_change"] = ratio
    return cube


def test_crossover_line():
    pd = phase_diagram(ntk_cube())
    np.testing.assert_allclose(pd["ntk_change"].sel(h=8).values, [300, 3, 0.03], rtol=1e-12)
    h, a = crossover(pd, 1.0)
    np.testing.assert_allclose(h, [2, 8])
    np.testing.assert_allclose(a, [0.3, 3.0], rtol=1e-12)  # exact: log-linear in a power law
    h, a = crossover(pd, 10.0)
    np.testing.assert_allclose(a, [0.03, 0.3], rtol=1e-12)
    h, a = crossover(pd, 1e4)
    assert len(h) == 0  # no crossing inside the grid


def test_crossover_in_the_plot(tmp_path):
    path = tmp_path / "pd.html"
    save_phase_diagram(ntk_cube(), path)
    assert "NTK change = 1" in path.read_text()


def test_log_ticks_are_powers_of_ten_or_two():
    from dlphase.analyses.phase_diagram import log_edges, log_ticks

    assert [t for t, _ in log_ticks(log_edges([1e-2, 1.0, 1e3]))] == [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4]
    assert [label for _, label in log_ticks(log_edges([4, 8, 16, 32, 64]))] == ["4", "8", "16", "32", "64"]
