"""The jamming_plane and divergence analyses on cubes with a planted transition: N*(P) = A P^b, N_Delta / N
jumping to a known value, N_minus = C_0 N, |f| = B (N / N* - 1)^-gamma, and spectra whose flat directions are
lifted to a known lambda = c sqrt(U); then both on a real jamming search over several P."""

import json

import numpy as np
import pytest
import xarray as xr

from dlphase.analyses.divergence import Divergence, zero_mode_scale
from dlphase.analyses.jamming_plane import JammingPlane
from dlphase.analyses.dispatch import analyze
from tests.conftest import run_cli, run_cli_here, write
from tests.test_cli_errors import assert_clean_error
from tests.test_jamming import JAM_SPEC

GRID = ("h", "alpha_tilde", "P", "seed")


def n_of(h):
    return h ** 2 + 10 * h


def plane_cube(Ps=(100, 200, 400, 800, 1600), b=0.6, A=30.0, jump=0.2, c0=0.15, seeds=3, widths=range(1, 121)):
    """Every seed jams exactly where N < N*(P) = A P^b, with N_Delta = jump N; N_minus = c0 N everywhere, except one
    seed at P = 100 whose N_Delta is below N_minus (an unstable end point); train loss = (N* - N) / N* when jammed;
    H's spectrum has a descent direction at P = 200, seed 1 only."""
    h = np.asarray(list(widths))
    n = n_of(h).astype(float)
    n_star = A * np.asarray(Ps, dtype=float) ** b
    shape = (len(h), 1, len(Ps), seeds)
    jammed = n[:, None, None, None] < n_star[None, None, :, None] + np.zeros(shape)
    n_delta = np.where(jammed, np.round(jump * n[:, None, None, None]), 0.0)
    loss = np.where(jammed, (n_star[None, None, :, None] - n[:, None, None, None]) / n_star[None, None, :, None], 0.0)
    n_minus = np.round(c0 * n[:, None, None, None]) + np.zeros(shape)
    hess_n_delta = n_delta.copy()
    first = int(np.flatnonzero(n < n_star[0])[-1])
    hess_n_delta[first, 0, 0, 0] = n_minus[first, 0, 0, 0] - 1
    eig = np.zeros(shape + (3,)) + [-1e-8, 1.0, 2.0]    # a minimum up to rounding ...
    eig[:, 0, 1, 1, 0] = -0.5                            # ... but at P = 200 seed 1 a descent direction
    return xr.Dataset({"n_delta": (GRID, n_delta), "n_params": (("h",), n), "train_loss": (GRID, loss),
                       "hess_n_minus": (GRID, n_minus), "hess_n_delta": (GRID, hess_n_delta),
                       "hess_eig_h": (GRID + ("hess_eig",), eig),
                       "status": (GRID, np.where(jammed, "budget", "converged").astype(object))},
                      coords={"h": h, "alpha_tilde": [1.0], "P": list(Ps), "seed": np.arange(seeds)}), n_star


def test_jamming_plane_recovers_the_planted_line_jump_and_bound():
    cube, n_star = plane_cube()
    r = JammingPlane().compute(cube).sel(alpha_tilde=1.0)
    assert (r["n_star_low"].values < n_star).all() and (n_star <= r["n_star_high"].values).all()
    assert (r["h_next"] - r["h_star"] == 1).all()
    assert float(r["exponent"]) == pytest.approx(0.6, abs=0.02)
    assert float(r["high"]) < 0.7  # far from linear
    assert float(r["exponent_low"]) == pytest.approx(0.6, abs=0.03)
    assert float(r["exponent_high"]) == pytest.approx(0.6, abs=0.03)
    np.testing.assert_allclose(r["jump"], 0.2, atol=0.01)
    np.testing.assert_allclose(r["c0"], 0.15, atol=0.01)
    np.testing.assert_allclose(r["bound"], cube["P"] / float(r["c0_pooled"]))
    assert (r["bound_ratio"] <= 1).all()
    # a C_0 too large for this line: the bound fails where N* is largest against P
    tight = JammingPlane().compute(plane_cube(c0=0.4)[0]).sel(alpha_tilde=1.0)
    assert bool(tight["bound_ratio"].sel(P=100) > 1) and bool(tight["bound_ratio"].sel(P=1600) <= 1)
    assert int(r["stable"].sum()) == 5 * 3 - 1 and float(r["stable"].sel(P=100, seed=0)) == 0
    assert int(r["descent_directions"].sum()) == 1 and int(r["descent_directions"].sel(P=200, seed=1)) == 1
    lines = JammingPlane().summary(JammingPlane().compute(cube))
    assert "reached a minimum of U (no eigenvalue of H < 0): 14 of 15" in lines[3]
    assert "sub-linear" in lines[0] and "holds at 5 of 5 P" in lines[2] and "at 14 of 15 runs" in lines[2]


