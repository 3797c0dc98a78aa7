"""cnn and mean_field against naive numpy forwards; gd and sgd against numpy iterations."""

import math
import re

import numpy as np
import pytest
import torch
from scipy.special import expit

import dlphase
from dlphase import AlphaModel, TorchData
from dlphase.plugins.architectures.activations import SWISH_SECOND_MOMENT
from dlphase.plugins.architectures.cnn import CNN
from dlphase.plugins.dynamics.gd import GD, SGD
from dlphase.plugins.losses import MSE
from dlphase.plugins.architectures.mean_field import MeanField
from tests.linear import Linear


def swish_np(z):
    return z * expit(10 * z) / math.sqrt(SWISH_SECOND_MOMENT)


def conv_np(x, w, stride, pad):
    """Naive cross-correlation: x (n, c, H, W), w (o, c, k, k)."""
    n, c, H, W = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    out = np.zeros((n, o, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_cnn_matches_naive_convolutions(bias):
    arch = CNN(depth=2, kernel_size=3, stride=2, padding=1, bias=bias)
    h, x = 4, np.random.default_rng(0).standard_normal((3, 2, 9, 9))
    net = arch.build(h, (2, 9, 9), torch.Generator().manual_seed(1))
    W = [w.detach().numpy() for w in net.weights]
    B = [b.detach().numpy() for b in net.biases] if bias else [0, 0]
    a1 = conv_np(x, W[0] / math.sqrt(2 * 9), 2, 1) + np.reshape(B[0], (1, -1, 1, 1))
    a2 = conv_np(swish_np(a1), W[1] / math.sqrt(h * 9), 2, 1) + np.reshape(B[1], (1, -1, 1, 1))
    f = swish_np(a2).mean(axis=(2, 3)) @ net.readout.detach().numpy() / math.sqrt(h)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), f, rtol=1e-12)
    assert sum(p.numel() for p in net.parameters()) == h * 2 * 9 + h * h * 9 + h + (2 * h if bias else 0)


def test_cnn_reference_topology_matches_naive_convolutions():
    """The reference code's two blocks of two 5 x 5 convolutions, strides 2, 1, 2, 1, padding 1: 28 -> 13 -> 11 ->
    5 -> 3 pixels."""
    arch = CNN(depth=4, kernel_size=5, padding=1, strides=(2, 1, 2, 1))
    h, x = 3, np.random.default_rng(2).standard_normal((2, 1, 28, 28))
    net = arch.build(h, (1, 28, 28), torch.Generator().manual_seed(3))
    W = [w.detach().numpy() for w in net.weights]
    a = x
    for i, (w, stride) in enumerate(zip(W, (2, 1, 2, 1))):
        a = conv_np(a if i == 0 else swish_np(a), w / math.sqrt(w.shape[1] * 25), stride, 1)
    assert a.shape[-2:] == (3, 3)
    f = swish_np(a).mean(axis=(2, 3)) @ net.readout.detach().numpy() / math.sqrt(h)
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), f, rtol=1e-12)


@pytest.mark.parametrize("raw, fragment", [
    ({"depth": 2, "strides": [2, 1, 2]}, "strides = [2, 1, 2] must give one stride >= 1 for each of the depth = 2"),
    ({"depth": 2, "strides": [2, 0]}, "strides = [2, 0] must give one stride >= 1"),
])
def test_cnn_topology_errors(raw, fragment):
    with pytest.raises(dlphase.SpecError, match=re.escape(fragment)):
        dlphase.specs.build_spec({"architecture": {"name": "cnn", **raw}, "dataset": {"pca": 0},
                                  "grid": {"h": 4, "alpha_tilde": 1.0, "P": 10}})
    # the image size is known once the data is loaded: the net refuses to shrink it to nothing
    with pytest.raises(ValueError, match=re.escape("leave no pixel after convolution 3 of 6 on (28, 28) images")):
        CNN(depth=6, padding=0).build(4, (1, 28, 28), torch.Generator().manual_seed(0))


def test_cnn_needs_images():
    with pytest.raises(dlphase.SpecError,
                       match="cnn takes images, but dataset.pca = 10 flattens them; set dataset.pca = 0"):
        dlphase.specs.build_spec({"architecture": {"name": "cnn"}, "grid": {"h": 4, "alpha_tilde": 1.0, "P": 10}})
    spec = dlphase.specs.build_spec({"architecture": {"name": "cnn"}, "dataset": {"pca": 0, "n_test": 50},
                                     "dynamics": {"max_steps": 30},
                                     "grid": {"h": 3, "alpha_tilde": 1.0, "P": 20}})
    ds = dlphase.Run(spec).train()
    assert ds["status"].item() in ("budget", "converged") and np.isfinite(float(ds["test_error"]))


def test_mean_field_matches_eq_7():
    h, d = 6, 4
    net = MeanField(activation="relu", bias=True).build(h, (d,), torch.Generator().manual_seed(2))
    x = np.random.default_rng(1).standard_normal((5, d))
    w1, b, w2 = (p.detach().numpy() for p in (net.w1, net.b, net.w2))
    f = np.maximum(x @ w1.T / math.sqrt(d) + b, 0) @ w2 / h
    np.testing.assert_allclose(net(torch.from_numpy(x)).detach().numpy(), f, rtol=1e-12)


MF_SPEC = """
[dataset]
name = "stripe"
d = 3
n_test = 200

[architecture]
name = "mean_field"
activation = "relu"
bias = true

[dynamics]
name = "gradient_flow"
loss = "hinge"
max_steps = 20000

[grid]
h = [16]
alpha_tilde = [30.0]
P = [40]
seed = [0]
"""


