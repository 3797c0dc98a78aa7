"""The adaptive gradient flow, against an independent numpy re-implementation and exact solutions."""

import numpy as np
import pytest
import torch

from dlphase import AlphaModel, TorchData
from dlphase.plugins.dynamics.gradient_flow import GradientFlow
from dlphase.plugins.losses import Hinge, SoftHinge
from tests.linear import Linear, data


def test_hinge_on_one_point_is_exact():
    """f~ = w x, x = 1, y = 1, hinge: f(t) = t exactly, so the reference rule stops at the first step with f >= 1."""
    model = AlphaModel(Linear([0.3]), alpha=2.0)
    res = GradientFlow(loss=Hinge(), rule="reference").train(model, data([[1.0]], [1.0]))
    assert res.status == "converged"
    f = float(model(torch.ones(1, 1, dtype=torch.float64)).detach())
    assert f == pytest.approx(res.t, rel=1e-12)  # f = t along the flow
    assert 1.0 <= f < 1.1
    # dt = 1 moves f by 1 (rejected), dt = 0.1 by 0.1 (rejected: strict <), dt = 0.01 accepted
    assert res.rejected == 2


def test_hinge_on_one_point_slides_onto_the_kink():
    """f~ = w x, x = 0.7, y = 1, hinge, robust rule: f grows at x^2 = 0.49 until the sliding band [0.98, 1.02],
    where the Filippov force relaxes f to 1 + 1e-4 over tau = 2 dt (an Euler step of this linear model then
    halves the distance exactly). The same flow by hand, step for step."""
    model = AlphaModel(Linear([0.3]), alpha=2.0)
    res = GradientFlow(loss=Hinge()).train(model, data([[0.7]], [1.0]))
    assert res.status == "converged"
    f = float(model(torch.full((1, 1), 0.7, dtype=torch.float64)).detach())
    # dgrad = 0 (the model is linear and the coefficients frozen), so err = dout / 0.1 and
    # dt <- dt clip(0.9 / err, 0.1, 1.2); the speed is 0.49 below the band, min(0.49, (1 + 1e-4 - f) / (2 dt))
    # inside it, with dt the step that the force is set for
    f_t, t, dt, steps, rejected, speed = 0.0, 0.0, 1.0, 0, 0, 0.49
    while f_t < 1:
        err = dt * speed / 0.1
        if err <= 1:
            f_t, t, steps = f_t + dt * speed, t + dt, steps + 1
        else:
            rejected += 1
        dt *= min(max(0.9 / err, 0.1), 1.2)
        if err <= 1:
            speed = 0.49 if f_t < 0.98 else min(0.49, max(0.0, (1 + 1e-4 - f_t) / (2 * dt)))
    assert (res.steps, res.rejected) == (steps, rejected) and steps < 40
    assert f == pytest.approx(f_t, rel=1e-12) and res.t == pytest.approx(t, rel=1e-12)
    assert 1.0 <= f < 1 + 1e-4


def reference_scheme(w0, x, y, alpha, beta, max_dgrad=1e-4, max_dout=0.1, max_steps=10**6):
    """The reference scheme for f = alpha x.(w - w0), soft hinge, in plain numpy."""
    def grad(w):
        m = y * alpha * (x @ (w - w0))
        lp = -1 / (1 + np.exp(-beta * (1 - m)))  # d/dm softplus(beta (1 - m)) / beta
        return (lp * y)[:, None] * x / alpha / len(y)  # d(L / alpha^2)/dw per sample, summed below

    w = w0.copy()
    out, g = alpha * x @ (w - w0), grad(w).sum(0)
    dt, t, steps, rejected = 1.0, 0.0, 0, 0
    while not np.all(y * out >= 1) and steps + rejected < max_steps:
        w_new = w - dt * g
        out_new, g_new = alpha * x @ (w_new - w0), grad(w_new).sum(0)
        dgrad = np.sum((g_new - g) ** 2) / (np.linalg.norm(g) * np.linalg.norm(g_new))
        dout = np.max(np.abs(out_new - out))
        if dgrad < max_dgrad and dout < max_dout:
            w, out, g, t, steps = w_new, out_new, g_new, t + dt, steps + 1
            if dgrad < max_dgrad / 2 and dout < max_dout / 2:
                dt *= 1.1
        else:
            rejected += 1
            dt /= 10
    return w, t, steps, rejected


def test_matches_independent_implementation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 3))
    y = np.sign(x[:, 0] + 0.3 * x[:, 1])
    w0 = rng.standard_normal(3)
    alpha = 0.7
    w_ref, t_ref, steps_ref, rej_ref = reference_scheme(w0, x, y, alpha, beta=20.0)
    model = AlphaModel(Linear(w0), alpha=alpha)
    res = GradientFlow(loss=SoftHinge(beta=20.0), rule="reference").train(model, data(x, y))
    assert res.status == "converged"
    assert (res.steps, res.rejected) == (steps_ref, rej_ref)
    assert res.t == pytest.approx(t_ref, rel=1e-10)
    np.testing.assert_allclose(model.net.w.detach().numpy(), w_ref, rtol=1e-9)


def test_budgets_and_statuses():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 2))
    y = np.where(rng.random(30) < 0.5, 1.0, -1.0)  # random labels: a linear model cannot fit them
    model = AlphaModel(Linear([0.1, -0.2]), alpha=1.0)
    res = GradientFlow(max_steps=50).train(model, data(x, y))
    assert res.status == "budget" and res.steps + res.rejected == 50 and "max_steps" in res.message
    res = GradientFlow(max_time=0.5).train(AlphaModel(Linear([0.1, -0.2]), alpha=1.0), data(x, y))
    assert res.status == "budget" and 0.5 <= res.t and "max_time" in res.message
    res = GradientFlow(max_seconds=0.05).train(AlphaModel(Linear([0.1, -0.2]), alpha=1.0), data(x, y))
    assert res.status == "budget" and "max_seconds" in res.message and res.wall_seconds >= 0.05


def test_nan_is_diverged():
    model = AlphaModel(Linear([0.1, 0.2]), alpha=1.0)
    x = torch.tensor([[float("nan"), 1.0]], dtype=torch.float64)
    res = GradientFlow().train(model, TorchData(x_train=x, y_train=torch.ones(1, dtype=torch.float64),
                                                x_test=x, y_test=torch.ones(1, dtype=torch.float64)))
    assert res.status == "diverged"