def test_jamming_plane_calls_a_linear_law_linear():
    """Random labels: N* = P / 2; widths fine enough that the bracket is tight."""
    cube, _ = plane_cube(b=1.0, A=0.5, widths=range(1, 40))
    r = JammingPlane().compute(cube).sel(alpha_tilde=1.0)
    assert float(r["low"]) <= 1.0 <= float(r["high"])
    line = JammingPlane().summary(JammingPlane().compute(cube))[0]
    assert "P: linear (through" in line


def divergence_cube(gamma=1.5, B=0.2, widths=(4, 6, 8, 10, 12, 14, 16, 20, 24, 32, 48, 64), jams=(12, 12, 12, 12),
                    u0=3.0, noise=0.03, seed=0, coherent=False):
    """Seed s jams at the widths up to jams[s]; its N*_s is N at the geometric mean of that width and the next; where
    it converges |f| = B (N / N*_s - 1)^-gamma (times noise). Jammed runs carry a dense spectrum: N_Delta
    eigenvalues of H0 order 1..10, and N - N_Delta flat directions lifted to 0.7 sqrt(U) (spread by a factor 2
    around it), with U = u0 (1 - N / N*_s)^2; at h = 10 seed 0 one of them is negative (not a minimum). Hp's
    spectrum spans +-0.4 sqrt(U) times a factor exp(0.1 z) of the run (z standard normal); +-0.4 sqrt(U N_Delta)
    where ``coherent``."""
    rng = np.random.default_rng(seed)
    h = np.asarray(widths)
    n = n_of(h).astype(float)
    seeds = len(jams)
    j = [list(h).index(w) for w in jams]
    n_star = np.array([np.sqrt(n[k] * n[k + 1]) for k in j])
    shape = (len(h), 1, 1, seeds)
    n_delta = np.zeros(shape)
    for s, k in enumerate(j):
        n_delta[:k + 1, 0, 0, s] = np.round(0.3 * n[:k + 1])
    ratio = n[:, None, None, None] / n_star[None, None, None, :]
    dist = np.where(ratio > 1, ratio - 1, np.nan)
    f_norm = B * dist ** -gamma * np.exp(noise * rng.standard_normal(shape))
    f_norm = np.where(n_delta > 0, 10.0, f_norm)
    u = np.where(n_delta > 0, u0 * (1 - ratio) ** 2 + 1e-3, 0.0)
    width = int(n.max())
    eig = np.full(shape + (width,), np.nan)
    hp = np.full(shape + (width,), np.nan)
    hp_factor = np.exp(0.1 * rng.standard_normal(shape))
    rank = np.zeros(shape)
    for idx in np.ndindex(*shape):
        nd = int(n_delta[idx])
        if nd == 0:
            continue
        flat = 0.7 * np.sqrt(u[idx]) * np.geomspace(0.5, 2.0, int(n[idx[0]]) - nd)
        stiff = np.geomspace(1.0, 10.0, nd) + 5.0
        eig[idx][: int(n[idx[0]])] = np.sort(np.concatenate([flat, stiff]))
        hp[idx][: int(n[idx[0]])] = (0.4 * np.sqrt(u[idx] * (nd if coherent else 1)) * hp_factor[idx]
                                     * np.linspace(-1, 1, int(n[idx[0]])))
        rank[idx] = nd
    eig[list(h).index(10), 0, 0, 0, 0] *= -1  # one run short of its minimum: a descent direction
    status = np.where(n_delta > 0, "budget", "converged").astype(object)
    return xr.Dataset({"n_delta": (GRID, n_delta), "n_params": (("h",), n), "f_norm": (GRID, f_norm),
                       "hess_eig_h": (GRID + ("hess_eig",), eig), "hess_eig_hp": (GRID + ("hess_eig",), hp),
                       "hess_rank_h0": (GRID, rank),
                       "hess_energy": (GRID, u), "status": (GRID, status)},
                      coords={"h": h, "alpha_tilde": [1.0], "P": [500], "seed": np.arange(seeds)}), n_star


