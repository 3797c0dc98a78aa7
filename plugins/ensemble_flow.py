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

import time

import attrs
import torch

from dlphase import TrainResult
from dlphase.ensemble import stacked
from dlphase.model import rescaled

from .batched import feed_checkpoints, loss_coefficients, member_rows
from .controller import proportional, reference
from .implicit import curvature_scale, implicit_coefficients
from .kernel_cache import KernelCache, fits
from .members import Batch, choose, rows, sq
from .sliding import sliding_coefficients
from .stopping import common_rules, finish_member, stops, validation_tracker


#: every PROBE trial steps each member of the implicit rule is switched to or from the implicit coefficients
PROBE = 10
#: (dgrad ratios) on when an explicit step takes SWITCH_ON times more gradient change from its coefficients than
#: from curvature (an explicit step about 3 times shorter), off below SWITCH_OFF
SWITCH_ON = 9.0
SWITCH_OFF = 2.0


#: the status of a member handed over to another rule
HANDOVER = "handover"


@attrs.frozen(kw_only=True)
class Handover:
    """Where a member handed over stands: its flow time, accepted and rejected steps and next step size (its
    parameters are in its module)."""

    t: float
    steps: int
    rejected: int
    dt: float


def implicit_pays(net, trial, ctx, g, g_s, coef, plain, slopes, on):
    """Whether each member should take the implicit coefficients (M,) bool, from a trial step: the gradient
    change an explicit step would take from its coefficients, |J'^T (c' - c)|^2 (c the plain coefficients at
    the accepted point), against that from curvature, |J'^T c_step - J^T c_step|^2 (c_step the step's own).
    The implicit coefficients cost a solve per step and pay off only where the first dominates (stiff margin
    modes, relu's chattering margins); in the feature regime the second does, and they are switched off."""
    g_step = net.backward(trial, ctx, coef, slopes=slopes, reuse=slopes is None)
    g_plain = net.backward(trial, ctx, plain, slopes=slopes, reuse=slopes is None)
    ratio = sq([a - b for a, b in zip(g_s, g_plain)]) / sq([a - b for a, b in zip(g_step, g)])
    return torch.where(ratio > SWITCH_ON, True, torch.where(ratio < SWITCH_OFF, False, on))


