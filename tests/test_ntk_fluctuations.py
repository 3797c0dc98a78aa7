"""The ntk_fluctuations analysis: the estimator by hand, and planted N^-1/4 laws with jammed runs left out."""

import numpy as np
import pytest
import xarray as xr

from dlphase.analyses.ntk_fluctuations import NTKFluctuations, relative_fluctuation
from dlphase.analyses.dispatch import analyze
from tests.conftest import run_cli_here

GRID = ("h", "alpha_tilde", "P", "seed")


def test_relative_fluctuation_by_hand():
    base = np.diag([3.0, 4.0])                      # |<Theta>|_F = 5
    d = np.array([[0.0, 0.5], [0.5, 0.0]])          # |D|_F = 1/sqrt(2)
    value, members = relative_fluctuation(np.stack([base + d, base - d, np.full((2, 2), np.nan)]))
    # two members at distance |D| from their mean, scaled by sqrt(2 / 1)
    assert members == 2 and value == pytest.approx(np.sqrt(2) * np.sqrt(0.5) / 5)
    assert np.isnan(relative_fluctuation(base[None])[0])


def ntk_cube(hs=(8, 16, 32, 64, 128), seeds=6, n=12, b_init=-0.25, b_end=-0.1, seed=0):
    """Theta_s = Theta_bar + c N^b Z_s / |Z_s| (Z symmetric Gaussian, the same at every alpha_tilde at init),
    N = 10 h + h^2; the end Grams of the largest alpha_tilde at h = 8 are off the law and jammed (N_Delta > 0)."""
    rng = np.random.default_rng(seed)
    h = np.asarray(hs)
    N = 10.0 * h + h ** 2
    a = rng.standard_normal((n, n))
    bar = a @ a.T / n + np.eye(n)
    shape = (len(h), 2, 1, seeds)
    grams = {}
    for moment, b, c in (("init", b_init, 0.5), ("end", b_end, 0.2)):
        # Theta_0 of a seed is the same at every alpha_tilde
        z = rng.standard_normal(shape + (n, n)) if moment == "end" else np.broadcast_to(
            rng.standard_normal((len(h), 1, 1, seeds, n, n)), shape + (n, n)).copy()
        z = z + np.swapaxes(z, -1, -2)
        z /= np.linalg.norm(z, axis=(-2, -1), keepdims=True)
        grams[moment] = bar + c * np.linalg.norm(bar) * N[:, None, None, None, None, None] ** b * z
    n_delta = np.zeros(shape)
    n_delta[0, 1, 0, :] = 3
    grams["end"][0, 1] *= 50
    pair = GRID + ("kernel_i", "kernel_j")
    return xr.Dataset({"ntk_gram_init": (pair, grams["init"]), "ntk_gram_end": (pair, grams["end"]),
                       "n_params": (("h",), N), "n_delta": (GRID, n_delta),
                       "status": (GRID, np.where(n_delta > 0, "budget", "converged").astype(object))},
                      coords={"h": list(hs), "alpha_tilde": [0.01, 1000.0], "P": [200], "seed": np.arange(seeds)})


def test_the_planted_laws_are_recovered_and_jammed_runs_left_out():
    result = NTKFluctuations().compute(ntk_cube())
    for moment, b in (("init", -0.25), ("end", -0.1)):
        assert float(result[f"{moment}_pooled_low"]) <= b <= float(result[f"{moment}_pooled_high"])
        assert float(result[f"{moment}_pooled_exponent"]) == pytest.approx(b, abs=0.05)
        for a in (0.01, 1000.0) if moment == "end" else (0.01,):
            r = result.sel(alpha_tilde=a, P=200)
            assert float(r[f"{moment}_low"]) <= b <= float(r[f"{moment}_high"])
    # Theta_0 is one curve, taken at the first alpha_tilde
    assert int(result["init_pooled_curves"]) == 1 and int(result["end_pooled_curves"]) == 2
    assert np.isnan(result["fluctuation_init"].sel(alpha_tilde=1000.0)).all()
    assert np.isnan(float(result["fluctuation_end"].sel(h=8, alpha_tilde=1000.0, P=200)))
    assert int(result["members_end"].sel(h=8, alpha_tilde=1000.0, P=200)) == 0
    assert int(result["members_init"].sel(h=8, alpha_tilde=0.01, P=200)) == 6
    assert int(result["end_n"].sel(alpha_tilde=1000.0, P=200)) == 4
    lines = NTKFluctuations().summary(result)
    assert lines[0].startswith("Theta_0: |Theta - <Theta>| / |<Theta>| ~ N^-0.2") and "(the claim: -1/4)" in lines[0]
    assert lines[1].startswith("  alpha_tilde = 0.01, P = 200: -0.2")


def test_the_ntk_fluctuations_plot_and_errors(tmp_path):
    path = tmp_path / "c.nc"
    ntk_cube().to_netcdf(path)
    res = run_cli_here("plot", "ntk-fluctuations", path, "-o", tmp_path / "p.png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p.png").stat().st_size > 10000
    from dlphase.errors import DlphaseError

    with pytest.raises(DlphaseError, match="need at least 2 of them"):
        analyze(ntk_cube(seeds=1), "ntk_fluctuations")
    assert NTKFluctuations().applies(ntk_cube().isel(h=[0, 1])) == "the cube has fewer than 3 widths"
