"""The ``chebyshev`` rule of gradient_flow: d theta / dt = -g by a stabilised explicit Runge-Kutta method (RKC2).

In the feature regime the flow is stiff: the Hessian H of L / alpha^2 has eigenvalues up to rho ~ 1e4 to 1e5
(its part sum_mu l'_mu y_mu alpha grad^2 f~_mu / (P alpha^2), which grows as the weights grow), while the
gradient itself turns at a rate |H g| / |g| of a few hundred. Euler is stable only for dt < 2 / rho, so it
takes steps a hundred times shorter than the flow's own time scale. The Jacobian of -g is -H, symmetric, so
its spectrum is real, the case Chebyshev methods are built for: s stages of the damped second-order
Runge-Kutta-Chebyshev scheme (van der Houwen and Sommeijer; Verwer, Hundsdorfer and Sommeijer) are stable for
dt rho <= beta(s) ~ 0.65 s^2, so a step of length dt costs about sqrt(1.5 dt rho) gradients instead of
dt rho / 2.

Per member: rho by a nonlinear power iteration on g (every RHO_EVERY steps, and after a rejection), then
s = ceil(sqrt(1 + 1.54 dt rho)); the local error estimate of Sommeijer, Shampine and Verwer,
(12 (theta_n - theta_n+1) + 6 dt (g_n + g_n+1)) / 15, relative to the step's length, must stay below
``max_error``, and no margin may move by ``max_dout`` or more. The step size follows the PI controller of
controller.py (the last accepted step's error damps the response). A member takes only its own stages, so
members with fewer stages cost nothing in the others' longer steps.
"""

from __future__ import annotations

import functools
import math
import time

import torch

from dlphase import TrainResult
from dlphase.ensemble_net import stacked
from dlphase.model import rescaled

from ..batched import feed_checkpoints, loss_coefficients
from .controller import proportional_integral
from ..members import Batch, choose, rows, sq
from ..stopping import common_rules, finish_member, stops, validation_tracker

#: the damping of the Chebyshev polynomial: a stability interval about 5% shorter, and internal stages that
#: damp every mode
DAMPING = 2.0 / 13.0
#: the spectral radius is estimated again every RHO_EVERY steps of a member, and after any rejected step
RHO_EVERY = 25
#: power iterations: at the start, and for each later estimate (warm-started from the last eigenvector)
RHO_START, RHO_AGAIN = 20, 2
#: rho is taken this much larger than its estimate (the power iteration approaches it from below)
RHO_SAFETY = 1.2
#: the most stages a step may take; a step that would need more is shortened
MAX_STAGES = 200


@functools.lru_cache(maxsize=None)
def rkc_coefficients(s: int):
    """The damped RKC2 scheme of s >= 2 stages: (mu~_1, mu, nu, mu~, gamma~ for stages 2..s, beta), where
    Y_1 = Y_0 + mu~_1 dt F_0 and Y_j = (1 - mu_j - nu_j) Y_0 + mu_j Y_j-1 + nu_j Y_j-2 + mu~_j dt F(Y_j-1)
    + gamma~_j dt F_0, F = -g; the step is stable for dt rho <= beta."""
    w0 = 1 + DAMPING / s ** 2
    T, dT, ddT = [1.0, w0], [0.0, 1.0], [0.0, 0.0]      # Chebyshev T_j(w0) and its derivatives
    for _ in range(2, s + 1):
        T.append(2 * w0 * T[-1] - T[-2])
        dT.append(2 * T[-2] + 2 * w0 * dT[-1] - dT[-2])
        ddT.append(4 * dT[-2] + 2 * w0 * ddT[-1] - ddT[-2])
    w1 = dT[s] / ddT[s]
    b = [0.0, 0.0] + [ddT[j] / dT[j] ** 2 for j in range(2, s + 1)]
    b[0] = b[1] = b[2]
    stages = []
    for j in range(2, s + 1):
        mu, nu, mu_t = 2 * b[j] * w0 / b[j - 1], -b[j] / b[j - 2], 2 * b[j] * w1 / b[j - 1]
        stages.append((mu, nu, mu_t, -(1 - b[j - 1] * T[j - 1]) * mu_t))
    return b[1] * w1, tuple(stages), (w0 + 1) / w1


def stages_for(dt_rho: float) -> int:
    """The stages a step needs to be stable at dt rho."""
    return max(2, min(MAX_STAGES, math.ceil(math.sqrt(1 + 1.54 * dt_rho))))


