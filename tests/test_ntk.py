"""The empirical NTK of ensembles: the layer-by-layer fc kernel, torch.func's Jacobians, and a loop of
per-sample autograd gradients must give the same Gram matrices."""

import numpy as np
import pytest
import torch

import dlphase
from dlphase.errors import SpecError
from dlphase.run import Run

from dlphase.ensemble import EnsembleNet, ensemble_of, ntk_by_loop
from dlphase.plugins.cnn import CNN
from dlphase.plugins.fc import FC
from dlphase.plugins.mean_field import MeanField

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


def test_generic_ntk_for_the_cnn_matches_the_loop():
    nets = _nets(CNN(depth=2, kernel_size=3), 3, (1, 6, 6), n=2)
    x = torch.randn(7, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ens = ensemble_of(nets)
    theta = ens.ntk(ens.stack(nets), x, chunk=3)
    for m, net in enumerate(nets):
        torch.testing.assert_close(theta[m], ntk_by_loop(net, x), rtol=1e-10, atol=1e-12)


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
