"""The jamming-line search: the search logic against known thresholds, and the command on real training."""

import math

import numpy as np
import pytest
import xarray as xr

import dlphase
from dlphase.plugins.workflows import jamming as jm
from tests.conftest import run_cli, write
from tests.test_cli_errors import assert_clean_error


def search(thresholds, start, h_max, resolution=0.0):
    """Run the search against seeds that jam exactly below their threshold width (h < t_s: N_Delta > 0)."""
    found, wanted, rounds = {}, list(start), 0
    while wanted:
        rounds += 1
        for h in wanted:
            found[h] = jm.classify([1.0 if h < t else 0.0 for t in thresholds], ["budget"] * len(thresholds))
        wanted = jm.next_widths(found, h_max, resolution)
        assert rounds < 60
    return jm.line_point(found, h_max), found, rounds


@pytest.mark.parametrize("seed", range(6))
def test_the_search_finds_both_edges_of_the_transition(seed):
    """h* is the last width where every seed jams (min threshold - 1), h_next the one above it, h_unjammed the
    first width where every seed converges (max threshold), whatever the starting widths."""
    rng = np.random.default_rng(seed)
    thresholds = rng.integers(3, 400, size=4)
    start = sorted(set(rng.integers(1, 200, size=3).tolist()))
    result, found, rounds = search(thresholds, start, h_max=2000)
    assert result.outcome == "found"
    assert result.h_star == min(thresholds) - 1 and result.h_next == min(thresholds)
    assert result.h_unjammed == max(thresholds)
    assert len(found) < len(start) + 4 * math.log2(2000)  # a bisection, not a scan of every width


def test_the_search_at_a_relative_resolution_and_its_limits():
    result, found, _ = search([300, 300], [10], h_max=5000, resolution=0.1)
    assert result.h_star < 300 <= result.h_next and result.h_next - result.h_star <= 0.1 * result.h_star
    assert result.h_unjammed - max(h for h in found if h < result.h_unjammed) <= 0.1 * 300
    above, _, _ = search([900], [10, 100], h_max=512)
    assert above.h_star == 512 and math.isnan(above.h_next) and "raise --h-max" in above.outcome
    below, found, _ = search([1, 1], [16], h_max=64)
    assert math.isnan(below.h_star) and 1 in found and "no width jammed" in below.outcome
    mixed_top, _, _ = search([5, 10 ** 6], [2, 8], h_max=64)
    assert mixed_top.h_star == 4 and math.isnan(mixed_top.h_unjammed) and "converged" in mixed_top.outcome
    assert jm.classify([3.0, float("nan")], ["budget", "failed"]) == jm.FAILED
    assert jm.next_widths({8: jm.FAILED, 16: jm.CONVERGED}, 64) == []
    assert "failed at h = 8" in jm.line_point({8: jm.FAILED, 16: jm.CONVERGED}, 64).outcome


JAM_SPEC = """
[dataset]
name = "random"
d = 5
n_test = 50

[architecture]
name = "fc"
depth = 1
activation = "swish"

[dynamics]
name = "gradient_flow"
loss = { name = "soft_hinge", beta = 20 }
max_steps = 1500

[observables]
names = ["errors"]

[grid]
h = [2, 16]
alpha_tilde = [1e3]
P = [24]
seed = [0, 1]
"""


