"""The robust rule's loss coefficients: the sliding-mode (Filippov) forces at the hinge's kink (the box-constrained
QP against scipy's BVLS, the margins' velocity against the relaxation it is built to give), the linearly implicit
ones of a curved loss (backward Euler, exact for a linear model), and the kernel rows both use, formed afresh or
taken from the kernel cache."""

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear, minimize

from dlphase import AlphaModel, TorchData
from dlphase.ensemble_net import EnsembleNet, ensemble_of
from dlphase.plugins.dynamics.integrator import coefficient_rules
from dlphase.plugins.dynamics.batched import loss_coefficients
from dlphase.plugins.architectures.cnn import CNN
from dlphase.plugins.architectures.fc import FC
from dlphase.plugins.dynamics.gradient_flow import GradientFlow
from dlphase.plugins.dynamics.integrator.implicit import curvature_scale, implicit_coefficients, loss_curvature
from dlphase.plugins.dynamics.integrator import kernel_cache
from dlphase.plugins.dynamics.integrator.kernel_cache import KernelCache
from dlphase.plugins.losses import MSE, Hinge, SoftHinge
from dlphase.plugins.architectures.mean_field import MeanField
from dlphase.plugins.dynamics.integrator.sliding import box_qp, sliding_coefficients


@pytest.mark.parametrize("m,n", [(40, 25), (12, 25)], ids=["full-rank", "rank-deficient"])
def test_box_qp_matches_bvls(m, n):
    """min |A w - b|^2 over 0 <= w <= 1 is the QP with Q = A^T A, r = A^T b: same objective as BVLS
    (and, with a unique minimiser, the same w)."""
    rng = np.random.default_rng(m)
    A, b = rng.standard_normal((m, n)) * np.logspace(0, 2, n), 3 * rng.standard_normal(m)
    ref = lsq_linear(A, b, bounds=(0, 1), method="bvls", tol=1e-14).x
    Q, r = torch.as_tensor(A.T @ A), torch.as_tensor(A.T @ b)
    w, iterations = box_qp(Q, r, torch.full((n,), 0.5, dtype=torch.float64))
    assert iterations < 100 and bool(((w >= 0) & (w <= 1)).all())
    cost = lambda v: float(np.sum((A @ v - b) ** 2))  # noqa: E731
    assert cost(w.numpy()) == pytest.approx(cost(ref), rel=1e-9)
    assert 0 < int(((w > 0) & (w < 1)).sum()) < n   # the box binds somewhere, and not everywhere
    if m >= n:
        np.testing.assert_allclose(w.numpy(), ref, atol=1e-8)


def test_box_qp_with_far_more_weights_than_rank():
    """Theta_SS of more sliding margins than the net has parameters: Q = A^T A of rank 20 in 100 weights, and an r
    off Q's range, so that the objective falls along Q's null directions until the box stops it. The minimum
    against scipy's L-BFGS-B."""
    rng = np.random.default_rng(20)
    A = rng.standard_normal((20, 100)) * np.logspace(0, 1, 100)
    Q, r = A.T @ A, A.T @ rng.standard_normal(20) * 10 + rng.standard_normal(100)
    cost = lambda v: 0.5 * v @ Q @ v - r @ v  # noqa: E731
    ref = minimize(cost, np.full(100, 0.5), jac=lambda v: Q @ v - r, method="L-BFGS-B", bounds=[(0, 1)] * 100,
                   options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 100000})
    w, iterations = box_qp(torch.as_tensor(Q), torch.as_tensor(r), torch.full((100,), 0.5, dtype=torch.float64),
                           max_iter=1000)
    assert iterations < 1000 and bool(((w >= 0) & (w <= 1)).all())
    assert cost(w.numpy()) == pytest.approx(ref.fun, rel=1e-12)
    assert 0 < int(((w > 0) & (w < 1)).sum()) <= 20   # as many weights inside the box as Q's rank at most


@pytest.mark.parametrize("arch,shape", [(FC(depth=2, activation="relu", bias=True), (5,)),
                                        (MeanField(activation="swish"), (5,)),
                                        (CNN(depth=2, kernel_size=3), (1, 6, 6))], ids=["fc", "mean_field", "cnn"])