def test_mean_field_at_alpha_tilde_is_fc_of_depth_1_at_alpha_tilde(tmp_path):
    """From the same weights, mean_field and fc (depth 1, biases) give the same f at the same alpha_tilde, and
    train to the same predictor at the same flow time in the reference's units (dlphase's t differs by h)."""
    path = tmp_path / "s.toml"
    path.write_text(MF_SPEC)
    mf_spec = dlphase.load_spec(path)
    fc_spec = dlphase.load_spec(path, ["architecture.name=fc", "architecture.depth=1"])
    fc, mf = dlphase.Run(fc_spec), dlphase.Run(mf_spec)
    assert fc.alpha == pytest.approx(30.0 / 4) and mf.alpha == pytest.approx(30.0)
    with torch.no_grad():
        for net in (mf.model.net, mf.model.net0):
            net.w1.copy_(fc.model.net.weights[0])
            net.b.copy_(fc.model.net.biases[0])
            net.w2.copy_(fc.model.net.weights[1][0])
    x = fc.tensors.x_test
    torch.testing.assert_close(fc.model.net(x) / 4, mf.model.net(x), rtol=1e-12, atol=1e-14)  # 1/sqrt(h) vs 1/h
    fc_ds, mf_ds = fc.train(), mf.train()
    assert fc_ds["status"].item() == mf_ds["status"].item() == "converged"
    scale = float(np.abs(fc_ds["f_test"]).max())
    np.testing.assert_allclose(mf_ds["f_test"], fc_ds["f_test"], rtol=0, atol=2e-3 * scale)
    assert float(mf_ds["t"]) == pytest.approx(16 * float(fc_ds["t"]), rel=0.05)
    assert float(mf_ds["t_reference"]) == pytest.approx(float(fc_ds["t_reference"]), rel=0.05)
    assert float(fc_ds["t_reference"]) == pytest.approx(float(fc_ds["t"]) * 16 / 30.0)


def problem():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 3))
    y = np.sign(rng.standard_normal(12))
    w0 = rng.standard_normal(3)
    return x, y, w0, TorchData(x_train=torch.from_numpy(x), y_train=torch.from_numpy(y),
                               x_test=torch.from_numpy(x), y_test=torch.from_numpy(y))


def numpy_descent(x, y, w0, alpha, lr, steps, momentum=0.0, wd=0.0, toward_init=False):
    """w <- w - lr (grad of mean (1 - y f)^2 / 2 / alpha^2 + wd (w - w_ref)), w_ref = 0 or w0, with heavy-ball
    momentum."""
    w, v = w0.copy(), np.zeros_like(w0)
    for _ in range(steps):
        f = alpha * x @ (w - w0)
        g = (-(1 - y * f) * y)[:, None] * x * alpha / len(y) / alpha ** 2
        g = g.sum(0) + wd * (w - (w0 if toward_init else 0))
        v = momentum * v + g
        w = w - lr * v
    return w


def test_gd_matches_numpy():
    x, y, w0, data = problem()
    model = AlphaModel(Linear(w0), alpha=0.5)
    res = GD(loss=MSE(), lr=0.05, max_steps=40).train(model, data)
    assert res.status == "budget" and res.steps == 40 and res.t == pytest.approx(2.0)
    np.testing.assert_allclose(model.net.w.detach().numpy(), numpy_descent(x, y, w0, 0.5, 0.05, 40), rtol=1e-12)


@pytest.mark.parametrize("momentum, wd, toward", [(0.0, 0.0, "zero"), (0.9, 0.0, "zero"), (0.5, 0.01, "zero"),
                                                  (0.5, 0.3, "init")])
def test_full_batch_sgd_matches_numpy(momentum, wd, toward):
    x, y, w0, data = problem()
    model = AlphaModel(Linear(w0), alpha=2.0)
    res = SGD(loss=MSE(), lr=0.03, batch_size=12, momentum=momentum, weight_decay=wd, decay_toward=toward,
              max_steps=25).train(model, data)
    assert res.steps == 25
    np.testing.assert_allclose(model.net.w.detach().numpy(),
                               numpy_descent(x, y, w0, 2.0, 0.03, 25, momentum, wd, toward == "init"), rtol=1e-11)


@pytest.mark.parametrize("toward", ["zero", "init"])
def test_gd_weight_decay_pulls_toward_zero_or_theta_0(toward):
    """GD with a strong decay toward theta_0 stays near theta_0 (f stays near 0); toward zero it shrinks theta."""
    x, y, w0, data = problem()
    model = AlphaModel(Linear(w0), alpha=0.5)
    GD(loss=MSE(), lr=0.05, weight_decay=0.5, decay_toward=toward, max_steps=40).train(model, data)
    w = model.net.w.detach().numpy()
    np.testing.assert_allclose(w, numpy_descent(x, y, w0, 0.5, 0.05, 40, 0.0, 0.5, toward == "init"), rtol=1e-12)
    plain = numpy_descent(x, y, w0, 0.5, 0.05, 40)
    if toward == "init":
        assert np.linalg.norm(w - w0) < np.linalg.norm(plain - w0)
    else:
        assert np.linalg.norm(w) < np.linalg.norm(plain)


def test_sgd_minibatches_converge_and_depend_on_their_seed():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 2))
    y = np.sign(x[:, 0])
    x[:, 0] += y  # a margin of at least 1 along x_1
    data = TorchData(x_train=torch.from_numpy(x), y_train=torch.from_numpy(y), x_test=torch.from_numpy(x),
                     y_test=torch.from_numpy(y))
    runs = []
    for seed in (0, 0, 1):
        model = AlphaModel(Linear([0.0, 0.0]), alpha=1.0)
        res = SGD(lr=0.5, batch_size=8, seed=seed, max_steps=5000).train(model, data)
        assert res.status == "converged"
        runs.append(model.net.w.detach().numpy().copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