def train_ensemble(flow, models, data, monitors, trace=None, handover: int | None = None,
                   trackers=None, start: float | None = None) -> list[TrainResult | Handover]:
    """Train ``models`` (AlphaModels of one architecture and width) in place with ``flow``'s scheme.

    ``monitors``: one :class:`dlphase.trajectory.Monitor` (or None) per member, fed at its checkpoints.
    ``trace``: called after every trial step with a dict of per-member tensors (member ids, dt, dout,
    dgrad, accepted, implicit coefficients on, N_Delta, margins crossing the kink), to study the integrator.
    ``handover``: after this many trial steps, a member of a smooth net whose implicit coefficients are off
    (its stiffness is the net's curvature, not its margins': the feature regime) leaves the batch with a
    :class:`Handover` instead of a result, for the chebyshev rule to go on from. ``trackers``: the members'
    early-stopping trackers, when the caller keeps them; ``start``: the pass's perf_counter start.
    """
    start = time.perf_counter() if start is None else start
    x, y = data.x_train, data.y_train
    M = len(models)
    net, params, params0, alpha, f0 = stacked(models, x)
    loss = flow.loss
    robust = flow.rule != "reference"
    kink = loss.kink

    def margins(out, a, f0_):
        return y * rescaled(out, f0_, a)

    def evaluate(p, a, f0_, gradient=True, reuse=False):
        """f~, margins, dObjective/df~, the objective mean l / alpha^2, its gradient (or None), the context
        (``reuse``: it will take more cotangents)."""
        out, ctx = net.forward(p, x, grad=True)
        m = margins(out, a, f0_)
        c, per = loss_coefficients(loss, m, y, a)
        return out, m, c, per.mean(1) / a ** 2, net.backward(p, ctx, c, reuse=reuse) if gradient else None, ctx

    out, marg, coef, obj, g, ctx = evaluate(params, alpha, f0)
    # every per-member quantity, kept together so that a member that stops leaves all of them (members.py)
    st = Batch(range(M), params=params, params0=params0, alpha=alpha, f0=f0, out=out, marg=marg, coef=coef, obj=obj,
               g=g, slopes=net.slopes(ctx) if robust and net.kinked else None,
               dt=torch.full((M,), flow.dt, dtype=torch.float64, device=x.device))
    # the robust rule's loss coefficients for a step: Filippov forces at a kink (sliding.py), or linearly
    # implicit ones on a curved loss (implicit.py); each is held fixed through the trial step
    scale = curvature_scale(loss, x.dtype, x.device) if robust and kink is None and flow.implicit else 0.0
    mode = "sliding" if robust and kink is not None else "implicit" if scale > 0 else None
    st.weights = (marg < kink).to(marg.dtype) if mode == "sliding" else None
    # their kernel blocks: from each member's cached Theta(x, x) while it predicts the accepted steps
    # (kernel_cache.py); relu nets form them afresh, as their kernel jumps when units cross their kinks
    cache = (KernelCache(net, x, flow.kernel_refresh) if mode is not None and flow.kernel_refresh > 0
             and not net.kinked and fits(M, len(x), x.dtype) else None)
    blocks = cache if cache is not None else net

    # the members that take the implicit coefficients, decided every PROBE trial steps (implicit_pays)
    st.on = torch.ones(M, dtype=torch.bool, device=x.device)

    def step_coefficients(p, ctx_, m, a, positions, dt_next):
        """The coefficients of the next steps from the points p (margins m), for the batch ``positions``."""
        if mode == "implicit":
            positions = [j for j in positions if bool(st.on[j])]
            return implicit_coefficients(blocks, p, ctx_, x, y, m, a, loss, scale, dt_next, positions)
        c, w = sliding_coefficients(blocks, p, ctx_, x, y, m, a, loss, flow.sliding_band, kink + flow.sliding_offset,
                                    flow.sliding_steps * dt_next, positions, st.weights)
        chosen = torch.zeros(len(m), dtype=torch.bool, device=m.device)
        chosen[positions] = True
        st.weights = torch.where(chosen[:, None], w, st.weights)
        return c

    if mode is not None:
        st.coef = step_coefficients(st.params, ctx, st.marg, st.alpha, list(range(M)), st.dt)
        st.g = net.backward(st.params, ctx, st.coef)
    st.gnorm2 = sq(st.g)
    st.t = torch.zeros(M, dtype=torch.float64, device=x.device)
    st.steps = torch.zeros(M, dtype=torch.long, device=x.device)
    st.rejected = torch.zeros(M, dtype=torch.long, device=x.device)
    results: list[TrainResult | Handover | None] = [None] * M

    if trackers is None:
        trackers = [validation_tracker(flow, m, data) for m in models]  # early stopping, or None

    def checkpoints(positions):
        feed_checkpoints(net, st.params, st.params0, positions, st.ids, monitors, trackers, data, st.alpha, st.t,
                         st.steps, st.obj * st.alpha ** 2, st.marg)

    for j, mon in enumerate(monitors):
        if mon is not None:
            mon.start(models[j], data)
    checkpoints(range(M))

    while len(st):
        # the stop rules, per member, in order of precedence
        elapsed = time.perf_counter() - start
        finite = torch.isfinite(st.out).all(1) & torch.isfinite(st.gnorm2)
        rules = common_rules(flow, finite, st.marg, st.steps + st.rejected, st.t, elapsed,
                             [trackers[m] for m in st.ids]) + [
            (st.dt < flow.min_dt, "budget",
             lambda j: f"stalled: dt = {float(st.dt[j]):.3g} fell below min_dt = {flow.min_dt:g}"),
            (st.gnorm2 == 0, "budget", lambda j: "stalled: zero gradient with unsatisfied margins"),
        ]
        if handover is not None and mode == "implicit" and not net.kinked:
            rules.append(((st.steps + st.rejected >= handover) & ~st.on, HANDOVER, lambda j: ""))
        stopped = stops(rules)
        if stopped:
            for j, status, message in stopped:
                m = st.ids[j]
                if status == HANDOVER:
                    net.unstack(st.params, j, models[m].net)
                    results[m] = Handover(t=float(st.t[j]), steps=int(st.steps[j]), rejected=int(st.rejected[j]),
                                          dt=float(st.dt[j]))
                    continue
                results[m] = finish_member(net, st.params, j, models[m], trackers[m], monitors[m], status, message,
                                           int(st.steps[j]), float(st.t[j]), elapsed, rejected=int(st.rejected[j]))
            gone = {j for j, _, _ in stopped}
            if cache is not None:
                cache.select(torch.tensor([j for j in range(len(st)) if j not in gone], dtype=torch.long,
                                          device=x.device))
            st.drop(gone)
            if not len(st):
                break

        # one trial step for every member left
        step = st.dt.to(x.dtype)
        trial = [v - rows(step, v) * gv for v, gv in zip(st.params, st.g)]
        # the trial's own gradient: what the reference rule compares, and the robust rule's g'_s unless the
        # step's coefficients (sliding) or the accepted slopes (relu) go into g'_s instead
        own = mode is None or (mode == "implicit" and st.slopes is None)
        # (reuse, with a coefficient rule, whoever is switched on: how a member's gradients are formed must not
        # depend on the other members)
        new_out, new_marg, new_coef, new_obj, new_g, ctx = evaluate(trial, st.alpha, st.f0, gradient=own,
                                                                    reuse=mode is not None)
        dout = (new_marg - st.marg).abs().amax(1)  # |f' - f|, as y = +-1
        if not robust:
            new_gnorm2 = sq(new_g)
            dgrad = torch.where(new_gnorm2 > 0, sq([a - b for a, b in zip(new_g, st.g)])
                                / (st.gnorm2 * new_gnorm2).sqrt(), torch.zeros_like(st.gnorm2))
            ok = (dgrad < flow.max_dgrad) & (dout < flow.max_dout)  # NaN compares False: rejected
            easy = ok & (dgrad < 0.5 * flow.max_dgrad) & (dout < 0.5 * flow.max_dout)
            new_dt = reference(st.dt, ok, easy, flow.grow, flow.shrink)
        else:
            # g_s: the gradient at the trial point with the accepted point's loss coefficients (the step's own,
            # with a coefficient rule) and, for relu, its activation slopes: |g_s - g| is smooth curvature, O(dt)
            g_s = (new_g if mode != "sliding" and st.slopes is None else
                   net.backward(trial, ctx, st.coef if mode == "sliding" else new_coef, slopes=st.slopes,
                                reuse=st.slopes is None))
            g_s2 = sq(g_s)
            dgrad = torch.where(g_s2 > 0, sq([a - b for a, b in zip(g_s, st.g)]) / (st.gnorm2 * g_s2).sqrt(),
                                torch.zeros_like(st.gnorm2))
            # dgrad is second order in dt, dout first order: both as first-order errors
            err = torch.maximum((dout / flow.max_dout).to(torch.float64),
                                (dgrad / flow.max_dgrad).sqrt().to(torch.float64))
            ok = err <= 1
            if cache is not None:
                cache.check(ok, st.coef, new_out - st.out, st.dt)
            new_dt = proportional(st.dt, err, order=1, shrink=flow.shrink, grow=flow.grow_max)
            if mode == "implicit" and int(st.steps[0] + st.rejected[0]) % PROBE == 0:
                st.on = implicit_pays(net, trial, ctx, st.g, g_s, st.coef,
                                      loss_coefficients(loss, st.marg, y, st.alpha)[0], st.slopes, st.on)
        if mode is not None:  # the accepted points' coefficients, for the step size they will be tried with
            accepted = torch.nonzero(ok).flatten().tolist()
            plain = new_coef
            new_coef = step_coefficients(trial, ctx, new_marg, st.alpha, accepted, new_dt)
            if not own:
                new_g = net.backward(trial, ctx, new_coef) if accepted else st.g
            else:  # new_g = J'^T plain: add J'^T (new_coef - plain) on the accepted members' changed margins
                changed = member_rows((new_coef != plain) & ok[:, None], range(len(ok)))
                if changed is not None:
                    new_g = net.add_backward(trial, ctx, new_g, new_coef - plain, changed)
            if mode == "implicit" and len(accepted) < len(ok):  # the rejected ones' for their shorter step
                again = torch.nonzero(~ok).flatten()
                redo = torch.where(ok[:, None], st.coef,
                                   step_coefficients(st.params, None, st.marg, st.alpha, again.tolist(), new_dt))
                again = torch.nonzero((redo != st.coef).any(1)).flatten()      # those whose coefficients changed
                st.coef = redo
                if len(again):
                    sub = [v.index_select(0, again) for v in st.params]   # a pass over those members only
                    _, ctx0 = net.forward(sub, x, grad=True)
                    g0 = net.backward(sub, ctx0, st.coef.index_select(0, again))
                    st.g = [v.index_copy(0, again, v0) for v, v0 in zip(st.g, g0)]
                    st.gnorm2 = st.gnorm2.index_copy(0, again, sq(g0))
        new_gnorm2 = sq(new_g)
        if trace is not None:
            trace({"members": list(st.ids), "dt": st.dt, "dout": dout, "dgrad": dgrad, "ok": ok,
                   "implicit": st.on.clone() if mode == "implicit" else None,
                   "n_delta": (new_marg < 1).sum(1),
                   "crossed": (((st.marg - kink) * (new_marg - kink) <= 0) & (st.marg != new_marg)).sum(1)
                   if kink is not None else None})
        st.t = st.t + torch.where(ok, st.dt, torch.zeros_like(st.dt))
        st.steps = st.steps + ok.long()
        st.rejected = st.rejected + (~ok).long()
        st.params, st.g = choose(ok, trial, st.params), choose(ok, new_g, st.g)
        if st.slopes is not None:
            st.slopes = choose(ok, net.slopes(ctx), st.slopes)
        st.out, st.marg, st.coef = choose(ok, new_out, st.out), choose(ok, new_marg, st.marg), choose(ok, new_coef,
                                                                                                      st.coef)
        st.obj, st.gnorm2 = choose(ok, new_obj, st.obj), choose(ok, new_gnorm2, st.gnorm2)
        st.dt = new_dt
        if any(mon is not None for mon in monitors) or any(tr is not None for tr in trackers):
            checkpoints([j for j in range(len(st)) if bool(ok[j])])

    return results