def train_chebyshev(flow, models, data, monitors, trace=None, resume=None, trackers=None,
                    start: float | None = None) -> list[TrainResult]:
    """Train ``models`` (AlphaModels of one architecture and width) in place by the chebyshev rule.

    ``monitors``: one :class:`dlphase.monitor.Monitor` (or None) per member, fed at its checkpoints.
    ``trace``: called after every step with a dict of per-member tensors (member ids, dt, stages, rho, error,
    accepted, N_Delta), to study the integrator. ``resume``: per member, the
    :class:`.ensemble_flow.Handover` of another rule to go on from (its monitors already started), with its
    early-stopping ``trackers``; ``start``: the pass's perf_counter start.
    """
    start = time.perf_counter() if start is None else start
    x, y = data.x_train, data.y_train
    net, params, params0, alpha, f0 = stacked(models, x)
    loss = flow.loss

    def evaluate(p, a, f0_):
        """The flow's velocity -g at the points p, with the training margins and objectives."""
        out, ctx = net.forward(p, x, grad=True)
        m = y * rescaled(out, f0_, a)
        c, per = loss_coefficients(loss, m, y, a)
        return [-v for v in net.backward(p, ctx, c)], out, m, per.mean(1) / a ** 2

    F, out, marg, obj = evaluate(params, alpha, f0)
    M = len(models)
    zeros = torch.zeros(M, dtype=torch.float64, device=x.device)

    def resumed(field, default):
        return torch.tensor([getattr(r, field) for r in resume], dtype=default.dtype,
                            device=x.device) if resume else default

    # again: the members whose rho is estimated before their next step
    b = Batch(range(M), params=params, params0=params0, alpha=alpha, f0=f0, F=F, out=out, marg=marg, obj=obj,
              t=resumed("t", zeros), steps=resumed("steps", zeros.long()), rejected=resumed("rejected", zeros.long()),
              dt=resumed("dt", torch.full_like(zeros, flow.dt)),
              since=zeros.long(), previous=torch.ones_like(zeros), vector=[v.clone() for v in F], rho=zeros.clone(),
              again=torch.zeros(M, dtype=torch.bool, device=x.device))
    # the budget max_steps counts gradients here (a step takes s of them), so that it bounds the work as it does
    # for the Euler rules' trial steps; a handed-over member brings its trial steps
    b.work = b.steps + b.rejected + RHO_START
    b.rho = power_iteration(evaluate, b, RHO_START)
    results: list[TrainResult | None] = [None] * M
    if trackers is None:
        trackers = [validation_tracker(flow, m, data) for m in models]

    def checkpoints(positions):
        feed_checkpoints(net, b.params, b.params0, positions, b.ids, monitors, trackers, data, b.alpha, b.t,
                         b.steps, b.obj * b.alpha ** 2, b.marg)

    if not resume:
        for j, mon in enumerate(monitors):
            if mon is not None:
                mon.start(models[j], data)
        checkpoints(range(M))

    while len(b):
        elapsed = time.perf_counter() - start
        finite = torch.isfinite(b.out).all(1) & torch.isfinite(sq(b.F))
        rules = common_rules(flow, finite, b.marg, b.work, b.t, elapsed, [trackers[m] for m in b.ids])
        rules.append((b.dt < flow.min_dt, "budget",
                      lambda j: f"stalled: dt = {float(b.dt[j]):.3g} fell below min_dt = {flow.min_dt:g}"))
        stopped = stops(rules)
        if stopped:
            for j, status, message in stopped:
                m = b.ids[j]
                results[m] = finish_member(net, b.params, j, models[m], trackers[m], monitors[m], status, message,
                                           int(b.steps[j]), float(b.t[j]), elapsed, rejected=int(b.rejected[j]))
            b.drop(j for j, _, _ in stopped)
            if not len(b):
                break

        b.again = b.again | (b.since >= RHO_EVERY)
        if bool(b.again.any()):
            b.rho = torch.where(b.again, power_iteration(evaluate, b, RHO_AGAIN, b.again), b.rho)
            b.work = b.work + RHO_AGAIN * b.again.long()
            b.since = torch.where(b.again, torch.zeros_like(b.since), b.since)
        rho = RHO_SAFETY * b.rho
        s = [stages_for(v) for v in (b.dt * rho).tolist()]
        beta = torch.tensor([rkc_coefficients(k)[2] for k in s], dtype=torch.float64, device=x.device)
        dt = torch.minimum(b.dt, beta / rho)      # at MAX_STAGES: as long as stability allows

        new = chebyshev_step(evaluate, b, dt, s)
        F1, out1, marg1, obj1 = evaluate(new, b.alpha, b.f0)
        est = [(12 * (p - q) + rows(6 * dt, p) * (f + f1)) / 15 for p, q, f, f1 in zip(b.params, new, b.F, F1)]
        length = sq([q - p for p, q in zip(b.params, new)]).sqrt()
        dout = (marg1 - b.marg).abs().amax(1)
        # both as errors of second order in dt, relative to their bounds
        err = torch.maximum(sq(est).sqrt() / (flow.max_error * length), (dout / flow.max_dout) ** 2)
        err = torch.where(torch.isfinite(err) & (length > 0), err, torch.full_like(err, math.inf))
        ok = err <= 1

        b.t = b.t + torch.where(ok, dt, torch.zeros_like(dt))
        b.steps = b.steps + ok.long()
        b.rejected = b.rejected + (~ok).long()
        b.since = b.since + 1
        b.work = b.work + torch.tensor(s, dtype=torch.long, device=x.device)
        b.params, b.F = choose(ok, new, b.params), choose(ok, F1, b.F)
        b.out, b.marg, b.obj = choose(ok, out1, b.out), choose(ok, marg1, b.marg), choose(ok, obj1, b.obj)
        b.dt = proportional_integral(dt, err, b.previous, order=2, shrink=flow.shrink, grow=flow.grow_max)
        b.previous = torch.where(ok, err, b.previous)
        b.again = ~ok
        if trace is not None:
            trace({"members": list(b.ids), "dt": dt, "stages": torch.tensor(s), "rho": b.rho, "error": err,
                   "ok": ok, "n_delta": (b.marg < 1).sum(1)})
        if any(mon is not None for mon in monitors) or any(tr is not None for tr in trackers):
            checkpoints([j for j in range(len(b)) if bool(ok[j])])
    return results


