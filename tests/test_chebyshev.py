"""The chebyshev rule of gradient_flow: its scheme's stability polynomial, and its flow against an exact one."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from dlphase import AlphaModel, TorchData
from dlphase.plugins.dynamics.integrator.chebyshev import rkc_coefficients, stages_for
from dlphase.plugins.dynamics.gradient_flow import GradientFlow
from dlphase.plugins.losses import SoftHinge
from tests.linear import Linear, data


def stability_polynomial(s: int, z: np.ndarray) -> np.ndarray:
    """R_s(z): one step of the scheme on y' = lambda y, y_0 = 1, z = lambda dt, stage by stage."""
    mu1, stages, _ = rkc_coefficients(s)
    prev2, prev = np.ones_like(z), 1 + mu1 * z
    for mu, nu, mu_t, gamma_t in stages:
        prev2, prev = prev, (1 - mu - nu) + mu * prev + nu * prev2 + mu_t * z * prev + gamma_t * z
    return prev


@pytest.mark.parametrize("s", [2, 3, 5, 10, 40, 200])
def test_scheme_is_second_order_and_stable_on_its_interval(s):
    _, _, beta = rkc_coefficients(s)
    # second order: R(z) = 1 + z + z^2 / 2 + O(z^3)
    for z in (1e-2, -1e-2, -3e-3):
        taylor = 1 + z + z * z / 2
        assert abs(stability_polynomial(s, np.array(z)) - taylor) < 0.2 * abs(z) ** 3 * s ** 2
    # stable on [-beta, 0], with beta close to the damped Chebyshev interval 2 w0 / w1 ~ 0.65 s^2 for large s
    z = -np.linspace(0, beta, 20001)
    assert np.abs(stability_polynomial(s, z)).max() <= 1 + 1e-9
    assert np.abs(stability_polynomial(s, np.array(-1.3 * beta))) > 1
    if s >= 10:
        assert 0.6 * s * s < beta < 0.67 * s * s


def test_stages_chosen_are_stable():
    for dt_rho in np.logspace(-2, 4, 200):
        s = stages_for(float(dt_rho))
        assert rkc_coefficients(s)[2] >= dt_rho and (s == 2 or rkc_coefficients(s - 1)[2] < 1.2 * dt_rho)


def stiff_problem():
    """f~ = w . x on points whose coordinates differ in scale by 400: the Hessian's eigenvalues span 1e5, so
    Euler steps are held by the stiff direction long after it has relaxed."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 3)) * np.array([100.0, 1.0, 0.05])
    y = np.sign(x[:, 1] + 0.5 * rng.standard_normal(40))
    w0 = rng.standard_normal(3) * 0.1
    return x, y, w0


def exact_flow(w0, x, y, alpha, beta, t):
    """theta(t) of dw/dt = -d(L / alpha^2)/dw for f = alpha x.(w - w0), soft hinge, by a tight implicit solver."""
    def velocity(_, w):
        m = y * alpha * (x @ (w - w0))
        lp = -1 / (1 + np.exp(-beta * (1 - m)))
        return -((lp * y) @ x) / (alpha * len(y))

    def jacobian(_, w):
        m = y * alpha * (x @ (w - w0))
        s = 1 / (1 + np.exp(-beta * (1 - m)))
        lpp = beta * s * (1 - s)
        return -(x.T * lpp) @ x / len(y)

    sol = solve_ivp(velocity, (0, t), w0, method="Radau", jac=jacobian, rtol=1e-12, atol=1e-14)
    return sol.y[:, -1]


@pytest.mark.parametrize("max_error,tol", [(1e-2, 3e-3), (1e-4, 3e-5)])
def test_follows_the_exact_flow(max_error, tol):
    """Stopped by max_time, the run's w is the flow's w at the run's own t, to the accuracy max_error asks."""
    x, y, w0 = stiff_problem()
    alpha, t_end = 0.5, 2.0
    model = AlphaModel(Linear(w0), alpha=alpha)
    train = data(x, y)
    flow = GradientFlow(loss=SoftHinge(beta=20.0), rule="chebyshev", max_error=max_error, max_time=t_end)
    res = flow.train(model, train)
    assert res.status == "budget" and t_end <= res.t
    w = model.net.w.detach().numpy()
    w_exact = exact_flow(w0, x, y, alpha, 20.0, res.t)
    assert np.abs(w - w_exact).max() <= tol * np.abs(w_exact - w0).max()