def test_jamming_command_line_spectrum_resume_and_plots(tmp_path):
    spec = write(tmp_path / "jam.toml", JAM_SPEC)
    out = tmp_path / "line.nc"
    res = run_cli("jamming", spec, "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    assert "h* = " in res.stdout
    line = xr.open_dataset(out).load()
    pt = line.sel(alpha_tilde=1e3, P=24)
    h_star, h_next = int(pt["h_star"]), int(pt["h_next"])
    assert h_next == h_star + 1
    n_delta = pt["n_delta"]
    assert bool((n_delta.sel(h=h_star) > 0).all()) and not bool((n_delta.sel(h=h_next) > 0).all())
    jammed_everywhere = (n_delta > 0).all("seed") & n_delta.notnull().all("seed")
    assert int(line["h"].where(jammed_everywhere, drop=True).max()) == h_star  # no wider width is all-jammed
    # N_Delta / N at h* and the spectrum there: H0 = sum grad Delta grad Delta^T has rank <= N_Delta
    n_params = float(pt["n_params"].sel(h=h_star)) if "seed" not in pt["n_params"].dims else \
        float(pt["n_params"].sel(h=h_star, seed=0))
    assert float(pt["n_params_star"]) == n_params
    np.testing.assert_allclose(pt["n_delta_over_n_star"].values, n_delta.sel(h=h_star).values / n_params)
    np.testing.assert_array_equal(pt["hess_n_delta"].values, n_delta.sel(h=h_star).values)
    assert bool((pt["hess_rank_h0"] <= pt["hess_n_delta"]).all()) and bool((pt["hess_rank_h0"] > 0).all())
    assert int(pt["hess_eig_h0"].notnull().sum("hess_eig")[0]) == n_params
    assert line.attrs["budget_max_steps"] == 1500
    # a second call replays the saved runs: nothing trains again and the line is the same
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "line.runs").glob("*.nc")}
    lost = sorted(stamps)[0]
    (tmp_path / "line.runs" / lost).unlink()  # one lost run is trained again
    res = run_cli("jamming", spec, "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    again = xr.open_dataset(out).load()
    for name in ("h_star", "h_next", "h_unjammed", "n_delta_over_n_star", "hess_eig_h0"):
        xr.testing.assert_identical(again[name], line[name])
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "line.runs").glob("*.nc")}
    assert after.keys() == stamps.keys() and after[lost] != stamps[lost]
    assert all(after[k] == v for k, v in stamps.items() if k != lost)
    # the phase diagram draws the line; the Hessian plot shows the spectrum at h*
    res = run_cli("plot", "phase-diagram", out, "-o", tmp_path / "pd.html")
    assert res.returncode == 0, res.stderr
    assert "jamming line h*" in (tmp_path / "pd.html").read_text()
    res = run_cli("plot", "hessian-spectrum", out, "-o", tmp_path / "h0.html", "--seed", "0")
    assert res.returncode == 0, res.stderr
    assert f"h = {h_star}" in (tmp_path / "h0.html").read_text()


@pytest.mark.parametrize("case", ["no_budget", "no_errors", "h_max_below_grid", "bad_resolution"])
def test_jamming_errors(tmp_path, case):
    text, args, fragment = {
        "no_budget": (JAM_SPEC.replace("max_steps = 1500\n", ""), [], "set one of dynamics.max_steps"),
        "no_errors": (JAM_SPEC.replace('names = ["errors"]', 'names = ["trajectory"]'), [],
                      "add 'errors' to observables.names"),
        "h_max_below_grid": (JAM_SPEC, ["--h-max", "8"], "h_max = 8 is below the grid's largest width 16"),
        "bad_resolution": (JAM_SPEC, ["--resolution", "-1"], "--resolution"),
    }[case]
    spec = write(tmp_path / "jam.toml", text)
    res = run_cli("jamming", spec, "-o", tmp_path / "line.nc", *args)
    assert_clean_error(res, fragment)
    assert list(tmp_path.iterdir()) == [spec]


def test_phase_diagram_refuses_a_file_without_a_line(tmp_path):
    grid = {"h": [8, 16], "alpha_tilde": [1.0, 10.0], "P": [10], "seed": [0]}
    cube = xr.Dataset({name: (tuple(grid), np.zeros((2, 2, 1, 1))) for name in ("test_error", "n_delta")},
                      coords=grid)
    cube.to_netcdf(tmp_path / "c.nc")
    xr.Dataset(coords={"h": [1]}).to_netcdf(tmp_path / "no_line.nc")
    res = run_cli("plot", "phase-diagram", tmp_path / "c.nc", "-o", tmp_path / "p.html",
                  "--jamming", tmp_path / "no_line.nc")
    assert_clean_error(res, "has no jamming line")
    assert not (tmp_path / "p.html").exists()


@pytest.mark.parametrize("h, offset, satisfied", [(32, 1e-3, True), (32, 0.0, False), (2, 1e-3, False)])
def test_the_quadratic_hinge_decides_sat_in_finite_time(tmp_path, h, offset, satisfied):
    """Far above jamming (N = 192 for P = 40) the offset quadratic hinge satisfies every margin within the
    budget; with offset 0 the margins only creep up to 1 and the run ends on the budget; far below jamming
    (N = 12) no offset helps: N_Delta stays > 0."""
    spec = dlphase.load_spec(write(tmp_path / "s.toml", JAM_SPEC), [
        f"dynamics.loss={{name = 'quadratic_hinge', offset = {offset}}}", "dynamics.max_steps=4000"])
    ds = dlphase.Run(spec, h=h, alpha_tilde=1.0, P=40, seed=0).train()
    assert (ds["status"].item() == "converged") == satisfied, ds["message"].item()
    assert (int(ds["n_delta"]) == 0) == satisfied
