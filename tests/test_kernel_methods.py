"""Kernel methods as dynamics: their predictors against scikit-learn and linear algebra done by hand, the
kernel flow against the lazy net it stands for, and the kernels against their formulas."""

import numpy as np
import pytest
import torch

import dlphase
from dlphase.ensemble_net import ntk_by_loop
from dlphase.errors import SpecError
from dlphase.grid_point import Run
from dlphase.specs import apply_overrides, build_spec


def _spec(dynamics, *overrides, architecture=None):
    raw = {"dataset": {"name": "mnist", "pca": 5, "n_test": 150},
           "architecture": architecture or {"name": "fc", "depth": 2, "activation": "relu"},
           "dynamics": dynamics,
           "grid": {"h": [20], "alpha_tilde": [1e4], "P": [80]}}
    return build_spec(apply_overrides(raw, list(overrides)))


def _train(dynamics, *overrides, **kw):
    run = Run(_spec(dynamics, *overrides, **kw))
    return run, run.train()


def _np(t):
    return t.detach().cpu().numpy()


def test_svm_equals_sklearn_on_the_same_kernel():
    from sklearn.svm import SVC

    run, ds = _train({"name": "svm", "kernel": "laplace", "bandwidth": 2.0, "C": 10.0})
    xtr, xte = _np(run.tensors.x_train), _np(run.tensors.x_test)
    dist = np.linalg.norm(xte[:, None] - xtr[None], axis=-1)
    k_test = np.exp(-dist / 2.0)
    k_train = np.exp(-np.linalg.norm(xtr[:, None] - xtr[None], axis=-1) / 2.0)
    svc = SVC(C=10.0, kernel="precomputed", tol=1e-6).fit(k_train, run.data.y_train)
    np.testing.assert_allclose(ds["f_test"].values, svc.decision_function(k_test), rtol=1e-5, atol=1e-6)
    assert ds["status"].item() == "converged" and "support vectors" in ds["message"].item()
    assert float(ds["test_error"]) < 0.35


def test_ridge_is_the_regularised_solve():
    run, ds = _train({"name": "ridge", "kernel": "ntk_infinite", "ridge": 1e-3})
    xtr, xte = run.tensors.x_train, run.tensors.x_test
    arch = run.spec.architecture
    k = arch.infinite_kernels(xtr)["ntk"].numpy()
    k_test = arch.infinite_kernels(xte, xtr)["ntk"].numpy()
    a = np.linalg.solve(k + 1e-3 * np.eye(len(k)), run.data.y_train)
    np.testing.assert_allclose(ds["f_test"].values, k_test @ a, rtol=1e-7, atol=1e-9)


def test_gaussian_kernel_with_the_median_bandwidth():
    run, ds = _train({"name": "ridge", "kernel": "gaussian", "ridge": 1e-2})
    xtr, xte = _np(run.tensors.x_train), _np(run.tensors.x_test)
    d_train = np.linalg.norm(xtr[:, None] - xtr[None], axis=-1)
    sigma = np.median(d_train[np.triu_indices(len(xtr), 1)])
    k = np.exp(-d_train ** 2 / (2 * sigma ** 2))
    k_test = np.exp(-np.linalg.norm(xte[:, None] - xtr[None], axis=-1) ** 2 / (2 * sigma ** 2))
    a = np.linalg.solve(k + 1e-2 * np.eye(len(k)), run.data.y_train)
    np.testing.assert_allclose(ds["f_test"].values, k_test @ a, rtol=1e-7, atol=1e-9)


def test_kernel_flow_on_theta0_follows_the_lazy_net():
    """df/dt = -Theta_0 dL/df is the net's own flow as alpha_tilde -> infinity, in the same time units:
    the kernel flow on ntk_init and the net at alpha_tilde = 1e4 converge at about the same t, to about
    the same f."""
    tight, swish = ["dynamics.max_dout=0.01"], {"name": "fc", "depth": 2, "activation": "swish"}
    run_k, ds_k = _train({"name": "kernel", "kernel": "ntk_init"}, *tight, architecture=swish)
    run_n, ds_n = _train({"name": "gradient_flow", "rule": "reference"}, *tight, architecture=swish)
    assert ds_k["status"].item() == ds_n["status"].item() == "converged"
    assert float(ds_k["t"]) == pytest.approx(float(ds_n["t"]), rel=0.05)
    f_k, f_n = ds_k["f_test"].values, ds_n["f_test"].values
    assert np.linalg.norm(f_k - f_n) / np.linalg.norm(f_n) < 0.02
    # the kernel is the run's Theta_0, by the per-sample loop
    k = run_k.model.predictor.gram(run_k.tensors.x_train)
    np.testing.assert_allclose(_np(k), _np(ntk_by_loop(run_k.model.net0, run_k.tensors.x_train)), rtol=1e-9)


def test_ntk_final_trains_the_net_first():
    run, ds = _train({"name": "kernel", "kernel": "ntk_final",
                      "net_dynamics": {"name": "gradient_flow", "max_steps": 300}}, "grid.alpha_tilde=[1.0]")
    assert "net trained by gradient_flow" in ds["message"].item()
    net, net0 = run.model.net, run.model.net0
    assert any(not torch.equal(p, p0) for p, p0 in zip(net.parameters(), net0.parameters()))
    k = run.model.predictor.gram(run.tensors.x_train)
    np.testing.assert_allclose(_np(k), _np(ntk_by_loop(net, run.tensors.x_train)), rtol=1e-9)
    assert ds["status"].item() == "converged"


@pytest.mark.parametrize("dynamics,arch,match", [
    ({"name": "svm", "kernel": "ntk_infinite"}, {"name": "mean_field"}, r"dynamics: kernel = .ntk_infinite. needs"),
    ({"name": "svm", "kernel": "ntk_init", "bandwidth": 1.0}, None, r"bandwidth is a parameter of the laplace"),
    ({"name": "kernel", "net_dynamics": "gd"}, None, r"net_dynamics trains the net for kernel = 'ntk_final'"),
    ({"name": "ridge", "kernel": "rbf"}, None, r"dynamics\.kernel = 'rbf' is invalid"),
    ({"name": "svm", "C": -1.0}, None, r"dynamics\.C must be > 0"),
    ({"name": "kernel", "kernel": "ntk_final", "net_dynamics": "svm"}, None, r"net_dynamics must train the net"),
])
def test_bad_kernel_specs(dynamics, arch, match):
    with pytest.raises(SpecError, match=match):
        _spec(dynamics, architecture=arch)


def test_kernel_methods_take_no_trajectory():
    raw = {"dynamics": {"name": "svm"}, "observables": {"names": ["errors", "trajectory"]},
           "grid": {"h": [20], "alpha_tilde": [1.0], "P": [80]}}
    with pytest.raises(SpecError, match="records no checkpoints"):
        build_spec(raw)


def test_registered():
    names = dlphase.get_manager().names("dynamics")
    assert {"kernel", "svm", "ridge"} <= set(names)
