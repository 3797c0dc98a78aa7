"""The analyses against hand-computed values and planted power laws; the analyze, plot and report commands."""

import json

import numpy as np
import pytest
import xarray as xr

from dlphase.analyses import DoubleDescent, Ensemble, FluctuationScaling, LearningCurve, analyze
from dlphase.analyses.stats import common_slope_fit, power_law_fit, power_law_fit2
from dlphase.errors import DlphaseError
from tests.conftest import run_cli, run_cli_here
from tests.synthetic_cubes import ensemble_error, fluctuation_cube, learning_curve_cube
from tests.test_cli_errors import assert_clean_error


def test_power_law_fits_recover_planted_exponents():
    rng = np.random.default_rng(3)
    x = np.geomspace(100, 1e5, 8)
    hits = 0
    for trial in range(40):
        y = 3.0 * x ** -0.25 * np.exp(0.05 * rng.standard_normal(len(x)))
        fit = power_law_fit(x, y, level=0.95)
        hits += fit["low"] <= -0.25 <= fit["high"]
        assert fit["n"] == 8 and abs(fit["prefactor"] - 3.0) < 1.0
    assert 34 <= hits <= 40  # a 95% interval covers the truth about 38 times in 40
    exact = power_law_fit(x, 2 * x ** -0.5)
    assert exact["exponent"] == pytest.approx(-0.5, abs=1e-12) and exact["high"] - exact["low"] < 1e-9
    assert np.isnan(power_law_fit([1, 2], [1, 2])["exponent"])  # two points: no interval
    shared = common_slope_fit([(x, 2 * x ** -0.5), (x, 7 * x ** -0.5), (x[:1], x[:1])])
    assert shared["exponent"] == pytest.approx(-0.5, abs=1e-12) and shared["curves"] == 2


def test_two_variable_power_law_fit():
    """y = A x1^b1 x2^b2: exact data give the exponents; noisy data cover them as often as the level says; collinear
    logs leave them undetermined."""
    rng = np.random.default_rng(4)
    x1, x2 = np.exp(rng.uniform(0, 4, 12)), np.exp(rng.uniform(0, 3, 12))
    exact = power_law_fit2(x1, x2, 2 * x1 ** 0.5 * x2 ** -1.0)
    assert exact["b1"] == pytest.approx(0.5, abs=1e-10) and exact["b2"] == pytest.approx(-1.0, abs=1e-10)
    hits = sum(fit["b1_low"] <= 0.5 <= fit["b1_high"] and fit["b2_low"] <= -1 <= fit["b2_high"]
               for fit in (power_law_fit2(x1, x2, x1 ** 0.5 / x2 * np.exp(0.1 * rng.standard_normal(12)))
                           for _ in range(40)))
    assert 31 <= hits <= 40  # both 95% intervals cover the truth about 36 times in 40
    assert np.isnan(power_law_fit2(x1, x1 ** 2, x1)["b1"]) and power_law_fit2(x1, x1 ** 2, x1)["n"] == 12


def test_ensemble_by_hand():
    """Three seeds, four test points: <f>, eps(<f>), <eps(f)>, the gap and the fluctuation computed by hand."""
    f = np.array([[1.0, -0.5, 0.2, -2.0], [0.4, 0.5, -0.6, -1.0], [-0.1, 0.9, 0.1, 1.0]])
    y = np.array([1.0, 1.0, -1.0, -1.0])
    eps = (f * y <= 0).mean(axis=1)  # 0.5, 0.0, 0.75
    cube = xr.Dataset({"f_test": (("h", "alpha_tilde", "P", "seed", "test"), f[None, None, None]),
                       "y_test": (("P", "test"), y[None]),
                       "test_error": (("h", "alpha_tilde", "P", "seed"), eps[None, None, None])},
                      coords={"h": [10], "alpha_tilde": [1.0], "P": [4], "seed": [0, 1, 2]})
    result = Ensemble(n_boot=500).compute(cube).squeeze()
    mean_f = f.mean(axis=0)  # [0.433, 0.3, -0.1, -0.667]: every sign right
    np.testing.assert_allclose(result["mean_f"].values, mean_f)
    assert float(result["ensemble_test_error"]) == 0.0
    assert float(result["test_error_mean"]) == pytest.approx(1.25 / 3)
    assert float(result["test_error_std"]) == pytest.approx(np.std(eps, ddof=1))
    assert float(result["gap"]) == pytest.approx(1.25 / 3)
    rms = np.sqrt(((f - mean_f) ** 2).mean(axis=1)).mean()
    assert float(result["fluctuation"]) == pytest.approx(rms)
    assert float(result["test_error_mean_low"]) <= 1.25 / 3 <= float(result["test_error_mean_high"])
    assert 0 <= float(result["test_error_mean_low"]) and float(result["test_error_mean_high"]) <= 0.75
    # identical members: every interval has zero width
    same = cube.assign(f_test=cube["f_test"].isel(seed=[0, 0, 0]).assign_coords(seed=[0, 1, 2]),
                       test_error=cube["test_error"].isel(seed=[0, 0, 0]).assign_coords(seed=[0, 1, 2]))
    flat = Ensemble(n_boot=50).compute(same).squeeze()
    assert float(flat["gap_low"]) == float(flat["gap_high"]) == float(flat["gap"]) == 0.0
    # a failed run is left out of every average
    failed = cube.assign(status=(("h", "alpha_tilde", "P", "seed"), np.array([[[["converged", "failed",
                                                                                "converged"]]]], dtype=object)))
    partial = Ensemble(n_boot=50).compute(failed).squeeze()
    assert int(partial["n_members"]) == 2 and float(partial["test_error_mean"]) == pytest.approx(0.625)
    # over another dim, and a dim f_test does not have
    across = Ensemble(over="alpha_tilde", n_boot=20).compute(cube)
    assert "seed" in across.dims and "alpha_tilde" not in across.dims
    with pytest.raises(DlphaseError, match="cannot average over 'test'"):
        Ensemble(over="test").compute(cube)


