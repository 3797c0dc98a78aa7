"""The empirical NTK of ensembles: the layer-by-layer fc kernel, torch.func's Jacobians, and a loop of
per-sample autograd gradients must give the same Gram matrices."""

import pytest
import torch

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
