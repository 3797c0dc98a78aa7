"""The stripe model's observables and analysis: first-layer scales on weights set by hand, kernels on compressed
inputs against the plain kernel on inputs compressed by hand, the stripe analysis on cubes with planted laws, and the
kernel-set observables on synthetic data."""

import json
import math

import numpy as np
import pytest
import torch
import xarray as xr

import dlphase
from dlphase.errors import DlphaseError
from dlphase.plugins.observables.first_layer import compress, scales
from dlphase.specs import load_spec
from tests.conftest import run_cli, run_cli_here, write

STRIPE_SPEC = """
[dataset]
name = "stripe"
d = 3
n_test = 300

[architecture]
name = "fc"
depth = 1

[dynamics]
name = "gradient_flow"
max_steps = 300

[observables]
names = ["errors", "trajectory", "first_layer"]

[observables.trajectory]
t_min = 0.1
t_max = 1000.0
per_decade = 1

[observables.first_layer]
along_trajectory = true
store_weights = true

[grid]
h = [8]
alpha_tilde = [0.1]
P = [64]
seed = [0]
"""

#: the same without the trajectory: first_layer at the start and the end only
PLAIN_SPEC = STRIPE_SPEC.replace('"trajectory", ', "").replace(
    "[observables.trajectory]\nt_min = 0.1\nt_max = 1000.0\nper_decade = 1\n", "").replace(
    "along_trajectory = true\nstore_weights = true\n", "")

E1 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)


def set_weights(net, tensors):
    with torch.no_grad():
        for p, v in zip(net.parameters(), tensors):
            p.copy_(torch.as_tensor(v, dtype=torch.float64))


