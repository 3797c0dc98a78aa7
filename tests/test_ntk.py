"""The empirical NTK of ensembles: the layer-by-layer fc kernel, torch.func's Jacobians, and a loop of
per-sample autograd gradients must give the same Gram matrices."""

import numpy as np
import pytest
import torch

import dlphase
from dlphase.errors import SpecError
from dlphase.grid_point import Run

from dlphase.ensemble_net import EnsembleNet, ensemble_of, ntk_by_loop
from dlphase.plugins.architectures.cnn import CNN
from dlphase.plugins.architectures.fc import FC
from dlphase.plugins.architectures.mean_field import MeanField

ARCHS = [FC(depth=3, activation="swish"), FC(depth=2, activation="relu", bias=True),
         FC(depth=1, activation="tanh"), MeanField(activation="relu"), MeanField(activation="swish", bias=False)]


def _nets(arch, h, shape, n=3):
    return [arch.build(h, shape, torch.Generator().manual_seed(s)) for s in range(n)]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a.name}-{a.activation}")
def test_layerwise_ntk_matches_jacobians(arch):
    nets = _nets(arch, 7, (5,))
    x = torch.randn(13, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fast, generic = ensemble_of(nets), EnsembleNet(nets)
    assert type(fast) is not EnsembleNet
    params = fast.stack(nets)
    theta = fast.ntk(params, x)
    torch.testing.assert_close(theta, generic.ntk(params, x, chunk=5), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(theta[2], ntk_by_loop(nets[2], x), rtol=1e-10, atol=1e-12)
    # the cross kernel is the block of the joint one
    torch.testing.assert_close(fast.ntk(params, x[:4], x[4:]), theta[:, :4, 4:], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(theta, theta.transpose(1, 2), rtol=1e-12, atol=1e-13)
    assert float(torch.linalg.eigvalsh(theta).min()) > -1e-9 * float(theta.abs().max())


@pytest.mark.parametrize("arch", [CNN(depth=2, kernel_size=3), CNN(depth=2, kernel_size=3, bias=True),
                                  CNN(depth=3, kernel_size=3, stride=1, padding=0, activation="relu"),
                                  CNN(depth=4, kernel_size=3, padding=1, strides=(2, 1, 2, 1))],
                         ids=["swish", "bias", "relu-stride1", "strides-2121"])
def test_cnn_layerwise_ntk_matches_the_generic_path_and_the_loop(arch):
    nets = _nets(arch, 3, (2, 7, 7), n=2)
    x = torch.randn(9, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fast, generic = ensemble_of(nets), EnsembleNet(nets)
    assert type(fast) is not EnsembleNet
    params = fast.stack(nets)
    theta = fast.ntk(params, x)
    torch.testing.assert_close(theta, generic.ntk(params, x, chunk=4), rtol=1e-10, atol=1e-12)
    for m, net in enumerate(nets):
        torch.testing.assert_close(theta[m], ntk_by_loop(net, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.ntk(params, x[:4], x[4:]), theta[:, :4, 4:], rtol=1e-12, atol=1e-13)


def test_cnn_ntk_in_blocks(monkeypatch):
    """Per-sample gradients formed a few samples at a time give the same Gram matrix."""
    from dlphase.plugins.architectures import cnn

    nets = _nets(CNN(depth=2, kernel_size=3), 3, (1, 6, 6), n=2)
    x = torch.randn(7, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ens = ensemble_of(nets)
    whole = ens.ntk(ens.stack(nets), x)
    monkeypatch.setattr(cnn, "_NTK_BLOCK", 60)
    torch.testing.assert_close(ens.ntk(ens.stack(nets), x), whole, rtol=1e-12, atol=1e-13)


def _ntk_spec(*overrides):
    raw = {"dataset": {"name": "mnist", "pca": 5, "n_test": 100, "n_kernel": 40},
           "architecture": {"name": "fc", "depth": 2, "activation": "swish"},
           "dynamics": {"name": "gradient_flow", "loss": "soft_hinge", "max_steps": 3000},
           "observables": {"names": ["errors", "ntk"], "ntk": {"top": 5, "store_gram": True}},
           "grid": {"h": [32], "alpha_tilde": [0.1, 1e3], "P": [100]}}
    return dlphase.specs.build_spec(dlphase.specs.apply_overrides(raw, list(overrides)))


def test_ntk_observable_against_the_loop():
    """Theta_0 and Theta_end equal the per-sample loop on the run's nets; the ratio and eigenvalues follow
    from them; the lazy point (alpha_tilde = 1e3) moves its kernel far less than alpha_tilde = 0.1."""
    spec = _ntk_spec()
    change = {}
    for point in spec.grid.points():
        run = Run(spec, **point)
        ds = run.train()
        xk = torch.as_tensor(run.data.x_kernel)
        g0, g1 = ds["ntk_gram_init"].values, ds["ntk_gram_end"].values
        np.testing.assert_allclose(g0, ntk_by_loop(run.model.net0, xk).numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g1, ntk_by_loop(run.model.net, xk).numpy(), rtol=1e-10, atol=1e-12)
        ratio = np.linalg.norm(g1 - g0) / np.linalg.norm(g0)
        assert float(ds["ntk_change"]) == pytest.approx(ratio, rel=1e-10)
        np.testing.assert_allclose(ds["ntk_eig_init"].values, np.linalg.eigvalsh(g0)[::-1][:5], rtol=1e-10)
        assert list(ds["eig"].values) == [1, 2, 3, 4, 5]
        change[point["alpha_tilde"]] = ratio
    assert change[1e3] < 0.05 < change[0.1]


def test_ntk_needs_kernel_points():
    with pytest.raises(SpecError, match=r"observables\.ntk: .*n_kernel = 0"):
        _ntk_spec("dataset.n_kernel=0")


def test_kernel_pca_against_a_kernel_built_by_hand():
    """K = V diag(lambda) V^T with known V: the projections are (V^T y)^2 / |y|^2 in the order of lambda; a kernel
    whose top eigenvector is the label vector carries all of |y|^2 on it and ln 2 nats of information."""
    from dlphase.plugins.observables.kernel_pca import kernel_pca

    rng = np.random.default_rng(0)
    n = 80
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    lam = rng.permutation(np.arange(1, n + 1, dtype=float))
    res = kernel_pca(v @ np.diag(lam) @ v.T, y, ks=(1, 3, n, n + 1), top=5)
    order = np.argsort(-lam)
    omega = (v[:, order].T @ y) ** 2 / n
    np.testing.assert_allclose(res["projection"], omega[:5], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(res["fraction"][:3], [omega[0], omega[:3].sum(), 1.0], rtol=1e-8)
    assert np.isnan(res["fraction"][3])
    aligned = kernel_pca(10 * np.outer(y, y) / n + 0.01 * (v @ np.diag(lam / n) @ v.T), y, ks=(1,), top=3)
    assert aligned["fraction"][0] == pytest.approx(1.0, abs=1e-3)
    assert aligned["mutual_information"][0] == pytest.approx(np.log(2), abs=0.1)
    assert np.all(aligned["mutual_information"][1:] < 0.2)


def test_ntk_kpca_shares_the_gram_matrices(monkeypatch):
    """ntk and ntk_kpca together compute Theta_0 and Theta_end once; the kernel PCA is that of the stored Grams."""
    from dlphase.plugins.observables import ntk as ntk_module
    from dlphase.plugins.observables.kernel_pca import kernel_pca

    calls = []
    real = ntk_module.gram
    monkeypatch.setattr(ntk_module, "gram", lambda net, x: calls.append(1) or real(net, x))
    spec = _ntk_spec("observables.names=['errors','ntk','ntk_kpca']", "observables.ntk_kpca.k=[1,5,40]",
                     "grid.alpha_tilde=[0.1]")
    run = Run(spec, **spec.grid.points()[0])
    ds = run.train()
    assert len(calls) == 2
    y = run.data.y_kernel
    for key in ("init", "end"):
        ref = kernel_pca(ds[f"ntk_gram_{key}"].values, y, (1, 5, 40), 10)
        np.testing.assert_allclose(ds[f"kpca_fraction_{key}"].values, ref["fraction"], rtol=1e-10)
        np.testing.assert_allclose(ds[f"kpca_mi_{key}"].values, ref["mutual_information"], rtol=1e-10)
    assert list(ds["kpca_k"].values) == [1, 5, 40] and ds["kpca_fraction_end"].values[-1] == pytest.approx(1.0)
    assert ds["kpca_mi_end"].dims == ("kpca_eig",)


def test_ntk_kpca_mutual_information_in_the_papers_settings():
    """neighbors = 5 and mi_unit = "bit" (Fig. 11): the estimator's nats at k = 5, divided by ln 2, marked bit."""
    from dlphase.plugins.observables.kernel_pca import kernel_pca

    spec = _ntk_spec("observables.names=['errors','ntk','ntk_kpca']", "observables.ntk_kpca.neighbors=5",
                     'observables.ntk_kpca.mi_unit="bit"', "grid.alpha_tilde=[0.1]")
    run = Run(spec, **spec.grid.points()[0])
    ds = run.train()
    for key in ("init", "end"):
        ref = kernel_pca(ds[f"ntk_gram_{key}"].values, run.data.y_kernel, (1,), 10, neighbors=5)
        np.testing.assert_allclose(ds[f"kpca_mi_{key}"].values, ref["mutual_information"] / np.log(2), rtol=1e-10)
        assert ds[f"kpca_mi_{key}"].attrs["units"] == "bit"
    assert np.nanmax(ds["kpca_mi_end"].values) > 0


def test_ntk_along_the_trajectory_equals_runs_stopped_there():
    """Theta at checkpoint k is the NTK of the net at the first step with t >= t_k: the same point trained with
    max_time = t_k ends there, and its ntk_change must be the trajectory's value at k."""
    traj = ["observables.names=['errors','trajectory','ntk']", "observables.ntk.along_trajectory=true",
            "observables.trajectory.t_min=0.1", "observables.trajectory.per_decade=2", "grid.alpha_tilde=[0.1]"]
    spec = _ntk_spec(*traj)
    ds = Run(spec, **spec.grid.points()[0]).train()
    change = ds["ntk_change_traj"].values
    recorded = np.flatnonzero(np.isfinite(change))
    assert len(recorded) >= 4 and ds["ntk_eig_traj"].dims == ("time", "eig")
    assert np.all(np.isnan(change[recorded[-1] + 1:]))
    for k in (recorded[1], recorded[len(recorded) // 2]):
        t_k = float(ds["time"].values[k])
        alone = _ntk_spec(*traj, f"dynamics.max_time={t_k!r}")
        ds_k = Run(alone, **alone.grid.points()[0]).train()
        assert float(ds_k["t"]) == pytest.approx(float(ds["traj_t"].values[k]), rel=1e-12)
        assert float(ds_k["ntk_change"]) == pytest.approx(change[k], rel=1e-9)
        np.testing.assert_allclose(ds["ntk_eig_traj"].values[k], ds_k["ntk_eig_end"].values, rtol=1e-9)


def test_ntk_along_the_trajectory_needs_the_trajectory():
    with pytest.raises(SpecError, match="add 'trajectory' to observables.names"):
        _ntk_spec("observables.ntk.along_trajectory=true")
    raw = {"dataset": {"name": "mnist", "pca": 5, "n_kernel": 0}, "observables": {"names": ["ntk_kpca"]},
           "grid": {"h": [8], "alpha_tilde": [1.0], "P": [50]}}
    with pytest.raises(SpecError, match=r"observables\.ntk_kpca: .*n_kernel = 0"):
        dlphase.specs.build_spec(raw)
    with pytest.raises(SpecError, match=r"observables\.ntk_kpca\.k must list distinct"):
        _ntk_spec("observables.names=['ntk','ntk_kpca']", "observables.ntk_kpca.k=[0]")