def test_fluctuation_scaling_recovers_planted_exponents_and_leaves_out_jamming():
    cube = fluctuation_cube()
    result = FluctuationScaling().compute(cube)
    for q, b in (("fluctuation", -0.25), ("gap", -0.5)):
        assert float(result[f"{q}_pooled_low"]) <= b <= float(result[f"{q}_pooled_high"]), q
        assert abs(float(result[f"{q}_pooled_exponent"]) - b) < 0.05
        for a in cube["alpha_tilde"].values:
            r = result.sel(alpha_tilde=a, P=1000)
            assert float(r[f"{q}_low"]) <= b <= float(r[f"{q}_high"]), (q, a)
            assert int(r[f"{q}_n"]) == 5
    left = result["left_out"].sel(alpha_tilde=0.01, P=1000).values.tolist()
    assert left[:3] == ["jammed"] * 3 and left[3].startswith("near jamming") and left[4:] == [""] * 5
    n = cube["n_params"].values
    assert float(result["n_jamming"].sel(alpha_tilde=0.01, P=1000)) == n[2]
    # the fluctuation by hand at one point
    f = cube["f_test"].isel(h=5, alpha_tilde=1, P=0).values
    by_hand = np.sqrt(((f - f.mean(axis=0)) ** 2).mean(axis=1)).mean()
    assert float(result["fluctuation"].isel(h=5, alpha_tilde=1, P=0)) == pytest.approx(by_hand)
    # keeping the jammed points would give a wrong exponent: the exclusion matters
    kept = FluctuationScaling(near_jamming=1.0).compute(cube.assign(n_delta=cube["n_delta"] * 0))
    assert abs(float(kept["fluctuation_pooled_exponent"]) + 0.25) > 0.1
    summary = FluctuationScaling().summary(result)
    assert summary[0].startswith("fluctuation: N^-0.2") and any("left out" in s for s in summary)


def test_double_descent_by_hand():
    cube = fluctuation_cube()
    result = DoubleDescent().compute(cube)
    assert float(result["h_jamming"].sel(alpha_tilde=100.0, P=1000)) == 10
    np.testing.assert_allclose(result["test_error_mean"].values, cube["test_error"].mean("seed").values)
    f = cube["f_test"].values
    np.testing.assert_allclose(result["ensemble_test_error"].values, ensemble_error(f, cube["y_test"].values[0]))
    assert float(result["jammed_fraction"].isel(h=2, alpha_tilde=0, P=0)) == pytest.approx(1 / 12)
    assert "f_norm_mean" in result and DoubleDescent().summary(result)[0].startswith("alpha_tilde = 0.01")


def test_learning_curve_recovers_beta():
    cube = learning_curve_cube()
    result = LearningCurve().compute(cube)
    for a, beta in ((0.01, 0.4), (1000.0, 0.25)):
        r = result.sel(alpha_tilde=a, h=100)
        assert float(r["beta_low"]) <= beta <= float(r["beta_high"]) and abs(float(r["beta"]) - beta) < 0.05
    assert "beta_ensemble" not in result  # no f_test in this cube
    with pytest.raises(DlphaseError, match="x and over"):
        LearningCurve(x="seed").compute(cube)
    assert LearningCurve().applies(cube.isel(P=[0, 1])) == "the cube has fewer than 3 values of P"