def test_scales_of_a_first_layer_set_by_hand():
    """W = [[2,0,0],[0,1,1],[1,1,0]] read out by (1, -1, 2): c = (1/4, 1/4, 1/2), |W_par|^2 = (4, 0, 1) and
    |W_perp|^2 = (0, 2, 1), so W_par^2 = 1 + 1/2, W_perp^2 = (1/2 + 1/2) / 2, Lambda = sqrt(3), and the
    alignment is 1/4 + 0 + 1/2 * 1/2."""
    from dlphase.plugins.architectures.fc import FC
    from dlphase.plugins.architectures.mean_field import MeanField

    w = [[2.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    expected = {"w_par": math.sqrt(1.5), "w_perp": math.sqrt(0.5), "lambda": math.sqrt(3), "alignment": 0.5}
    fc = FC(depth=1).build(3, (3,), torch.Generator().manual_seed(0))
    set_weights(fc, [w, [[1.0, -1.0, 2.0]]])
    mf = MeanField(bias=False).build(3, (3,), torch.Generator().manual_seed(0))
    set_weights(mf, [w, [1.0, -1.0, 2.0]])
    for net in (fc, mf):
        got = scales(*net.first_layer(), E1)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-12), (type(net).__name__, key)
    uniform = scales(*fc.first_layer(), E1, weighting="uniform")
    assert uniform["w_par"] == pytest.approx(math.sqrt(5 / 3)) and uniform["w_perp"] == pytest.approx(math.sqrt(0.5))


def test_a_deeper_net_weighs_a_neuron_by_its_outgoing_column():
    """Depth 2: neuron i of the first layer sends on through column i of W_2, whose size is |W_2[:, i]| / sqrt(h)."""
    from dlphase.plugins.architectures.fc import FC

    net = FC(depth=2).build(4, (3,), torch.Generator().manual_seed(1))
    w, v = net.first_layer()
    assert torch.equal(w, net.weights[0])
    np.testing.assert_allclose(v.detach().numpy(), np.linalg.norm(net.weights[1].detach().numpy(), axis=0) / 2)


def test_the_observable_in_a_sweep_matches_the_weights_it_stores(tmp_path):
    """lambda_init / lambda_end of a swept run are the scales of the stored weights (recomputed with numpy), and
    the trajectory's first checkpoint is near the initial state; Lambda at initialisation is 1 up to O(h^-1/2)."""
    spec = load_spec(write(tmp_path / "s.toml", STRIPE_SPEC))
    cube = dlphase.sweep(spec, tmp_path / "cube.nc", progress=False).isel(h=0, alpha_tilde=0, P=0, seed=0)
    for when in ("init", "end"):
        w = cube[f"first_layer_w_{when}"].values
        v = cube[f"first_layer_v_{when}"].values
        c = v / v.sum()
        w_par = math.sqrt((c * w[:, 0] ** 2).sum())
        w_perp = math.sqrt((c * (w[:, 1:] ** 2).sum(1)).sum() / 2)
        assert float(cube[f"w_par_{when}"]) == pytest.approx(w_par, rel=1e-12)
        assert float(cube[f"lambda_{when}"]) == pytest.approx(w_par / w_perp, rel=1e-12)
    run = dlphase.Run(spec, h=8, alpha_tilde=0.1, P=64, seed=0)
    np.testing.assert_array_equal(cube["first_layer_w_init"].values, run.model.net0.weights[0].detach().numpy())
    traj = cube["lambda_traj"].values
    recorded = np.isfinite(traj)
    assert recorded.sum() >= 2
    for k in np.flatnonzero(recorded):  # each checkpoint's scales are those of the weights stored with it
        w, v = cube["first_layer_w_traj"].values[k], cube["first_layer_v_traj"].values[k]
        got = scales(torch.as_tensor(w), torch.as_tensor(v), E1)
        assert traj[k] == pytest.approx(got["lambda"], rel=1e-12)
    assert 0.3 < float(cube["lambda_init"]) < 3


def test_first_layer_refuses_what_it_cannot_measure(tmp_path):
    spec = write(tmp_path / "s.toml", STRIPE_SPEC)
    res = run_cli_here("sweep", spec, "-o", tmp_path / "c.nc", "--set", 'architecture={name="cnn"}', "--set",
                       "dataset.d=4")
    assert res.returncode == 2 and "has no dense first layer" in res.stderr
    res = run_cli_here("sweep", spec, "-o", tmp_path / "c.nc", "--set", "observables.first_layer.informative=[0,0]")
    assert res.returncode == 2 and "informative must list distinct input coordinates" in res.stderr
    # a dataset that declares no informative directions: the run says how to give them
    plain = write(tmp_path / "plain.toml", PLAIN_SPEC)
    teacher = load_spec(plain, ['dataset.name="teacher"'])
    cube = dlphase.sweep(teacher, tmp_path / "t.nc", progress=False)
    assert cube["status"].item() == "failed" and "observables.first_layer.informative = [0]" in cube["message"].item()
    given = load_spec(plain, ['dataset.name="teacher"', "observables.first_layer.informative=[0]"])
    run = dlphase.sweep(given, tmp_path / "g.nc", progress=False)
    assert run["status"].item() != "failed" and np.isfinite(run["lambda_end"].item())


def test_compress_divides_the_uninformative_components():
    x = torch.tensor([[1.0, 2.0, -4.0], [3.0, 0.5, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(compress(x, E1, 4.0).numpy(), [[1.0, 0.5, -1.0], [3.0, 0.125, 0.25]])
    basis = torch.tensor([[0.6, 0.8, 0.0]], dtype=torch.float64)  # an oblique direction
    c = compress(x, basis, 2.0)
    par = (x @ basis.T) @ basis
    np.testing.assert_allclose(c.numpy(), (par + (x - par) / 2).numpy())
    np.testing.assert_allclose((c @ basis.T).numpy(), (x @ basis.T).numpy())


@pytest.mark.parametrize("dynamics", ["ridge", "svm", "kernel"])
@pytest.mark.parametrize("kernel", ["ntk_infinite", "laplace"])
def test_a_compressed_kernel_is_the_plain_kernel_on_inputs_compressed_by_hand(dynamics, kernel):
    """The kernel method with compression = 3 and the same method without it on (x_1, x_perp / 3) predict the same
    f on the test set, to rounding."""
    from dlphase.interfaces import Data
    from dlphase.model import AlphaModel
    from dlphase.plugins.architectures.fc import FC
    from dlphase.plugins.dynamics.kernel_methods import SVM, KernelFlow, Ridge
    from dlphase.plugins.datasets.synthetic import Stripe

    data = Stripe(d=3, n_test=50).load(40)
    by_hand = Data(x_train=data.x_train * [1, 1 / 3, 1 / 3], y_train=data.y_train,
                   x_test=data.x_test * [1, 1 / 3, 1 / 3], y_test=data.y_test)
    cls = {"ridge": Ridge, "svm": SVM, "kernel": KernelFlow}[dynamics]
    f = {}
    for tag, method, d in (("compressed", cls(kernel=kernel, compression=3.0), data), ("by hand", cls(kernel=kernel),
                                                                                      by_hand)):
        model = AlphaModel(FC(depth=1).build(16, (3,), torch.Generator().manual_seed(0)), 1.0)
        t = d.tensors(torch.float64, "cpu")
        result = method.train(model, t)
        assert result.status == "converged", result.message
        with torch.no_grad():
            f[tag] = model(t.x_test).numpy(), model.predictor.gram(t.x_test).numpy()
    # the kernels agree to rounding; the fits solve ill-conditioned systems (ridge 1e-6), which amplify it
    np.testing.assert_allclose(f["compressed"][1], f["by hand"][1], rtol=1e-12)
    np.testing.assert_allclose(f["compressed"][0], f["by hand"][0], rtol=1e-6, atol=1e-6)
    assert np.abs(f["by hand"][0]).max() > 0.1


def test_compression_trained_takes_lambda_from_the_net_of_the_same_point(tmp_path):
    """compression = 'trained': the run trains its net, measures its Lambda, and compresses by it (the message
    says which Lambda; the first_layer observable of the same run reports it)."""
    spec = load_spec(write(tmp_path / "s.toml", PLAIN_SPEC), [
        'dynamics={name="ridge", kernel="ntk_infinite", compression="trained", net_dynamics={name="gradient_flow", '
        'max_steps=300}}'])
    cube = dlphase.sweep(spec, tmp_path / "c.nc", progress=False)
    lam = float(cube["lambda_end"].item())
    assert lam != pytest.approx(float(cube["lambda_init"].item()))
    assert f"inputs compressed by Lambda = {lam:.6g}" in cube["message"].item()


@pytest.mark.parametrize("setting, message", [
    ("dynamics.compression=0", "compression = 0.0 must be a finite Lambda > 0, or 'trained'"),
    ('dynamics.compression="twice"', "compression = 'twice' is invalid"),
    ('dynamics.kernel="ntk_final"', "use ntk_init or ntk_infinite"),
])
def test_bad_compressions_are_one_line(tmp_path, setting, message):
    ridge = 'name = "ridge"\nkernel = "ntk_init"\ncompression = "trained"'
    spec = write(tmp_path / "s.toml", PLAIN_SPEC.replace('name = "gradient_flow"\nmax_steps = 300', ridge))
    res = run_cli_here("sweep", spec, "-o", tmp_path / "c.nc", "--set", setting)
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "c.nc").exists()


def stripe_cube(Ps=(128, 256, 512, 1024, 2048, 4096), d=5, seeds=8, noise=0.03, seed=0, weights=False,
                trajectory=False):
    """Planted laws: eps = 0.8 P^-beta_feature (feature, alpha_tilde = 0.01) and 0.8 P^-beta_lazy (lazy, 1000), and
    Lambda = 0.5 P^(1/2) (feature) and 1 (lazy), times (1 + noise) per seed. With ``trajectory``, Lambda along
    the trajectory rises from 1 to a peak of 4 P^(1/3) (feature; 2 lazy) and falls to its end value, and runs
    end at different checkpoints (NaN after)."""
    rng = np.random.default_rng(seed)
    P = np.asarray(Ps, dtype=float)
    shape = (1, 2, len(P), seeds)
    betas = np.array([(d + (d - 1) / 2) / (3 * d - 2), d / (3 * d - 2)])
    eps = 0.8 * P[None, None, :, None] ** -betas[None, :, None, None] * (1 + noise * rng.standard_normal(shape))
    lam = np.stack([0.5 * P ** 0.5, np.ones_like(P)])[None, :, :, None] * (1 + noise * rng.standard_normal(shape))
    grid = ("h", "alpha_tilde", "P", "seed")
    cube = xr.Dataset({"test_error": (grid, eps), "lambda_end": (grid, lam), "lambda_init": (grid, np.ones(shape)),
                       "status": (grid, np.full(shape, "converged", dtype=object))},
                      coords={"h": [100], "alpha_tilde": [0.01, 1000.0], "P": list(Ps), "seed": np.arange(seeds)},
                      attrs={"spec_toml": f'[dataset]\nname = "stripe"\nd = {d}\n'})
    if weights:
        w = rng.standard_normal(shape + (100, d))
        cube["first_layer_w_init"] = (grid + ("neuron", "input"), w)
        cube["first_layer_w_end"] = (grid + ("neuron", "input"), w * np.array([4.0] + [0.5] * (d - 1)))
        cube["first_layer_v_init"] = (grid + ("neuron",), np.abs(rng.standard_normal(shape + (100,))))
        cube["first_layer_v_end"] = cube["first_layer_v_init"] * 2
    if trajectory:
        peak = np.stack([4 * P ** (1 / 3), np.full_like(P, 2.0)])[None, :, :, None] * np.ones(shape)
        traj = 1 + (peak[..., None] - 1) * np.array([0.0, 0.5, 1.0, 0.5, 0.0])
        traj[..., -1] = cube["lambda_end"].values
        traj[0, 0, 0, :, -1] = np.nan  # the smallest P ends one checkpoint early
        cube["lambda_traj"] = (grid + ("time",), traj)
        cube = cube.assign_coords(time=[0.1, 1.0, 10.0, 100.0, 1000.0])
    return cube


def test_the_stripe_analysis_finds_planted_laws(tmp_path):
    from dlphase.analyses.stripe import predicted_betas
    from dlphase.analyses.dispatch import analyze

    cube = stripe_cube()
    analysis, result = analyze(cube, "stripe")
    lazy, feature = predicted_betas(5, 1)
    assert (lazy, feature) == (pytest.approx(5 / 13), pytest.approx(7 / 13))
    r = result.isel(h=0)
    for regime, beta, lam in (("feature", feature, 0.5), ("lazy", lazy, 0.0)):
        assert float(r["beta"].sel(regime=regime)) == pytest.approx(beta, abs=0.02)
        assert float(r["beta_low"].sel(regime=regime)) < beta < float(r["beta_high"].sel(regime=regime))
        assert float(r["lambda_exponent"].sel(regime=regime)) == pytest.approx(lam, abs=0.02)
        assert float(r["beta_predicted"].sel(regime=regime)) == pytest.approx(beta)
    lines = analysis.summary(result)
    assert lines[0] == ("stripe model, d = 5, d_par = 1: predicted beta_lazy = 0.385, beta_feature = 0.538 "
                        "((2d - 1) / (3d - 2) = 0.692 for one informative direction)")
    assert "lambda_peak_exponent" not in result
    # a compressed-kernel cube beside it: its own curve and beta
    kernel = stripe_cube(seed=3).isel(alpha_tilde=[0])
    kernel.to_netcdf(tmp_path / "kernel.nc")
    _, with_kernel = analyze(cube, "stripe", compressed=str(tmp_path / "kernel.nc"))
    assert float(with_kernel["compressed_beta"]) == pytest.approx(feature, abs=0.02)
    # the peak of Lambda along the trajectory, a planted P^(1/3), and none in the lazy regime
    _, result = analyze(stripe_cube(trajectory=True), "stripe")
    r = result.isel(h=0)
    assert float(r["lambda_peak_exponent"].sel(regime="feature")) == pytest.approx(1 / 3, abs=1e-9)
    assert float(r["lambda_peak_exponent"].sel(regime="lazy")) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(r["lambda_peak_mean"].sel(regime="feature"), 4 * np.asarray(r["P"]) ** (1 / 3))
    assert float(r["lambda_exponent"].sel(regime="feature")) == pytest.approx(0.5, abs=0.02)
    with pytest.raises(DlphaseError, match="is not an alpha_tilde of the cube; it has 0.01, 1000"):
        analyze(cube, "stripe", feature=0.1)
    with pytest.raises(DlphaseError, match="give --d"):
        analyze(cube.assign_attrs(spec_toml=""), "stripe")


def test_the_stripe_command_json_plot_and_report(tmp_path):
    path = tmp_path / "cube.nc"
    stripe_cube(weights=True, trajectory=True).to_netcdf(path)
    res = run_cli("analyze", "stripe", path, "--json")
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["summary"][1].startswith("h = 100, feature (alpha_tilde = 0.01): beta = 0.5")
    assert payload["summary"][2].startswith("    peak over the trajectory: max_t Lambda ~ P^0.333")
    res = run_cli_here("plot", "stripe", path, "-o", tmp_path / "p.png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p.png").stat().st_size > 10000
    res = run_cli_here("report", path, "-o", tmp_path / "r.html")
    assert res.returncode == 0, res.stderr
    assert "stripe" in (tmp_path / "r.html").read_text()
    from dlphase.analyses.dispatch import analyze

    _, result = analyze(xr.open_dataset(path), "stripe")
    assert list(result["moment"].values) == ["init", "end"]
    np.testing.assert_array_equal(result["scatter_w"].sel(moment="end").values,
                                  xr.open_dataset(path)["first_layer_w_end"].isel(h=0, alpha_tilde=0, P=-1, seed=0))


def test_the_kernel_set_observables_work_on_the_stripe_model(tmp_path):
    """ntk and ntk_kpca on synthetic data as on images: the kernel set comes from the dataset's n_kernel points."""
    spec = load_spec(write(tmp_path / "s.toml", PLAIN_SPEC.replace("n_test = 300", "n_test = 300\nn_kernel = 40")),
                     ['observables.names=["errors", "first_layer", "ntk", "ntk_kpca"]'])
    cube = dlphase.sweep(spec, tmp_path / "c.nc", progress=False).isel(h=0, alpha_tilde=0, P=0, seed=0)
    assert cube["status"].item() != "failed" and float(cube["ntk_change"]) > 0
    assert 0 < float(cube["kpca_fraction_end"].sel(kpca_k=20)) <= 1 + 1e-9


@pytest.mark.slow
def test_compression_grows_with_P_in_the_feature_regime_only(tmp_path):
    """examples/stripe.toml at three P and one seed (about 2 minutes): in the feature regime the first layer
    compresses x_perp (Lambda at the end well above its initial value) and its peak compression along the
    trajectory grows with P; in the lazy regime Lambda stays at its initial value."""
    from pathlib import Path

    spec = load_spec(Path(__file__).parent.parent / "examples" / "stripe.toml",
                     ["grid.P=[128,512,2048]", "grid.seed=[0]", "dataset.n_test=2000"])
    cube = dlphase.sweep(spec, tmp_path / "stripe.nc", workers=1)
    assert (cube["status"] == "converged").all(), cube["message"].values
    feature, lazy = cube.sel(alpha_tilde=1e-3, seed=0).squeeze("h"), cube.sel(alpha_tilde=1e4, seed=0).squeeze("h")
    peak = feature["lambda_traj"].max("time").values
    assert np.all(np.diff(peak) > 0) and peak[-1] > 3 * peak[0], peak
    assert np.all(feature["lambda_end"] > 5 * feature["lambda_init"])
    np.testing.assert_allclose(lazy["lambda_end"], lazy["lambda_init"], rtol=0.1)
    assert float(lazy["lambda_traj"].max()) < 1.1 * float(lazy["lambda_init"].max())
    from dlphase.analyses.stripe import Stripe

    result = Stripe().compute(cube).isel(h=0)
    assert float(result["lambda_peak_exponent"].sel(regime="feature")) > 0.25
    assert abs(float(result["lambda_exponent"].sel(regime="lazy"))) < 0.05


def test_with_a_training_set_per_seed_beta_comes_from_every_seeds_curve():
    """dataset.training = per_seed: the seeds' curves are independent, and beta is their common slope on log-log
    axes (each seed its own prefactor), the within-seed least squares computed here by hand."""
    from dlphase.analyses.dispatch import analyze

    cube = stripe_cube(noise=0.2, seed=5)
    rng = np.random.default_rng(1)
    cube["test_error"] = cube["test_error"] * xr.DataArray(rng.uniform(0.7, 1.3, cube.sizes["seed"]), dims="seed")
    shared = analyze(cube, "stripe")[1]
    per_seed = analyze(cube.assign_attrs(spec_toml=cube.attrs["spec_toml"] + 'training = "per_seed"\n'), "stripe")[1]
    assert shared.attrs["beta_fit"] == "the mean over seeds"
    assert per_seed.attrs["beta_fit"].startswith("one exponent over the seeds' curves")
    for regime in ("feature", "lazy"):
        y = np.log(cube["test_error"].sel(alpha_tilde=cube["alpha_tilde"][0 if regime == "feature" else 1]).values[0])
        x = np.log(cube["P"].values.astype(float))
        xc, yc = x - x.mean(), y - y.mean(axis=0)
        slope = (xc[:, None] * yc).sum() / (len(y[0]) * (xc ** 2).sum())
        r = per_seed.isel(h=0).sel(regime=regime)
        assert float(r["beta"]) == pytest.approx(-slope, rel=1e-10)
        assert float(r["beta_low"]) < -slope < float(r["beta_high"])
        assert float(r["beta"]) != pytest.approx(float(shared.isel(h=0).sel(regime=regime)["beta"]), rel=1e-6)