def test_ntk_block_is_a_block_of_the_ntk(arch, shape):
    """Theta(x_r, x_r) and Theta(x_r, x) v of the fast kernels against torch.func's full NTK."""
    nets = [arch.build(6, shape, torch.Generator().manual_seed(s)) for s in range(3)]
    x = torch.randn(11, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    net = ensemble_of(nets)
    params = net.stack(nets)
    full = EnsembleNet(nets).ntk(params, x)
    rows = [torch.tensor([3, 0, 7]), None, torch.tensor([10])]
    v = torch.randn(3, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    _, ctx = net.forward(params, x, grad=True)
    for got in (net.ntk_block(params, x, rows, v, ctx), net.ntk_block(params, x, rows, v)):
        assert got[1] is None
        for j in (0, 2):
            r = rows[j]
            torch.testing.assert_close(got[j][0], full[j][r][:, r], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got[j][1], full[j][r] @ v[j], rtol=1e-10, atol=1e-12)


def test_sliding_forces_give_the_relaxation():
    """Margins in the band with a weight strictly inside (0, 1) move at exactly -(m - target) / tau, with
    the NTK of torch.func; those outside keep the hinge's force."""
    torch.manual_seed(0)
    P, d = 30, 4
    nets = [FC(depth=2, activation="swish").build(40, (d,), torch.Generator().manual_seed(s)) for s in range(2)]
    x = torch.randn(P, d, dtype=torch.float64)
    y = torch.where(torch.randn(P) > 0, 1.0, -1.0).double()
    net = ensemble_of(nets)
    params = net.stack(nets)
    out, ctx = net.forward(params, x, grad=True)
    alpha = torch.tensor([0.3, 2.0], dtype=torch.float64)
    # margins around the kink: scale f~ so that y f spreads over [0.9, 1.1]
    f0 = out - (0.9 + 0.2 * torch.rand(2, P, dtype=torch.float64)) * y / alpha[:, None]
    m = y * alpha[:, None] * (out - f0)
    tau = torch.tensor([0.5, 2.0], dtype=torch.float64)
    band, target = 0.05, 1.0 + 1e-4
    start = (m < 1).double()
    coef, w = sliding_coefficients(net, params, ctx, x, y, m, alpha, Hinge(), band, target, tau, [0, 1], start)
    plain, _ = loss_coefficients(Hinge(), m, y, alpha)
    theta = EnsembleNet(nets).ntk(params, x)
    inside = (m - 1).abs() <= band
    assert bool(inside.any()) and bool((~inside).any())
    torch.testing.assert_close(coef[~inside], plain[~inside], rtol=0, atol=0)
    velocity = -y * alpha[:, None] * torch.einsum("mij,mj->mi", theta, coef)   # dm / dt
    interior = inside & (w > 1e-9) & (w < 1 - 1e-9)
    assert int(interior.sum()) >= 2
    want = -(m - target) / tau[:, None]
    torch.testing.assert_close(velocity[interior], want[interior], rtol=1e-6, atol=1e-8 * float(want.abs().max()))
    assert bool(((w >= 0) & (w <= 1)).all())


def test_implicit_coefficients_are_backward_euler():
    """With the MSE loss l' is linear in m, so c~ solves backward Euler's equation c~ = c(m - dt y alpha Theta c~)
    exactly (Theta from torch.func): the coefficients at the linearly predicted end of the step. With dt -> 0
    they are the plain ones."""
    P, d = 12, 5
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.standard_normal((P, d)))
    y = torch.as_tensor(np.sign(rng.standard_normal(P)))
    nets = [FC(depth=1, activation="relu").build(8, (d,), torch.Generator().manual_seed(s)) for s in range(2)]
    net = ensemble_of(nets)
    params = net.stack(nets)
    out, ctx = net.forward(params, x, grad=True)
    alpha = torch.tensor([0.5, 3.0], dtype=torch.float64)
    m = y * alpha[:, None] * (out + 0.3)
    loss = MSE()
    scale = curvature_scale(loss)
    assert scale == pytest.approx(1.0)
    dt = torch.tensor([0.7, 0.05], dtype=torch.float64)
    c = implicit_coefficients(net, params, ctx, x, y, m, alpha, loss, scale, dt, [0, 1])
    theta = EnsembleNet(nets).ntk(params, x)
    m_next = m - dt[:, None] * y * alpha[:, None] * torch.einsum("mij,mj->mi", theta, c)   # the exact linear step
    c_next, _ = loss_coefficients(loss, m_next, y, alpha)
    torch.testing.assert_close(c, c_next, rtol=1e-10, atol=1e-12)
    plain, _ = loss_coefficients(loss, m, y, alpha)
    assert float((c - plain).abs().max()) > 1e-3 * float(plain.abs().max())
    tiny = implicit_coefficients(net, params, ctx, x, y, m, alpha, loss, scale, torch.full((2,), 1e-12), [0, 1])
    torch.testing.assert_close(tiny, plain, rtol=1e-9, atol=1e-12)
    assert loss_curvature(Hinge(), m).abs().max() == 0 and curvature_scale(Hinge()) == 0
    # through the kernel cache, fresh: the same coefficients
    cached = implicit_coefficients(KernelCache(net, x, 0.01), params, None, x, y, m, alpha, loss, scale, dt, [0, 1])
    torch.testing.assert_close(cached, c, rtol=1e-10, atol=1e-12)


def test_kernel_cache_keeps_kernels_until_a_step_is_mispredicted():
    """The cached blocks are torch.func's NTK blocks at the parameters where each member's kernel was computed;
    a kernel is kept while the accepted steps' f~ changes match -dt Theta c to tol, recomputed when asked for
    after one does not, and a member whose kernel served fewer than MIN_LIFE steps gets fresh blocks from the net
    until RETRY has added up to MIN_LIFE."""
    x = torch.randn(11, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    nets = [FC(depth=2, activation="swish").build(6, (5,), torch.Generator().manual_seed(s)) for s in range(3)]
    net = ensemble_of(nets)
    params = net.stack(nets)
    cache = KernelCache(net, x, tol=0.05)
    rows = [torch.tensor([3, 0, 7]), None, torch.tensor([10, 2])]
    v = torch.randn(3, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    c = torch.randn(3, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    dt = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    both = torch.tensor([True, True, True])

    def check(got, p):
        full = EnsembleNet(nets).ntk(p, x)
        assert got[1] is None
        for j in (0, 2):
            r = rows[j]
            torch.testing.assert_close(got[j][0], full[j][r][:, r], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got[j][1], full[j][r] @ v[j], rtol=1e-10, atol=1e-12)

    check(cache.ntk_block(params, x, rows, v), params)
    assert cache.computed == 2                               # member 1 was not asked for
    theta = EnsembleNet(nets).ntk(params, x)
    exact = -dt[:, None] * torch.einsum("mij,mj->mi", theta, c)
    for _ in range(kernel_cache.MIN_LIFE):                   # predicted to 3%: kept, at the old parameters
        cache.check(both, c, exact * (1 + 0.03 * torch.linspace(-1, 1, 11, dtype=torch.float64)), dt)
    far = [p * 1.08 for p in params]
    check(cache.ntk_block(far, x, rows, v), params)
    assert cache.computed == 2
    wrong = exact.clone()
    wrong[2] *= 1.2                                          # member 2 mispredicted by 20%: recomputed at far
    cache.check(torch.tensor([True, True, False]), c, wrong, dt)   # (not for a rejected step)
    check(cache.ntk_block(far, x, rows, v), params)
    cache.check(both, c, wrong, dt)
    got = cache.ntk_block(far, x, rows, v)
    assert cache.computed == 3
    torch.testing.assert_close(got[0][0], theta[0][rows[0]][:, rows[0]], rtol=1e-10, atol=1e-12)
    full_far = EnsembleNet(nets).ntk(far, x)
    torch.testing.assert_close(got[2][0], full_far[2][rows[2]][:, rows[2]], rtol=1e-10, atol=1e-12)
    # member 2's new kernel is mispredicted at once (it served no step): fresh blocks from the net, no kernel
    cache.check(both, c, wrong, dt)
    calls = round(kernel_cache.MIN_LIFE / kernel_cache.RETRY)
    for _ in range(calls):
        got = cache.ntk_block(far, x, rows, v)
        torch.testing.assert_close(got[2][0], full_far[2][rows[2]][:, rows[2]], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[2][1], full_far[2][rows[2]] @ v[2], rtol=1e-10, atol=1e-12)
    assert cache.computed == 3
    cache.ntk_block(far, x, rows, v)                         # tried again
    assert cache.computed == 4
    keep = torch.tensor([2, 0])                              # members leave the batch: positions follow
    cache.select(keep)
    rows = [rows[2], rows[0]]
    got = cache.ntk_block([p.index_select(0, keep) for p in far], x, rows, v.index_select(0, keep))
    torch.testing.assert_close(got[0][0], full_far[2][rows[0]][:, rows[0]], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1][0], theta[0][rows[1]][:, rows[1]], rtol=1e-10, atol=1e-12)
    assert cache.computed == 4


def test_flow_with_cached_kernels_matches_fresh_kernels():
    """The implicit rule with kernels reused until they mispredict a step (the default) ends where it ends with
    the blocks formed at every step, to the integrator's tolerance; the cache is used and refreshed."""
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.standard_normal((70, 5)))
    y = torch.as_tensor(np.where(x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.3, 1.0, -1.0))
    data = TorchData(x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    counts = []
    ends = {}
    for refresh in (0.0, GradientFlow().kernel_refresh):
        model = AlphaModel(FC(activation="swish").build(16, (5,), torch.Generator().manual_seed(0)), 100.0 / 4)
        flow = GradientFlow(loss=SoftHinge(), kernel_refresh=refresh, max_steps=5000)
        original = KernelCache.ntk_block
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(KernelCache, "ntk_block", lambda self, *a, **k: counts.append(self) or original(self, *a, **k))
            result = flow.train(model, data)
        assert result.status == "converged"
        with torch.no_grad():
            ends[refresh] = model(data.x_test)
    assert len(counts) > 10 and len({id(c) for c in counts}) == 1       # one cache, in the run with refresh > 0
    assert 1 < counts[0].computed < len(counts) / 3                     # refreshed, but far less than every step
    f0, f1 = ends[0.0], ends[GradientFlow().kernel_refresh]
    assert float((f1 - f0).abs().max()) < 0.01 * float(f0.abs().max())   # measured: 3.0e-4


def test_implicit_pays_compares_coefficient_and_curvature_changes():
    """The switch of the implicit rule, by hand: per member, |J'^T (c' - c)|^2 / |J'^T c_step - J^T c_step|^2
    against SWITCH_ON and SWITCH_OFF, keeping the previous choice in between."""

    class Linear:          # J'^T c = A' c with one 2 x 3 'Jacobian' per member (no slopes, context unused)
        def __init__(self, jac):
            self.jac = jac

        def backward(self, params, ctx, dout, slopes=None, reuse=False):
            return [torch.einsum("mij,mj->mi", self.jac, dout)]

    jac_new = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]] * 3, dtype=torch.float64)
    jac_old = jac_new * torch.tensor([0.9, 0.9, 0.99], dtype=torch.float64)[:, None, None]
    plain = torch.tensor([[1.0, 0.0, 0.0]] * 3, dtype=torch.float64)       # c at the accepted point
    own = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.1, 0.0], [1.0, 0.2, 0.0]], dtype=torch.float64)  # c'
    step = plain                                                            # an explicit step
    g = [torch.einsum("mij,mj->mi", jac_old, step)]
    g_s = Linear(jac_new).backward(None, None, own)
    # coefficient part |J'(c' - c)|^2 = 1, 0.01, 0.04; curvature part |(J' - J) c|^2 = 0.01, 0.01, 1e-4
    on = torch.tensor([False, True, False])
    got = coefficient_rules.implicit_pays(Linear(jac_new), None, None, g, g_s, step, plain, None, on)
    assert got.tolist() == [True, False, True]          # ratios 100 (on), 1 (off), 400 (on)
    between = torch.tensor([[1.0, 0.05, 0.0]] * 3, dtype=torch.float64)    # ratio 0.0025 / 0.01 = 0.25 ... 25
    g_s = Linear(jac_new).backward(None, None, between)
    got = coefficient_rules.implicit_pays(Linear(jac_new), None, None, g, g_s, step, plain, None,
                                      torch.tensor([True, True, False]))
    assert got.tolist() == [False, False, True]         # 0.25 (off), 0.25 (off), 25 (on)
    mid = torch.tensor([[1.0, 0.05 ** 0.5, 0.0]] * 3, dtype=torch.float64)   # ratios 5, 5 (in between), 500
    g_s = Linear(jac_new).backward(None, None, mid)
    for before in (True, False):
        got = coefficient_rules.implicit_pays(Linear(jac_new), None, None, g, g_s, step, plain, None,
                                          torch.tensor([before, not before, False]))
        assert got.tolist() == [before, not before, True]
