"""The crossover analysis on cubes with a planted crossover: NTK change = (alpha_tilde / a*(h))^-1 with noise per
seed, a* flat in h away from jamming and bent up near it, jammed and budget-stopped runs that must not count."""

import json

import numpy as np
import pytest
import xarray as xr

from dlphase.analyses.crossover import Crossover, crossing
from dlphase.analyses.dispatch import analyze
from tests.conftest import run_cli, run_cli_here

GRID = ("h", "alpha_tilde", "P", "seed")


def crossover_cube(hs=(8, 16, 32, 64, 128), star=0.3, bends=(5.0, 3.0), seeds=4, noise=0.1, seed=0):
    """a*(h) = star, times ``bends`` at the smallest widths; h = 8 jams at the largest alpha_tilde (so widths
    <= 16 are near jamming); one budget-stopped run with an absurd ratio at (h = 64, the smallest alpha_tilde); at
    (h = 128, the smallest alpha_tilde) only 2 seeds reach N_Delta = 0."""
    rng = np.random.default_rng(seed)
    alphas = np.geomspace(1e-3, 1e3, 13)
    a_star = np.full(len(hs), star)
    a_star[:len(bends)] *= bends
    shape = (len(hs), len(alphas), 1, seeds)
    ratio = (alphas[None, :, None, None] / a_star[:, None, None, None]) ** -1.0 * np.exp(
        noise * rng.standard_normal(shape))
    n_delta = np.zeros(shape)
    n_delta[0, -1, 0, :] = 4
    n_delta[3, 0, 0, 1] = 3
    ratio[3, 0, 0, 1] = 1e6
    n_delta[4, 0, 0, :2] = 2
    return xr.Dataset({"ntk_change": (GRID, ratio), "n_delta": (GRID, n_delta),
                       "status": (GRID, np.where(n_delta > 0, "budget", "converged").astype(object))},
                      coords={"h": list(hs), "alpha_tilde": alphas, "P": [500], "seed": np.arange(seeds)})


def test_crossing_interpolates_on_log_axes():
    alphas = np.array([0.1, 1.0, 10.0])
    assert crossing(alphas, np.log([4.0, 2.0, 0.5])) == pytest.approx(10 ** 0.5)
    assert np.isnan(crossing(alphas, np.log([4.0, 2.0, 1.5])))
    assert crossing(alphas, np.array([np.nan, 1.0, -1.0])) == pytest.approx(10 ** 0.5)


def test_the_crossover_is_found_with_its_law_and_the_bend_near_jamming():
    cube = crossover_cube()
    result = Crossover(levels=(1.0, 0.1)).compute(cube)
    r = result.sel(level=1.0)
    for h in (32, 64, 128):
        assert float(r["alpha_star"].sel(h=h)) == pytest.approx(0.3, rel=0.15)
    assert float(r["low"]) <= 0.0 <= float(r["high"]) and abs(float(r["exponent"])) < 0.1 and int(r["n"]) == 3
    assert float(r["alpha_exponent"]) == pytest.approx(float(r["exponent"]) - 0.5)
    assert r["near_jamming"].values.tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(r["bend"].sel(h=[8, 16]), [5.0, 3.0], rtol=0.2)
    assert np.isnan(r["bend"].sel(h=[32, 64, 128])).all()
    # the level 0.1 line lies a decade higher
    assert float(result["alpha_star"].sel(level=0.1, h=64)) == pytest.approx(3.0, rel=0.15)
    # the budget-stopped run and the point with too few converged seeds do not count
    assert int(result["n_converged"].sel(h=64).isel(alpha_tilde=0)) == 3
    assert float(result["ntk_change"].sel(h=64).isel(alpha_tilde=0)) < 1e3
    assert int(result["n_converged"].sel(h=128).isel(alpha_tilde=0)) == 2
    assert np.isnan(result["ntk_change"].sel(h=128).isel(alpha_tilde=0))
    lines = Crossover(levels=(1.0, 0.1)).summary(result)
    assert lines[0].startswith("P = 500: runs that reached N_Delta = 0 only, at least 3 per point (63 of 65")
    assert lines[1].startswith("NTK change = 1: alpha_tilde* at h = 8: 1.")
    assert lines[2].startswith("  alpha_tilde* ~ h^") and "over 3 widths (the paper: 0" in lines[2]
    assert lines[3].startswith("  near jamming (h <= 2 h_J, h_J = 8): h = 8: ")


def test_the_intervals_cover_the_planted_crossover_95_times_in_100():
    covered = []
    for seed in range(200):
        r = Crossover(levels=(1.0,)).compute(crossover_cube(seed=seed)).sel(level=1.0, h=64)
        covered.append(float(r["alpha_star_low"]) <= 0.3 <= float(r["alpha_star_high"]))
    assert 0.9 <= np.mean(covered) <= 0.99


def test_a_law_in_h_is_recovered():
    """a*(h) = 0.3 (h / 32)^0.5, no jamming: the exponent comes out near 1/2 with an interval around it."""
    cube = crossover_cube(bends=())
    cube["ntk_change"] = cube["ntk_change"] * np.sqrt(cube["h"] / 32.0)
    cube["n_delta"][:] = 0
    r = Crossover().compute(cube).sel(level=1.0)
    assert float(r["low"]) <= 0.5 <= float(r["high"]) and float(r["exponent"]) == pytest.approx(0.5, abs=0.1)
    assert not r["near_jamming"].values.any() and int(r["n"]) == 5


def test_the_crossover_command_json_and_plot(tmp_path):
    path = tmp_path / "cube.nc"
    crossover_cube().to_netcdf(path)
    res = run_cli("analyze", "crossover", path, "--json", "--levels", "1", "--levels", "0.1")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["summary"][0].startswith("P = 500: runs that reached N_Delta = 0 only")
    assert any(line.startswith("NTK change = 0.1: alpha_tilde* at h = 8") for line in payload["summary"])
    res = run_cli_here("plot", "crossover", path, "-o", tmp_path / "c.png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "c.png").stat().st_size > 10000
    with pytest.raises(ValueError, match="levels must be finite and > 0"):
        Crossover(levels=(0.0,))
    _, result = analyze(crossover_cube(), "crossover", min_seeds=5)
    assert np.isnan(result["alpha_star"]).all()