def chebyshev_step(evaluate, b: Batch, dt: torch.Tensor, s: list[int]) -> list[torch.Tensor]:
    """Each member's point after one RKC2 step of length dt (M,) with s[m] stages. Stage j is evaluated only
    for the members that have it; the others keep their last stage, which is their step's end."""
    M = len(b)
    y0, f0 = b.params, b.F
    mu1 = torch.tensor([rkc_coefficients(k)[0] for k in s], dtype=torch.float64, device=dt.device)
    prev2 = y0
    prev = [p + rows(mu1 * dt, p) * f for p, f in zip(y0, f0)]
    for j in range(2, max(s) + 1):
        active = [m for m in range(M) if s[m] >= j]
        index = torch.tensor(active, dtype=torch.long, device=dt.device)
        coef = torch.tensor([rkc_coefficients(s[m])[1][j - 2] for m in active], dtype=torch.float64,
                            device=dt.device).T
        mu, nu, mu_t, gamma_t = coef
        h = dt.index_select(0, index)
        sub = [v.index_select(0, index) for v in prev]
        F, _, _, _ = evaluate(sub, b.alpha.index_select(0, index), b.f0.index_select(0, index))
        nxt = []
        for y0_, p1, p2, f, f0_ in zip(y0, sub, prev2, F, f0):
            y0s, p2s, f0s = (v.index_select(0, index) for v in (y0_, p2, f0_))
            nxt.append(rows(1 - mu - nu, y0s) * y0s + rows(mu, p1) * p1 + rows(nu, p2s) * p2s
                       + rows(mu_t * h, f) * f + rows(gamma_t * h, f0s) * f0s)
        # the members without stage j keep their last stage: the end of their step
        prev2, prev = prev, (nxt if len(active) == M else [p.index_copy(0, index, q) for p, q in zip(prev, nxt)])
    return prev


def power_iteration(evaluate, b: Batch, iterations: int, which: torch.Tensor | None = None) -> torch.Tensor:
    """Each member's spectral radius of H, the Jacobian of g, by ``iterations`` steps of the nonlinear power
    method g(theta + eps v) - g(theta) ~ eps H v, warm-started from ``b.vector`` (updated in place).
    ``which`` (M,) bool: the members to estimate (the others get rho 0 in the result)."""
    index = torch.arange(len(b), device=b.dt.device) if which is None else torch.nonzero(which).flatten()
    params = [p.index_select(0, index) for p in b.params]
    F0 = [f.index_select(0, index) for f in b.F]
    alpha, f0 = b.alpha.index_select(0, index), b.f0.index_select(0, index)
    v = [u.index_select(0, index) for u in b.vector]
    scale = sq(params).sqrt()
    rho = torch.zeros(len(index), dtype=torch.float64, device=b.dt.device)
    for _ in range(iterations):
        norm = sq(v).sqrt()
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))
        eps = 1e-7 * scale.clamp_min(1.0) / norm
        Fv, _, _, _ = evaluate([p + rows(eps, p) * u for p, u in zip(params, v)], alpha, f0)
        v = [(a - c) / rows(eps, a) for a, c in zip(Fv, F0)]
        rho = sq(v).sqrt() / norm
        rho = torch.where(torch.isfinite(rho), rho, torch.zeros_like(rho))
        v = [u / rows(torch.where(rho > 0, rho * norm, torch.ones_like(rho)), u) for u in v]
    b.vector = [u.index_copy(0, index, w) for u, w in zip(b.vector, v)]
    return torch.zeros(len(b), dtype=torch.float64, device=b.dt.device).index_copy(0, index, rho)
