"""H = H0 + Hp of the quadratic-hinge energy and of the training loss, against torch.func.hessian of the energy."""

import numpy as np
import pytest
import torch
from torch.func import hessian

from dlphase.model import AlphaModel
from dlphase.grid_point import execute
from dlphase.plugins.observables import hessian as hs
from dlphase.plugins.architectures.fc import FC
from dlphase.plugins.losses import SoftHinge
from dlphase.plugins.architectures.mean_field import MeanField


def _problem(arch, h=6, n=25, d=4, alpha=3.0, steps=30):
    """A small model moved away from its initialisation, so that both Delta > 0 and Delta < 0 occur."""
    g = torch.Generator().manual_seed(0)
    net = arch.build(h, (d,), g)
    model = AlphaModel(net, alpha)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    y = torch.where(torch.randn(n, generator=g, dtype=torch.float64) > 0, 1.0, -1.0)
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        hs.quadratic_hinge(y * model(x)).sum().backward()
        opt.step()
    return model, x, y


def _energy_hessian(model, x, y, l_fn, w):
    theta, f = hs.flat_parameters(model.net)
    with torch.no_grad():
        f0 = model.net0(x)

    def energy(t):
        return w * l_fn(y * model.alpha * (f(t, x) - f0)).sum()

    return hessian(energy)(theta)


@pytest.mark.parametrize("arch", [FC(depth=2, activation="swish"), FC(depth=2, activation="tanh", bias=True),
                                  MeanField(activation="swish")], ids=["fc-swish", "fc-tanh-bias", "mean-field"])
