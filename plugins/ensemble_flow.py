"""The gradient-flow engine: M members of one architecture and width integrated as one batched computation.

Members share the architecture, h and the training data; each keeps its own alpha, time step, stop
rule, status and trajectory. A member that stops leaves the batch, so it costs nothing afterwards.
A single run is an ensemble of one through the same code, so a member follows the same trajectory in an
ensemble as alone (every batched operation acts on each member's own slice), to rounding; where rounding
flips a step's acceptance, the two runs end within the integrator's error (docs/reproducibility.md).

Two acceptance rules (SCIENCE.md section 2):

- ``reference``: the reference's. Accept a trial step when dgrad = |g' - g|^2 / (|g| |g'|) < max_dgrad
  and max_mu |f'_mu - f_mu| < max_dout; dt *= grow after an easy step (both below half), dt /= shrink
  after a rejection. A kink (plain hinge, relu) makes |g' - g| jump by a finite amount for any dt,
  so dt collapses there.
- ``robust`` (default): the same two limits, with the gradient change measured as smooth curvature,
  and a proportional step-size controller. dgrad uses g'_s, the gradient at the trial point with, for
  relu nets, the accepted point's activation slopes; then |g'_s - g| is O(dt) and a relu kink no
  longer forces dt to 0. Accept when err = max(sqrt(dgrad_s / max_dgrad), dout / max_dout) <= 1;
  then dt *= clip(0.9 / err, 1 / shrink, grow_max). The step's loss coefficients c = dObjective/df~:
  - a loss with a kink (``Loss.kink``: the plain hinge) gets sliding-mode forces (sliding.py): margins
    within ``sliding_band`` of the kink take the Filippov weights that relax them onto
    1 + ``sliding_offset`` over ``sliding_steps`` steps, so they rest on the kink instead of chattering
    across it (which held dt near 1e-5). g'_s keeps these coefficients too.
  - a curved loss (the soft hinge's l'' = beta / 4 at m = 1) gets linearly implicit ones (implicit.py,
    ``implicit``): backward Euler on the stiff margin modes, which otherwise hold dt by their
    coefficient change (relu nets in the feature regime). g'_s takes the trial point's own
    coefficients, so dgrad sees how far they are from the predicted c~ of g = J^T c~. Every PROBE
    trial steps, :func:`implicit_pays` switches each member to or from them.
  Both take their NTK blocks from a KernelCache (kernel_cache.py, ``kernel_refresh``).
"""

from __future__ import annotations

import math
import time

import torch

from dlphase import TrainResult
from dlphase.ensemble import stacked

from .batched import feed_checkpoints, loss_coefficients, member_rows
from .implicit import curvature_scale, implicit_coefficients
from .kernel_cache import KernelCache, fits
from .sliding import sliding_coefficients
from .stopping import common_rules, finish_member, stops, validation_tracker


#: every PROBE trial steps each member of the implicit rule is switched to or from the implicit coefficients
PROBE = 10
#: (dgrad ratios) on when an explicit step takes SWITCH_ON times more gradient change from its coefficients than
#: from curvature (an explicit step about 3 times shorter), off below SWITCH_OFF
SWITCH_ON = 9.0
SWITCH_OFF = 2.0


def implicit_pays(net, trial, ctx, g, g_s, coef, plain, slopes, on):
    """Whether each member should take the implicit coefficients (M,) bool, from a trial step: the gradient
    change an explicit step would take from its coefficients, |J'^T (c' - c)|^2 (c the plain coefficients at
    the accepted point), against that from curvature, |J'^T c_step - J^T c_step|^2 (c_step the step's own).
    The implicit coefficients cost a solve per step and pay off only where the first dominates (stiff margin
    modes, relu's chattering margins); in the feature regime the second does, and they are switched off."""
    g_step = net.backward(trial, ctx, coef, slopes=slopes, reuse=slopes is None)
    g_plain = net.backward(trial, ctx, plain, slopes=slopes, reuse=slopes is None)
    ratio = _sq([a - b for a, b in zip(g_s, g_plain)]) / _sq([a - b for a, b in zip(g_step, g)])
    return torch.where(ratio > SWITCH_ON, True, torch.where(ratio < SWITCH_OFF, False, on))