def test_takes_far_fewer_gradients_than_euler_on_a_stiff_flow(monkeypatch):
    """The same flow to the same time: the robust rule's Euler steps stay below 2 / rho, while the chebyshev
    rule's steps grow past it with a few stages each. Counted: the forward passes that take a gradient."""
    from dlphase.ensemble_net import EnsembleNet

    calls = []
    forward = EnsembleNet.forward

    def counted(self, params, x, grad=False):
        calls.append(grad)
        return forward(self, params, x, grad)

    monkeypatch.setattr(EnsembleNet, "forward", counted)
    x, y, w0 = stiff_problem()
    train = data(x, y)
    evaluations = {}
    for rule in ("robust", "chebyshev"):
        flow = GradientFlow(loss=SoftHinge(beta=20.0), rule=rule, implicit=False, max_time=2.0)
        model = AlphaModel(Linear(w0), alpha=0.5)
        calls.clear()
        res = flow.train(model, train)
        assert res.status == "budget"
        evaluations[rule] = sum(calls)
    assert evaluations["chebyshev"] < evaluations["robust"] / 4


def test_auto_hands_the_feature_regime_over_and_keeps_the_lazy_one(monkeypatch):
    """rule auto: a swish member at small alpha_tilde (stiff from its curvature) goes on by chebyshev steps after
    HANDOVER_AFTER trial steps, one at large alpha_tilde (stiff from its margins) stays on robust steps; each ends
    as the rule it took would end it alone, with its flow time, steps and trajectory carried across."""
    from dlphase.plugins.dynamics.integrator import chebyshev
    from dlphase.plugins.dynamics.integrator import ensemble_flow
    from dlphase.plugins.dynamics import gradient_flow
    from dlphase.plugins.architectures.fc import FC
    from dlphase.plugins.dynamics.gradient_flow import HANDOVER_AFTER
    from dlphase.monitor import Monitor

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 5))
    y = np.where(x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.3, 1.0, -1.0)
    points = TorchData(x_train=torch.tensor(x[:40]), y_train=torch.tensor(y[:40]), x_test=torch.tensor(x[40:]),
                       y_test=torch.tensor(y[40:]))
    arch = FC(activation="swish")

    def model(alpha_tilde):
        return AlphaModel(arch.build(32, (5,), torch.Generator().manual_seed(1)), alpha_tilde / 32 ** 0.5)

    chebyshev_members = []
    original = chebyshev.train_chebyshev

    def spy(flow, models, *args, **kwargs):
        chebyshev_members.append([m.alpha * 32 ** 0.5 for m in models])
        return original(flow, models, *args, **kwargs)

    monkeypatch.setattr(gradient_flow, "train_chebyshev", spy)
    models = [model(1e-2), model(1e3)]
    monitors = [Monitor(np.logspace(-4, 4, 33)), None]
    res = GradientFlow(loss=SoftHinge(beta=20.0)).train_ensemble(models, points, monitors)
    assert [r.status for r in res] == ["converged", "converged"]
    assert chebyshev_members == [[pytest.approx(1e-2)]]
    assert res[0].steps + res[0].rejected > HANDOVER_AFTER
    # the lazy member took the robust steps it takes alone
    alone = model(1e3)
    ref = ensemble_flow.train_ensemble(GradientFlow(loss=SoftHinge(beta=20.0), rule="robust"), [alone], points, [None])
    assert (res[1].steps, res[1].rejected) == (ref[0].steps, ref[0].rejected)
    # the trajectory runs on across the handover: flow times rise, and the last record is the end
    times = monitors[0].values["t"][np.isfinite(monitors[0].values["t"])]
    assert len(times) > 4 and np.all(np.diff(times) >= 0) and times[-1] <= res[0].t