def test_quadratic_hinge_hessian_equals_torch_func(arch):
    model, x, y = _problem(arch)
    parts = hs.hessian_parts(model, x, y)
    n_delta = int((parts["margins"] < 1).sum())
    assert 0 < n_delta < len(y)
    ref = _energy_hessian(model, x, y, hs.quadratic_hinge, 1.0)
    torch.testing.assert_close(parts["H"], ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(parts["H0"] + parts["Hp"], parts["H"], rtol=1e-12, atol=1e-12)
    eig0 = torch.linalg.eigvalsh(parts["H0"])
    assert float(eig0.min()) > -1e-10 * float(eig0.max())                  # positive semi-definite
    assert int((eig0 > 1e-9 * float(eig0.max())).sum()) <= n_delta         # rank <= N_Delta
    assert parts["J"].shape == (n_delta, sum(p.numel() for p in model.net.parameters()))


def test_loss_hessian_equals_torch_func():
    model, x, y = _problem(FC(depth=1, activation="swish"))
    loss = SoftHinge(beta=5.0)
    parts = hs.hessian_parts(model, x, y, energy="loss", loss=loss)
    ref = _energy_hessian(model, x, y, loss, 1.0 / len(y))
    torch.testing.assert_close(parts["H"], ref, rtol=1e-8, atol=1e-11)


def test_bad_energy():
    model, x, y = _problem(FC(depth=1), steps=0)
    with pytest.raises(ValueError, match="energy must be"):
        hs.hessian_parts(model, x, y, energy="hinge")
    with pytest.raises(ValueError, match="needs the run's loss"):
        hs.hessian_parts(model, x, y, energy="loss")


def test_hessian_spectrum_observable_in_a_sweep(tmp_path):
    """Two widths in one cube: each run's spectra equal eigvalsh of torch.func.hessian of U at its trained net;
    the shorter run is padded with NaN; at initialisation every Delta = 1, so rank H0 = min(P, N) (tanh: no
    scaling symmetry that would make J rank-deficient, as relu's, and nearly so swish's, does)."""
    import dlphase
    from dlphase.grid_point import Run

    raw = {"dataset": {"name": "mnist", "pca": 4, "n_test": 50},
           "architecture": {"name": "fc", "depth": 1, "activation": "tanh"},
           "dynamics": {"name": "gradient_flow", "max_steps": 200},
           "observables": {"names": ["errors", "hessian_spectrum"], "hessian_spectrum": {"at_init": True}},
           "grid": {"h": [3, 6], "alpha_tilde": [1.0], "P": [40]}}
    spec = dlphase.specs.build_spec(raw)
    cube = dlphase.sweep(spec, tmp_path / "c.nc", progress=False)
    n = {3: 3 * 4 + 3, 6: 6 * 4 + 6}
    assert cube.sizes["hess_eig"] == n[6]
    for h in (3, 6):
        point = cube.sel(h=h, alpha_tilde=1.0, P=40, seed=0)
        eig = point["hess_eig_h"].values
        assert np.isfinite(eig[:n[h]]).all() and np.isnan(eig[n[h]:]).all()
        run = Run(spec, h=h, alpha_tilde=1.0, P=40, seed=0)
        run.train()
        ref = torch.linalg.eigvalsh(_energy_hessian(run.model, run.tensors.x_train, run.tensors.y_train,
                                                    hs.quadratic_hinge, 1.0)).numpy()
        np.testing.assert_allclose(eig[:n[h]], ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())
        assert int(point["hess_n_delta"]) == int(point["n_delta"])
        assert int(point["hess_rank_h0_init"]) == min(40, n[h]) and int(point["hess_n_delta_init"]) == 40
        assert int(point["hess_rank_h0"]) <= int(point["hess_n_delta"])
        # U by hand from the trained net's margins, and U = P / 2 at initialisation (f = 0, every Delta = 1)
        with torch.no_grad():
            m = run.tensors.y_train * run.model(run.tensors.x_train)
        assert float(point["hess_energy"]) == pytest.approx(float((torch.clamp(1 - m, min=0) ** 2).sum() / 2),
                                                           rel=1e-9)
        assert float(point["hess_energy_init"]) == pytest.approx(20.0)


@pytest.mark.parametrize("arch", [FC(depth=2, activation="swish"), MeanField(activation="swish")],
                         ids=["fc-closed-form", "mean-field-generic"])
def test_matrix_free_operators_lanczos_and_quadrature(arch):
    """The matrix-free products (the fc net's closed form, and the generic autograd ones) equal the dense matrices;
    ARPACK's extreme eigenvalues equal eigvalsh's; each SLQ probe's quadrature reproduces v^T M v and v^T M^2 v of
    its own probe vector exactly (Lanczos moments)."""
    import math

    model, x, y = _problem(arch, h=7)
    parts = hs.hessian_parts(model, x, y)
    ops, theta = hs.operators(model, x, y)
    n = len(theta)
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for key in ("H0", "Hp", "H"):
        torch.testing.assert_close(ops[key](v), parts[key] @ v, rtol=1e-9, atol=1e-11)
    eig = torch.linalg.eigvalsh(parts["H"])
    top = hs.extreme_eigenvalues(ops["H"], n, 5, "LA", theta)
    bottom = hs.extreme_eigenvalues(ops["H"], n, 5, "SA", theta)
    torch.testing.assert_close(top, eig[-5:], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(bottom, eig[:5], rtol=1e-6, atol=1e-9)
    nodes, weights = hs.lanczos_quadrature(ops["H"], n, 12, 3, theta, seed=7)
    gen = torch.Generator().manual_seed(7)
    for p in range(3):
        probe = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).double() / math.sqrt(n)
        hv = parts["H"] @ probe
        assert float(weights[p].sum()) == pytest.approx(1.0, abs=1e-12)
        assert float((weights[p] * nodes[p]).sum()) == pytest.approx(float(probe @ hv), rel=1e-9)
        assert float((weights[p] * nodes[p] ** 2).sum()) == pytest.approx(float(hv @ hv), rel=1e-9)
    grid = torch.linspace(float(eig[0]) - 1, float(eig[-1]) + 1, 4001).numpy()
    density = hs.slq_density(nodes, weights, grid, sigma=0.05)
    assert float((density * (grid[1] - grid[0])).sum()) == pytest.approx(1.0, abs=1e-3)


def _tiny_spec(h, alpha_tilde, P, max_steps):
    """A one-point spec (tanh fc on MNIST PCA 4) with the Hessian observable, as a raw dict, and its point."""
    raw = {"dataset": {"name": "mnist", "pca": 4, "n_test": 50},
           "architecture": {"name": "fc", "depth": 1, "activation": "tanh"},
           "dynamics": {"name": "gradient_flow", "max_steps": max_steps},
           "observables": {"names": ["errors", "hessian_spectrum"]},
           "grid": {"h": [h], "alpha_tilde": [alpha_tilde], "P": [P]}}
    return raw, {"h": h, "alpha_tilde": alpha_tilde, "P": P, "seed": 0}


def test_hessian_spectrum_uses_lanczos_above_max_dense(monkeypatch):
    """Top and bottom eigenvalues by Lanczos equal the dense spectrum's; the fc curvature is built once."""
    import dlphase
    from dlphase.plugins.architectures.fc import FCNet

    raw, point = _tiny_spec(h=5, alpha_tilde=1.0, P=30, max_steps=100)
    dense = execute(dlphase.specs.build_spec(raw), point)
    raw["observables"]["hessian_spectrum"] = {"max_dense": 10, "k": 4, "slq_probes": 2, "slq_steps": 10}
    builds = []
    original = FCNet.curvature
    monkeypatch.setattr(FCNet, "curvature", lambda self, x: builds.append(len(x)) or original(self, x))
    sparse = execute(dlphase.specs.build_spec(raw), point)
    assert len(builds) == 1
    assert "hess_eig_h" not in sparse and sparse["hess_slq_nodes_h"].shape == (2, 10)
    for key in ("h", "h0", "hp"):
        eig = dense[f"hess_eig_{key}"].values
        scale = abs(eig).max()
        np.testing.assert_allclose(sparse[f"hess_top_{key}"].values, eig[-4:], rtol=1e-6, atol=1e-8 * scale)
        np.testing.assert_allclose(sparse[f"hess_bottom_{key}"].values, eig[:4], rtol=1e-6, atol=1e-8 * scale)
    assert int(sparse["hess_n_delta"]) == int(dense["hess_n_delta"]) == int(dense["n_delta"])


def test_hessian_spectrum_plot(tmp_path):
    """The command draws one run's histogram; a cube with several runs needs the point named; bad input is one line."""
    import dlphase
    from dlphase.analyses.hessian_spectrum import log_spectrum
    from tests.conftest import run_cli
    from tests.test_cli_errors import assert_clean_error

    raw = {"dataset": {"name": "mnist", "pca": 4, "n_test": 50},
           "architecture": {"name": "fc", "depth": 1, "activation": "tanh"},
           "dynamics": {"name": "gradient_flow", "max_steps": 100},
           "observables": {"names": ["errors", "hessian_spectrum"]},
           "grid": {"h": [3, 6], "alpha_tilde": [1.0], "P": [40]}}
    cube_path = tmp_path / "c.nc"
    dlphase.sweep(dlphase.specs.build_spec(raw), cube_path, progress=False)
    for out in ("s.html", "s.png"):
        res = run_cli("plot", "hessian-spectrum", cube_path, "-o", tmp_path / out, "--h", "6")
        assert res.returncode == 0, res.stderr
        assert (tmp_path / out).stat().st_size > 1000
    assert_clean_error(run_cli("plot", "hessian-spectrum", cube_path, "-o", tmp_path / "x.png"),
                       "the cube holds 2 values of h (3, 6); pick one with --h")
    assert_clean_error(run_cli("plot", "hessian-spectrum", cube_path, "-o", tmp_path / "x.png", "--h", "5"),
                       "h = 5 is not in the cube")
    assert not (tmp_path / "x.png").exists()
    logs, negative = log_spectrum([0.0, -1e-3, 1.0, 100.0, float("nan")])
    np.testing.assert_allclose(logs, [-16, -3, 0, 2])
    assert negative == 1
    with pytest.raises(dlphase.DlphaseError, match="every eigenvalue is 0"):
        log_spectrum([0.0, 0.0])


def test_a_converged_run_has_a_zero_hessian_without_computing_it(monkeypatch):
    """With N_Delta = 0 every term of U vanishes: H = H0 = Hp = 0, which the observable returns without forming
    a matrix (checked against the dense computation, and by making the dense and Lanczos paths unusable)."""
    import dlphase

    raw, point = _tiny_spec(h=20, alpha_tilde=1e3, P=10, max_steps=3000)
    spec = dlphase.specs.build_spec(raw)
    ran = execute(spec, point)
    assert ran["status"].item() == "converged" and int(ran["n_delta"]) == 0
    n = int(ran["n_params"])
    run = dlphase.Run(spec, **point)
    run.train()
    parts = hs.hessian_parts(run.model, run.tensors.x_train, run.tensors.y_train)
    assert float(parts["H"].abs().max()) == 0.0
    np.testing.assert_array_equal(ran["hess_eig_h"].values, np.zeros(n))
    assert int(ran["hess_n_zero"]) == n and int(ran["hess_rank_h0"]) == 0 and int(ran["hess_n_minus"]) == 0
    monkeypatch.setattr(hs.HessianSpectrum, "dense", None)
    monkeypatch.setattr(hs.HessianSpectrum, "lanczos", None)
    raw["observables"]["hessian_spectrum"] = {"max_dense": 10, "k": 3, "slq_probes": 2, "slq_steps": 5}
    sparse = execute(dlphase.specs.build_spec(raw), point)
    np.testing.assert_array_equal(sparse["hess_top_h0"].values, np.zeros(3))
    np.testing.assert_array_equal(sparse["hess_slq_weights_h"].values.sum(axis=1), np.ones(2))


@pytest.mark.parametrize("depth,activation,bias", [(1, "relu", True), (2, "relu", False), (2, "swish", True),
                                                   (3, "tanh", True), (3, "swish", False), (3, "relu", True)])
def test_fc_closed_form_curvature_equals_torch_func(depth, activation, bias):
    """fc_hessian's J, dense Hessian of sum c f~ and products (single and blocks of vectors, H0 and Hp alone)
    against torch.func: every layer pair, with and without sigma'' and biases."""
    from dlphase.plugins.architectures.fc_hessian import FCCurvature

    g = torch.Generator().manual_seed(depth)
    net = FC(depth=depth, activation=activation, bias=bias).build(5, (4,), g)
    x = torch.randn(13, 4, dtype=torch.float64, generator=g)
    c = torch.randn(13, dtype=torch.float64, generator=g)
    a = torch.rand(13, dtype=torch.float64, generator=g)
    theta, f = hs.flat_parameters(net)
    ref_hp = hessian(lambda t: (f(t, x) * c).sum())(theta)
    ref_j = torch.func.jacrev(lambda t: f(t, x))(theta)
    closed = FCCurvature(net, x)
    torch.testing.assert_close(closed.hessian_of_sum(c), ref_hp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed.jacobian(), ref_j, rtol=1e-12, atol=1e-14)
    ref_h0 = (ref_j.T * a) @ ref_j
    v = torch.randn(3, len(theta), dtype=torch.float64, generator=g)
    for (wa, wc), ref in (((a, c), ref_h0 + ref_hp), ((a, 0), ref_h0), ((0, c), ref_hp)):
        product = closed.products(wa, wc)
        torch.testing.assert_close(product(v), v @ ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(product(v[0]), ref @ v[0], rtol=1e-10, atol=1e-12)


def test_symmetrize_by_tiles():
    m = torch.randn(11, 11, dtype=torch.float64)
    want = (m + m.T) / 2
    torch.testing.assert_close(hs.symmetrize_(m.clone(), tile=4), want, rtol=0, atol=1e-15)


def test_lanczos_quadrature_same_with_blocks_of_probes():
    """Probes advanced together through a block product give the nodes and weights of one probe at a time."""
    model, x, y = _problem(FC(depth=2, activation="swish"), h=7)
    ops, theta = hs.operators(model, x, y)
    assert getattr(ops["H"], "blocks", False)
    single = lambda v: ops["H"](v)                     # noqa: E731  (the same product, without its blocks flag)
    n = len(theta)
    for steps in (12, n + 5):                          # the second closes its Krylov space early
        nodes_b, weights_b = hs.lanczos_quadrature(ops["H"], n, steps, 3, theta, seed=2)
        nodes_s, weights_s = hs.lanczos_quadrature(single, n, steps, 3, theta, seed=2)
        torch.testing.assert_close(nodes_b, nodes_s, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(weights_b, weights_s, rtol=1e-9, atol=1e-10)