def _sq(ts: list[torch.Tensor]) -> torch.Tensor:
    """Per-member squared norms of stacked tensors, (M,)."""
    return sum(t.reshape(len(t), -1).square().sum(1) for t in ts)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-member (M,) tensor shaped to broadcast against a stacked (M, ...) tensor."""
    return mask.reshape((-1,) + (1,) * (like.dim() - 1))


def train_ensemble(flow, models, data, monitors, trace=None) -> list[TrainResult]:
    """Train ``models`` (AlphaModels of one architecture and width) in place with ``flow``'s scheme.

    ``monitors``: one :class:`dlphase.trajectory.Monitor` (or None) per member, fed at its checkpoints.
    ``trace``: called after every trial step with a dict of per-member tensors (member ids, dt, dout,
    dgrad, accepted, implicit coefficients on, N_Delta, margins crossing the kink), to study the integrator.
    """
    start = time.perf_counter()
    x, y = data.x_train, data.y_train
    M = len(models)
    net, params, params0, alpha, f0 = stacked(models, x)  # params0: theta_0 of the members still in the batch
    loss = flow.loss
    robust = flow.rule == "robust"
    kink = getattr(loss, "kink", None)

    def margins(out, a, f0_):
        return y * (a[:, None] * (out - f0_))

    def evaluate(p, a, f0_, gradient=True, reuse=False):
        """f~, margins, dObjective/df~, the objective mean l / alpha^2, its gradient (or None), the context
        (``reuse``: it will take more cotangents)."""
        out, ctx = net.forward(p, x, grad=True)
        m = margins(out, a, f0_)
        c, per = loss_coefficients(loss, m, y, a)
        return out, m, c, per.mean(1) / a ** 2, net.backward(p, ctx, c, reuse=reuse) if gradient else None, ctx

    out, marg, coef, obj, g, ctx = evaluate(params, alpha, f0)
    slopes = net.slopes(ctx) if robust and net.kinked else None
    dt = torch.full((M,), flow.dt, dtype=torch.float64, device=x.device)
    # the robust rule's loss coefficients for a step: Filippov forces at a kink (sliding.py), or linearly
    # implicit ones on a curved loss (implicit.py); each is held fixed through the trial step
    scale = curvature_scale(loss, x.dtype, x.device) if robust and kink is None and flow.implicit else 0.0
    mode = "sliding" if robust and kink is not None else "implicit" if scale > 0 else None
    weights = (marg < kink).to(marg.dtype) if mode == "sliding" else None
    # their kernel blocks: from each member's cached Theta(x, x) while it predicts the accepted steps
    # (kernel_cache.py); relu nets form them afresh, as their kernel jumps when units cross their kinks
    cache = (KernelCache(net, x, flow.kernel_refresh) if mode is not None and flow.kernel_refresh > 0
             and not net.kinked and fits(M, len(x), x.dtype) else None)
    blocks = cache if cache is not None else net

    # the members that take the implicit coefficients, decided every PROBE trial steps (implicit_pays)
    on = torch.ones(M, dtype=torch.bool, device=x.device)

    def step_coefficients(p, ctx_, m, a, positions, dt_next):
        """The coefficients of the next steps from the points p (margins m), for the batch ``positions``."""
        nonlocal weights
        if mode == "implicit":
            positions = [j for j in positions if bool(on[j])]
            return implicit_coefficients(blocks, p, ctx_, x, y, m, a, loss, scale, dt_next, positions)
        c, w = sliding_coefficients(blocks, p, ctx_, x, y, m, a, loss, flow.sliding_band, kink + flow.sliding_offset,
                                    flow.sliding_steps * dt_next, positions, weights)
        chosen = torch.zeros(len(m), dtype=torch.bool, device=m.device)
        chosen[positions] = True
        weights = torch.where(chosen[:, None], w, weights)
        return c

    if mode is not None:
        coef = step_coefficients(params, ctx, marg, alpha, list(range(M)), dt)
        g = net.backward(params, ctx, coef)
    gnorm2 = _sq(g)
    t = torch.zeros(M, dtype=torch.float64, device=x.device)
    steps = torch.zeros(M, dtype=torch.long, device=x.device)
    rejected = torch.zeros(M, dtype=torch.long, device=x.device)
    idx = list(range(M))                      # the members still in the batch, in batch order
    results: list[TrainResult | None] = [None] * M

    trackers = [validation_tracker(flow, m, data) for m in models]  # early stopping, or None

    def checkpoints(positions):
        feed_checkpoints(net, params, params0, positions, idx, monitors, trackers, data, alpha, t, steps,
                         obj * alpha ** 2, marg)

    for j, mon in enumerate(monitors):
        if mon is not None:
            mon.start(models[j], data)
    checkpoints(range(M))

    while idx:
        # the stop rules, per member, in order of precedence
        elapsed = time.perf_counter() - start
        finite = torch.isfinite(out).all(1) & torch.isfinite(gnorm2)
        rules = common_rules(flow, finite, marg, steps + rejected, t, elapsed, [trackers[m] for m in idx]) + [
            (dt < flow.min_dt, "budget",
             lambda j: f"stalled: dt = {float(dt[j]):.3g} fell below min_dt = {flow.min_dt:g}"),
            (gnorm2 == 0, "budget", lambda j: "stalled: zero gradient with unsatisfied margins"),
        ]
        stopped = stops(rules)
        if stopped:
            for j, status, message in stopped:
                m = idx[j]
                results[m] = finish_member(net, params, j, models[m], trackers[m], monitors[m], status, message,
                                           int(steps[j]), float(t[j]), elapsed, rejected=int(rejected[j]))
            gone = {j for j, _, _ in stopped}
            keep = torch.tensor([j for j in range(len(idx)) if j not in gone], dtype=torch.long, device=x.device)
            idx = [m for j, m in enumerate(idx) if j not in gone]
            if not idx:
                break
            params, params0, g = ([v.index_select(0, keep) for v in vs] for vs in (params, params0, g))
            if slopes is not None:
                slopes = [v.index_select(0, keep) for v in slopes]
            if weights is not None:
                weights = weights.index_select(0, keep)
            if cache is not None:
                cache.select(keep)
            out, marg, coef, obj, gnorm2, dt, f0, alpha, t, steps, rejected, on = (
                v.index_select(0, keep) for v in (out, marg, coef, obj, gnorm2, dt, f0, alpha, t, steps, rejected,
                                                  on))

        # one trial step for every member left
        step = dt.to(x.dtype)
        trial = [v - _rows(step, v) * gv for v, gv in zip(params, g)]
        # the trial's own gradient: what the reference rule compares, and the robust rule's g'_s unless the
        # step's coefficients (sliding) or the accepted slopes (relu) go into g'_s instead
        own = mode is None or (mode == "implicit" and slopes is None)
        # (reuse, with a coefficient rule, whoever is switched on: how a member's gradients are formed must not
        # depend on the other members)
        new_out, new_marg, new_coef, new_obj, new_g, ctx = evaluate(trial, alpha, f0, gradient=own,
                                                                    reuse=mode is not None)
        dout = (new_marg - marg).abs().amax(1)  # |f' - f|, as y = +-1
        if not robust:
            new_gnorm2 = _sq(new_g)
            dgrad = torch.where(new_gnorm2 > 0, _sq([a - b for a, b in zip(new_g, g)])
                                / (gnorm2 * new_gnorm2).sqrt(), torch.zeros_like(gnorm2))
            ok = (dgrad < flow.max_dgrad) & (dout < flow.max_dout)  # NaN compares False: rejected
            easy = ok & (dgrad < 0.5 * flow.max_dgrad) & (dout < 0.5 * flow.max_dout)
            new_dt = torch.where(easy, dt * flow.grow, torch.where(ok, dt, dt / flow.shrink))
        else:
            # g_s: the gradient at the trial point with the accepted point's loss coefficients (the step's own,
            # with a coefficient rule) and, for relu, its activation slopes: |g_s - g| is smooth curvature, O(dt)
            g_s = (new_g if mode != "sliding" and slopes is None else
                   net.backward(trial, ctx, coef if mode == "sliding" else new_coef, slopes=slopes,
                                reuse=slopes is None))
            g_s2 = _sq(g_s)
            dgrad = torch.where(g_s2 > 0, _sq([a - b for a, b in zip(g_s, g)]) / (gnorm2 * g_s2).sqrt(),
                                torch.zeros_like(gnorm2))
            # dgrad is second order in dt, dout first order: both as first-order errors
            err = torch.maximum((dout / flow.max_dout).to(torch.float64),
                                (dgrad / flow.max_dgrad).sqrt().to(torch.float64))
            err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
            ok = err <= 1
            if cache is not None:
                cache.check(ok, coef, new_out - out, dt)
            new_dt = dt * torch.clamp(0.9 / err.clamp_min(1e-12), 1.0 / flow.shrink, flow.grow_max)
            if mode == "implicit" and int(steps[0] + rejected[0]) % PROBE == 0:
                on = implicit_pays(net, trial, ctx, g, g_s, coef, loss_coefficients(loss, marg, y, alpha)[0],
                                   slopes, on)
        if mode is not None:  # the accepted points' coefficients, for the step size they will be tried with
            accepted = torch.nonzero(ok).flatten().tolist()
            plain = new_coef
            new_coef = step_coefficients(trial, ctx, new_marg, alpha, accepted, new_dt)
            if not own:
                new_g = net.backward(trial, ctx, new_coef) if accepted else g
            else:  # new_g = J'^T plain: add J'^T (new_coef - plain) on the accepted members' changed margins
                rows = member_rows((new_coef != plain) & ok[:, None], range(len(ok)))
                if rows is not None:
                    new_g = net.add_backward(trial, ctx, new_g, new_coef - plain, rows)
            if mode == "implicit" and len(accepted) < len(ok):  # the rejected ones' for their shorter step
                again = torch.nonzero(~ok).flatten()
                redo = torch.where(ok[:, None], coef,
                                   step_coefficients(params, None, marg, alpha, again.tolist(), new_dt))
                again = torch.nonzero((redo != coef).any(1)).flatten()      # those whose coefficients changed
                coef = redo
                if len(again):
                    sub = [v.index_select(0, again) for v in params]   # a pass over those members only
                    _, ctx0 = net.forward(sub, x, grad=True)
                    g0 = net.backward(sub, ctx0, coef.index_select(0, again))
                    g = [v.index_copy(0, again, v0) for v, v0 in zip(g, g0)]
                    gnorm2 = gnorm2.index_copy(0, again, _sq(g0))
        new_gnorm2 = _sq(new_g)
        t = t + torch.where(ok, dt, torch.zeros_like(dt))
        steps = steps + ok.long()
        rejected = rejected + (~ok).long()
        params = [torch.where(_rows(ok, v), a, v) for a, v in zip(trial, params)]
        g = [torch.where(_rows(ok, v), a, v) for a, v in zip(new_g, g)]
        if slopes is not None:
            slopes = [torch.where(_rows(ok, v), a, v) for a, v in zip(net.slopes(ctx), slopes)]
        if trace is not None:
            trace({"members": list(idx), "dt": dt, "dout": dout, "dgrad": dgrad, "ok": ok,
                   "implicit": on.clone() if mode == "implicit" else None,
                   "n_delta": (new_marg < 1).sum(1),
                   "crossed": (((marg - kink) * (new_marg - kink) <= 0) & (marg != new_marg)).sum(1)
                   if kink is not None else None})
        okc = ok[:, None]
        out, marg, coef = (torch.where(okc, a, b) for a, b in ((new_out, out), (new_marg, marg), (new_coef, coef)))
        obj = torch.where(ok, new_obj, obj)
        gnorm2 = torch.where(ok, new_gnorm2, gnorm2)
        dt = new_dt
        if any(mon is not None for mon in monitors) or any(tr is not None for tr in trackers):
            checkpoints([j for j in range(len(idx)) if bool(ok[j])])

    return results
