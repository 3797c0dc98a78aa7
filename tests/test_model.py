"""The fc net, activations, losses and the alpha trick, against hand-written formulas."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import expit

from dlphase import AlphaModel, alpha_of
from dlphase.plugins.architectures.activations import (ACTIVATIONS, DERIVATIVES, FUSED, SECOND_DERIVATIVES,
                                                      SWISH_SECOND_MOMENT, swish)
from dlphase.plugins.architectures.fc import FC
from dlphase.plugins.losses import MSE, CrossEntropy, Hinge, QuadraticHinge, SoftHinge


def test_swish_is_normalised():
    """E[sigma(z)^2] = 1 for z ~ N(0,1), by adaptive quadrature."""
    m, _ = quad(lambda z: (z * expit(10 * z)) ** 2 * np.exp(-z * z / 2) / np.sqrt(2 * np.pi),
                -np.inf, np.inf, epsabs=1e-14, epsrel=1e-14)
    assert SWISH_SECOND_MOMENT == pytest.approx(m, rel=1e-12)
    z = torch.linspace(-3, 3, 7, dtype=torch.float64)
    expected = z.numpy() * expit(10 * z.numpy()) / math.sqrt(m)
    np.testing.assert_allclose(swish(z).numpy(), expected, rtol=1e-13)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_fused_activation_forms(name):
    """c_out act(c_in a) = sigma(a), and c_in c_out act'(c_in a) = sigma'(a) = autograd's and DERIVATIVES';
    SECOND_DERIVATIVES' sigma'' = autograd's second derivative."""
    act, act_backward, c_in, c_out = FUSED[name]
    a = torch.linspace(-2, 2, 41, dtype=torch.float64)[1::2].requires_grad_(True)  # avoids relu's 0
    sigma = ACTIVATIONS[name](a)
    (auto,) = torch.autograd.grad(sigma.sum(), a, create_graph=True)
    (second,) = torch.autograd.grad(auto.sum(), a, allow_unused=True)
    second = torch.zeros_like(a) if second is None else second
    auto = auto.detach()
    u = c_in * a.detach()
    torch.testing.assert_close(c_out * act(u), sigma.detach(), rtol=1e-14, atol=1e-15)
    fused = c_in * c_out * act_backward(torch.ones_like(u), u, act(u))
    torch.testing.assert_close(fused, auto, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(DERIVATIVES[name](a.detach()), auto, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(SECOND_DERIVATIVES[name](a.detach()), second.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_fc_forward_matches_formula(bias, activation):
    """a1 = W1 x / sqrt(d) + B1, a2 = W2 s(a1) / sqrt(h) + B2, f~ = W3 s(a2) / sqrt(h), in numpy."""
    d, h, n = 5, 7, 4
    net = FC(depth=2, activation=activation, bias=bias).build(h, (d,), torch.Generator().manual_seed(3))
    x = np.random.default_rng(0).standard_normal((n, d))
    W = [w.detach().numpy() for w in net.weights]
    B = [b.detach().numpy() for b in net.biases] if bias else [0, 0]
    s = (lambda z: np.maximum(z, 0)) if activation == "relu" else \
        (lambda z: z * expit(10 * z) / math.sqrt(SWISH_SECOND_MOMENT))
    a1 = x @ W[0].T / math.sqrt(d) + B[0]
    a2 = s(a1) @ W[1].T / math.sqrt(h) + B[1]
    f = s(a2) @ W[2].T / math.sqrt(h)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), f[:, 0], rtol=1e-12)
    n_params = d * h + h * h + h + (2 * h if bias else 0)
    assert sum(p.numel() for p in net.parameters()) == n_params


def test_fc_init_variance_is_one():
    """With normalised swish and |x| = sqrt(d), Var f~(x) over initialisations -> E[sigma^2] = 1."""
    d, h = 10, 300
    x = torch.randn(1, d, dtype=torch.float64)
    x = x / x.norm() * math.sqrt(d)
    with torch.no_grad():
        outs = [float(FC().build(h, (d,), torch.Generator().manual_seed(s))(x)) for s in range(600)]
    # the finite-width correction is O(1/h); the sampling error of a variance over 600 draws ~6%
    assert np.var(outs) == pytest.approx(1.0, abs=0.2)


def test_alpha_model_is_zero_at_init_and_scales():
    h = 16
    net = FC().build(h, (3,), torch.Generator().manual_seed(0))
    model = AlphaModel(net, alpha_of(1e3, h))
    assert model.alpha == pytest.approx(1e3 / 4)
    x = torch.randn(10, 3, dtype=torch.float64)
    assert torch.equal(model(x), torch.zeros(10, dtype=torch.float64))
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.01)
    expected = model.alpha * (model.net(x) - model.net0(x))
    torch.testing.assert_close(model(x), expected)
    assert model.displacement() == pytest.approx(0.01 * math.sqrt(model.n_params()))
    assert not any(p.requires_grad for p in model.net0.parameters())


def test_losses_by_hand():
    m = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    delta = 1 - m.numpy()
    np.testing.assert_allclose(Hinge()(m).numpy(), np.maximum(delta, 0))
    np.testing.assert_allclose(QuadraticHinge(offset=0)(m).numpy(), np.maximum(delta, 0) ** 2 / 2)
    np.testing.assert_allclose(QuadraticHinge()(m).numpy(), np.maximum(delta + 1e-3, 0) ** 2 / 2)
    assert QuadraticHinge()(torch.tensor([1.0005], dtype=torch.float64)).item() == pytest.approx(0.5 * 0.0005 ** 2)
    np.testing.assert_allclose(SoftHinge(beta=20)(m).numpy(), np.log1p(np.exp(20 * delta)) / 20, rtol=1e-12)
    np.testing.assert_allclose(CrossEntropy()(m).numpy(), np.log1p(np.exp(-m.numpy())), rtol=1e-12)
    np.testing.assert_allclose(MSE()(m).numpy(), delta ** 2 / 2)
    # the soft hinge tends to the hinge as beta grows
    np.testing.assert_allclose(SoftHinge(beta=1e4)(m).numpy(), np.maximum(delta, 0), atol=1e-4)