def test_learning_curve_leaves_jammed_points_out_and_lists_them():
    """One member jammed at the two largest P of alpha_tilde = 0.01, where its error is 5 times the law's: the fit
    leaves those points out and recovers beta; keep_jammed puts them back and the slope flattens."""
    cube = learning_curve_cube()
    n_delta = xr.zeros_like(cube["test_error"])
    n_delta[0, 0, -2:, 3] = 7
    eps = cube["test_error"].copy()
    eps[0, 0, -2:, 3] *= 5
    cube = cube.assign(n_delta=n_delta, test_error=eps)
    result = LearningCurve().compute(cube)
    r = result.sel(alpha_tilde=0.01, h=100)
    assert float(r["beta_low"]) <= 0.4 <= float(r["beta_high"]) and int(r["beta_n"]) == 4
    assert r["jammed"].values.tolist() == [False] * 4 + [True] * 2
    lines = LearningCurve().summary(result)
    assert lines[-1] == "jammed (a member ended with N_Delta > 0), left out h = 100, alpha_tilde = 0.01: P = 1600, 3200"
    kept = LearningCurve(keep_jammed=True).compute(cube).sel(alpha_tilde=0.01, h=100)
    assert int(kept["beta_n"]) == 6 and float(kept["beta"]) < float(r["beta_low"])
    assert LearningCurve(keep_jammed=True).summary(result.assign_attrs(keep_jammed=1))[-1].startswith(
        "jammed (a member ended with N_Delta > 0), kept h = 100")


def test_a_third_party_analysis_runs_like_the_built_ins(manager, tmp_path):
    from dlphase.analyses.report import write_report

    cube = learning_curve_cube()
    analysis, result = analyze(cube, "worst_seed", manager=manager, scale=2.0)
    np.testing.assert_allclose(result["worst"].values, 2 * cube["test_error"].max("seed").values)
    done = write_report(cube, tmp_path / "r.html", manager=manager)
    assert "worst_seed" in done and "learning_curve" in done
    with pytest.raises(DlphaseError, match="unknown analysis 'nope'.*installed: .*worst_seed"):
        analyze(cube, "nope", manager=manager)
    with pytest.raises(DlphaseError, match="unknown key analysis.scal "):
        analyze(cube, "worst_seed", manager=manager, scal=2.0)


def test_analyze_and_plot_commands(tmp_path):
    cube_path = tmp_path / "cube.nc"
    fluctuation_cube().to_netcdf(cube_path)
    res = run_cli("analyze", "fluctuation-scaling", cube_path, "--json", "-o", tmp_path / "fs.nc")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    b = payload["variables"]["fluctuation_pooled_exponent"]["data"]
    assert abs(b + 0.25) < 0.05 and payload["summary"][0].startswith("fluctuation")
    stored = xr.open_dataset(tmp_path / "fs.nc")
    assert float(stored["fluctuation_pooled_exponent"]) == pytest.approx(b)
    res = run_cli_here("analyze", "ensemble", cube_path, "--n-boot", "50", "--level", "0.9")
    assert res.returncode == 0 and res.stdout.startswith("# ensemble")
    for name, suffix in (("double-descent", "png"), ("ensemble", "html")):
        res = run_cli_here("plot", name, cube_path, "-o", tmp_path / f"p.{suffix}")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / f"p.{suffix}").stat().st_size > 10000


@pytest.mark.parametrize("args,fragment", [
    (["analyze", "nope", "CUBE"], "unknown analysis 'nope'; installed: crossover, divergence, double-descent"),
    (["analyze", "learning-curve", "CUBE"], "does not apply to this cube: the cube has fewer than 3 values of P"),
    (["analyze", "ensemble", "CUBE", "--level", "2"], "analysis.level = 2.0 must be between 0 and 1"),
    (["analyze", "ensemble", "CUBE", "--over", "h2"], "cannot average over 'h2'"),
    (["analyze", "ensemble", "CUBE", "-o", "OUT.txt"], "must end in .nc"),
    (["plot", "ensemble", "CUBE", "-o", "OUT.pdf"], "must end in .html or .png"),
    (["report", "CUBE", "-o", "OUT.png"], "must end in .html"),
    (["analyze", "ensemble", "MISSING"], "does not exist"),
])
def test_analysis_command_errors(tmp_path, args, fragment):
    cube_path = tmp_path / "cube.nc"
    fluctuation_cube(seeds=3, n_test=20).to_netcdf(cube_path)
    subs = {"CUBE": cube_path, "MISSING": tmp_path / "missing.nc", "OUT.txt": tmp_path / "o.txt",
            "OUT.pdf": tmp_path / "o.pdf", "OUT.png": tmp_path / "o.png"}
    res = run_cli_here(*[subs.get(a, a) for a in args])
    assert_clean_error(res, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.nc"]


def test_report_of_a_cube_no_analysis_suits(tmp_path):
    cube = xr.Dataset({"t": (("h",), [1.0])}, coords={"h": [4]})
    cube.to_netcdf(tmp_path / "c.nc")
    res = run_cli_here("report", tmp_path / "c.nc", "-o", tmp_path / "r.html")
    assert_clean_error(res, "no analysis applies to this cube", "phase_diagram: the cube has no test_error")
    assert not (tmp_path / "r.html").exists()