def test_zero_mode_scale_is_the_median_of_the_flat_directions():
    eig = np.array([-1e-3, 2e-3, 3e-3, 50.0, 80.0, np.nan])
    assert zero_mode_scale(eig, rank_h0=2) == pytest.approx(2e-3)
    assert np.isnan(zero_mode_scale(eig, rank_h0=5))
    # eigenvalues at 0 (within zero_tol of the largest) are directions Hp leaves flat too: they do not count
    flat = np.array([1e-17, -2e-16, 1e-3, 3e-3, 50.0, 80.0])
    assert zero_mode_scale(flat, rank_h0=2) == pytest.approx(2e-3)


def test_divergence_recovers_gamma_and_the_sqrt_u_scale():
    """Every seed with the same N*: the mean over seeds follows the planted law."""
    cube, n_star = divergence_cube()
    result = Divergence(max_distance=100, per_seed=False).compute(cube)
    r = result.sel(alpha_tilde=1.0, P=500)
    assert int(r["h_jammed"]) == 12 and int(r["h_converged"]) == 14
    assert float(r["n_star"]) == pytest.approx(n_star[0])
    assert float(r["gamma"]) == pytest.approx(1.5, abs=0.05)
    assert float(r["gamma_low"]) < 1.5 < float(r["gamma_high"]) and int(r["n"]) == 7
    # N* at the widest jammed width compresses log(N / N* - 1) and steepens the law: the summary gives both
    assert float(r["gamma_at_jammed"]) > float(r["gamma_at_mid"]) + 0.1
    assert float(r["gamma_at_mid"]) == float(r["gamma"])
    # the jammed runs: every seed at h = 4 to 12; the one with a descent direction is left out unless asked for
    assert int(r["lambda_n"]) == 5 * 4 - 1 and int(r["descent_directions"].sum()) == 1
    every = Divergence(max_distance=100, minima_only=False).compute(cube).sel(alpha_tilde=1.0, P=500)
    assert int(every["lambda_n"]) == 5 * 4
    assert float(r["lambda_exponent"]) == pytest.approx(0.5, abs=0.02)
    np.testing.assert_allclose(r["lambda_scale"].sel(h=8), 0.7 * np.sqrt(r["energy"].sel(h=8)), rtol=1e-9)
    # max_distance keeps the widths near N*
    near = Divergence(max_distance=1.0, per_seed=False).compute(cube).sel(alpha_tilde=1.0, P=500)
    assert int(near["n"]) == int((r["distance"] <= 1.0).sum()) < 7
    lines = Divergence(max_distance=100, per_seed=False).summary(result)
    assert "gamma = 1.4" in lines[0] and "over 7 points; N* in (264, 336]" in lines[0]
    assert "lambda ~ U^0.50" in lines[1]
    assert "with flat directions that Hp lifts: 20; of these at a minimum of U (no eigenvalue of H < 0): 19" \
        in lines[2]
    # ||Hp|| over every jammed run, at a minimum or not: the planted 0.4 sqrt(U), scattered by 10%
    assert int(r["hp_n"]) == 5 * 4
    planted = 0.4 * np.sqrt(cube["hess_energy"])
    ratio = (r["hp_norm"] / planted.sel(alpha_tilde=1.0, P=500)).values
    assert np.isnan(ratio[5:]).all() and bool((np.abs(np.log(ratio[:5])) < 0.5).all())   # jammed only: h = 4..12
    assert float(r["hp_low"]) < 0.5 < float(r["hp_high"]) and float(r["hp_exponent"]) == pytest.approx(0.5, abs=0.05)
    assert f"||Hp|| ~ U^{float(r['hp_exponent']):.3f}" in lines[3] and "over 20 runs" in lines[3]
    # with N_Delta beside U the planted scale is sqrt(U) at any N_Delta, and coherent terms are told apart
    assert float(r["hp_n_delta_exponent_low"]) < 0 < float(r["hp_n_delta_exponent_high"]) < 0.5
    assert "N_Delta^c: c = " in lines[4]
    coherent = Divergence(max_distance=100, per_seed=False).compute(divergence_cube(coherent=True)[0])
    c = coherent.sel(alpha_tilde=1.0, P=500)
    assert 0 < float(c["hp_n_delta_exponent_low"]) < 0.5 < float(c["hp_n_delta_exponent_high"])


