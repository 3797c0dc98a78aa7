"""The infinite-width NNGP and NTK of fc nets, against closed forms, Monte Carlo over initialisations and
the empirical NTK of wide nets (whose gap to the limit must shrink like h^(-1/2))."""

import math

import numpy as np
import pytest
import torch

from dlphase.ensemble_net import ensemble_of
from dlphase.plugins.architectures import infinite_width as iw
from dlphase.plugins.architectures.activations import ACTIVATIONS, DERIVATIVES
from dlphase.plugins.architectures.fc import FC


def _x(n=12, d=6, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_quadrature_of_relu_equals_the_arccosine_formulas():
    """Two independent routes to E[relu relu] and E[relu' relu']: the split Gauss-Legendre rule and Cho & Saul's."""
    x = _x()
    q = (x * x).sum(1) / 6
    cov = x @ x.T / 6
    ss, dd = iw._quadrature_terms(torch.relu, DERIVATIVES["relu"], q, q, cov, 32)
    sa, da = iw._arccos_terms(q, q, cov)
    torch.testing.assert_close(ss, sa, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(dd, da, rtol=1e-8, atol=1e-9)
    # by hand: orthogonal unit-variance inputs give E[relu relu] = 1 / (2 pi), E[relu' relu'] = 1/4
    one = torch.ones(2, dtype=torch.float64)
    ss, dd = iw._arccos_terms(one, one, torch.eye(2, dtype=torch.float64))
    assert float(ss[0, 1]) == pytest.approx(1 / (2 * math.pi), rel=1e-12)
    assert float(dd[0, 1]) == pytest.approx(0.25, rel=1e-12)
    assert float(ss[0, 0]) == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("activation", ["swish", "tanh"])
def test_quadrature_converges(activation):
    x = _x(8)
    ref = iw.fc_kernels(x, depth=2, activation=activation, bias=True, quadrature=80)["ntk"]
    k = iw.fc_kernels(x, depth=2, activation=activation, bias=True, quadrature=32)["ntk"]
    torch.testing.assert_close(k, ref, rtol=1e-4, atol=0)


@pytest.mark.parametrize("activation,bias", [("relu", True), ("swish", False), ("tanh", True)])
def test_one_hidden_layer_kernels_are_the_mean_over_initialisations(activation, bias):
    """With one hidden layer, E over the weights of the empirical NTK, and of f~(x) f~(x'), equal the limit
    at any h: a Monte Carlo average over many nets checks the recursion's first step and its bias terms."""
    arch = FC(depth=1, activation=activation, bias=bias)
    x = _x(6, 5)
    limit = arch.infinite_kernels(x)
    nets = [arch.build(64, (5,), torch.Generator().manual_seed(s)) for s in range(3000)]
    ens = ensemble_of(nets)
    params = ens.stack(nets)
    f, _ = ens.forward(params, x)                                   # (M, n)
    nngp = f.T @ f / len(nets)
    theta = ens.ntk(params, x).mean(0)
    for name, mc, tol in (("nngp", nngp, 0.08), ("ntk", theta, 0.01)):
        err = float(torch.linalg.norm(mc - limit[name]) / torch.linalg.norm(limit[name]))
        assert err < tol, (name, err)


@pytest.mark.parametrize("arch", [FC(depth=2, activation="relu", bias=True), FC(depth=3, activation="relu"),
                                  FC(depth=2, activation="swish")], ids=["relu-bias", "relu-L3", "swish"])
def test_empirical_ntk_converges_like_inverse_sqrt_h(arch):
    x = _x(16, 8)
    limit = arch.infinite_kernels(x)["ntk"]
    widths = [128, 512, 2048]
    gaps = []
    for h in widths:
        nets = [arch.build(h, (8,), torch.Generator().manual_seed(100 + s)) for s in range(6)]
        ens = ensemble_of(nets)
        theta = ens.ntk(ens.stack(nets), x)
        gaps.append(float((torch.linalg.norm(theta - limit, dim=(1, 2)) / torch.linalg.norm(limit)).mean()))
    slope = np.polyfit(np.log(widths), np.log(gaps), 1)[0]
    assert -0.7 < slope < -0.3, (gaps, slope)
    assert gaps[-1] < 0.1


def test_cross_kernels_are_blocks_of_the_joint_one():
    x = _x(10)
    for activation in ("relu", "swish"):
        joint = iw.fc_kernels(x, depth=2, activation=activation, bias=True, quadrature=16)
        cross = iw.fc_kernels(x[:4], x[4:], depth=2, activation=activation, bias=True, quadrature=16)
        for name in ("nngp", "ntk"):
            torch.testing.assert_close(cross[name], joint[name][:4, 4:], rtol=1e-10, atol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match="features"):
        iw.fc_kernels(_x(3, 4), _x(3, 5), depth=1, activation="relu", bias=False)
    with pytest.raises(ValueError, match="zero norm"):
        iw.fc_kernels(torch.zeros(2, 3, dtype=torch.float64), depth=1, activation="relu", bias=False)
    assert set(ACTIVATIONS) == {"swish", "relu", "tanh"}  # each has a limit (quadrature or closed form)


@pytest.mark.parametrize("activation,bias", [("swish", False), pytest.param("swish", True, marks=pytest.mark.slow),
                                             pytest.param("tanh", True, marks=pytest.mark.slow)])
def test_the_table_equals_direct_quadrature(activation, bias):
    """Interpolation over (log q, log q', theta) reproduces pair-by-pair quadrature, for inputs whose norms
    spread over a factor of about 10 and for cross kernels."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 7, dtype=torch.float64, generator=g) * torch.exp(
        0.5 * torch.randn(40, 1, dtype=torch.float64, generator=g))
    direct = iw.fc_kernels(x, depth=2, activation=activation, bias=bias, method="direct")
    table = iw.fc_kernels(x, depth=2, activation=activation, bias=bias, method="table")
    cross = iw.fc_kernels(x[:15], x[15:], depth=2, activation=activation, bias=bias, method="table")
    for name in ("nngp", "ntk"):
        scale = float(direct[name].abs().max())
        assert float((table[name] - direct[name]).abs().max()) < 3e-5 * scale
        assert float((cross[name] - direct[name][:15, 15:]).abs().max()) < 3e-5 * scale
    with pytest.raises(ValueError, match="method must be"):
        iw.fc_kernels(x, depth=1, activation="tanh", bias=False, method="fast")