def test_divergence_per_seed_finds_each_seeds_transition():
    """Seeds that jam at different widths: each seed's |f| diverges at its own N*, and one exponent fits them all;
    the mean over seeds (with N* from every seed together) would mix four laws."""
    jams = (12, 10, 10, 14)
    cube, n_star = divergence_cube(jams=jams)
    r = Divergence(max_distance=100).compute(cube).sel(alpha_tilde=1.0, P=500)
    assert r["h_jammed"].values.tolist() == list(jams)
    np.testing.assert_allclose(r["n_star"], n_star)
    assert float(r["gamma"]) == pytest.approx(1.5, abs=0.03)
    assert float(r["gamma_low"]) < 1.5 < float(r["gamma_high"]) and int(r["n"]) == 7 + 8 + 8 + 6
    np.testing.assert_allclose(r["prefactor"], 0.2, rtol=0.05)
    lines = Divergence(max_distance=100).summary(Divergence(max_distance=100).compute(cube))
    assert "over 29 points of 4 seeds, each with its own N* in (264, 336], (200, 264], (200, 264], (336, 416]" \
        in lines[0]


def test_divergence_says_why_there_is_no_fit():
    cube, _ = divergence_cube()
    never = cube.assign(n_delta=cube["n_delta"] * 0, status=cube["status"].where(False, "converged"))
    lines = Divergence().summary(Divergence().compute(never))
    assert "no seed jammed" in lines[0]
    assert "fewer than 4 widths" in Divergence().applies(cube.isel(h=[0, 1, 2]))
    with pytest.raises(ValueError, match="max_distance"):
        Divergence(max_distance=0)


def test_divergence_option_error_on_the_command_line(tmp_path):
    path = tmp_path / "cube.nc"
    divergence_cube()[0].to_netcdf(path)
    res = run_cli_here("analyze", "divergence", path, "--max-distance", "0", "-o", tmp_path / "r.nc")
    assert_clean_error(res, "analysis.max_distance = 0.0 must be finite and > 0")
    assert not (tmp_path / "r.nc").exists()


@pytest.mark.parametrize("name", ["jamming_plane", "divergence"])
def test_the_commands_json_and_plots(tmp_path, name):
    path = tmp_path / "cube.nc"
    (plane_cube()[0] if name == "jamming_plane" else divergence_cube()[0]).to_netcdf(path)
    res = run_cli_here("analyze", name, path, "--json")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert ("gamma = " if name == "divergence" else "N* ~ P^") in payload["summary"][0]
    res = run_cli_here("plot", name, path, "-o", tmp_path / "p.png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p.png").stat().st_size > 10000


MULTI_P = JAM_SPEC.replace("P = [24]", "P = [12, 24, 48]").replace("h = [2, 16]", "h = [2, 8]").replace(
    'names = ["errors"]', 'names = ["errors", "hessian_spectrum"]')


def test_jamming_plane_on_a_search_over_several_P(tmp_path):
    """A real search at three P: the analysis reads the line's own h*, its N and N_Delta / N at h* agree with the
    runs stored in the file, C_0 is N_minus / N of the spectra at h*, and the command line gives the same."""
    spec = write(tmp_path / "jam.toml", MULTI_P)
    out = tmp_path / "line.nc"
    res = run_cli("jamming", spec, "-o", out, "-q")
    assert res.returncode == 0, res.stderr
    line = xr.open_dataset(out).load()
    _, result = analyze(line, "jamming_plane")
    for P in (12, 24, 48):
        pt, r = line.sel(alpha_tilde=1e3, P=P), result.sel(alpha_tilde=1e3, P=P)
        h_star = int(pt["h_star"])
        assert int(r["h_star"]) == h_star and int(r["h_next"]) == int(pt["h_next"])
        n = float(pt["n_params"].sel(h=h_star).max())
        assert float(r["n_star_low"]) == n == float(pt["n_params_star"])
        np.testing.assert_allclose(r["n_delta_over_n_star"], pt["n_delta"].sel(h=h_star) / n)
        np.testing.assert_allclose(r["c0_per_seed"], pt["hess_n_minus"] / n)
    assert int(result["h_star"].sel(alpha_tilde=1e3, P=48)) >= int(result["h_star"].sel(alpha_tilde=1e3, P=12))
    res = run_cli("analyze", "jamming_plane", out, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert any("N* ~ P^" in line for line in data["summary"])
