"""The gradient-flow engine: M members of one architecture and width integrated as one batched computation.

Members share the architecture, h and the training data; each keeps its own alpha, time step, stop
rule, status and trajectory. A member that stops leaves the batch, so it costs nothing afterwards.
A single run is an ensemble of one through the same code, so a member follows the same trajectory in an
ensemble as alone (every batched operation acts on each member's own slice), to rounding; where rounding
flips a step's acceptance, the two runs end within the integrator's error (docs/reproducibility.md).

The step (docs/integrator.md): from the accepted point theta with the step's loss coefficients c and gradient
g = J^T c, every member tries theta' = theta - dt g. Its acceptance test (``reference_test`` or
``robust_test``) compares g with the trial's gradient and f~ with the trial's, and sets the next dt
(controller.py); the members that accept move. The coefficients come from a rule of coefficient_rules.py
(explicit, sliding or implicit) and are held fixed through the step. Before each step the stop rules
(stopping.py) take members out of the batch, with their results, or hand them over to the chebyshev rule.
"""

from __future__ import annotations

import time

import attrs
import torch

from dlphase import TrainResult
from dlphase.ensemble_net import stacked
from dlphase.model import rescaled

from ..batched import feed_checkpoints, loss_coefficients
from .coefficient_rules import coefficient_rule
from .controller import proportional, reference
from ..members import Batch, choose, rows, sq
from ..stopping import common_rules, finish_member, stops, validation_tracker


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


def train_ensemble(flow, models, data, monitors, trace=None, handover: int | None = None,
                   trackers=None, start: float | None = None) -> list[TrainResult | Handover]:
    """Train ``models`` (AlphaModels of one architecture and width) in place with ``flow``'s scheme.

    ``monitors``: one :class:`dlphase.monitor.Monitor` (or None) per member, fed at its checkpoints.
    ``trace``: called after every trial step with a dict of per-member tensors (member ids, dt, dout,
    dgrad, accepted, implicit coefficients on, N_Delta, margins crossing the kink), to study the integrator.
    ``handover``: after this many trial steps, a member of a smooth net whose implicit coefficients are off
    (its stiffness is the net's curvature, not its margins': the feature regime) leaves the batch with a
    :class:`Handover` instead of a result, for the chebyshev rule to go on from. ``trackers``: the members'
    early-stopping trackers, when the caller keeps them; ``start``: the pass's perf_counter start.
    """
    start = time.perf_counter() if start is None else start
    x, y = data.x_train, data.y_train
    net, params, params0, alpha, f0 = stacked(models, x)
    loss = flow.loss
    rule = coefficient_rule(flow, net, x, y, len(models))
    test = reference_test if flow.rule == "reference" else robust_test

    def evaluate(p, a, f0_, gradient=True, reuse=False):
        """f~, margins, the plain dObjective/df~, the objective mean l / alpha^2, its gradient (or None), the
        context (``reuse``: it will take more cotangents)."""
        out, ctx = net.forward(p, x, grad=True)
        m = y * rescaled(out, f0_, a)
        c, per = loss_coefficients(loss, m, y, a)
        return out, m, c, per.mean(1) / a ** 2, net.backward(p, ctx, c, reuse=reuse) if gradient else None, ctx

    out, marg, coef, obj, g, ctx = evaluate(params, alpha, f0)
    # every per-member quantity, kept together so that a member that stops leaves all of them (members.py)
    st = Batch(range(len(models)), params=params, params0=params0, alpha=alpha, f0=f0, out=out, marg=marg,
               coef=coef, obj=obj, g=g, slopes=net.slopes(ctx) if test is robust_test and net.kinked else None,
               dt=torch.full((len(models),), flow.dt, dtype=torch.float64, device=x.device))
    rule.start(st, ctx)
    st.gnorm2 = sq(st.g)
    st.t = torch.zeros(len(st), dtype=torch.float64, device=x.device)
    st.steps = torch.zeros(len(st), dtype=torch.long, device=x.device)
    st.rejected = torch.zeros(len(st), dtype=torch.long, device=x.device)
    results: list[TrainResult | Handover | None] = [None] * len(models)
    if trackers is None:
        trackers = [validation_tracker(flow, m, data) for m in models]  # early stopping, or None
    fed = any(mon is not None for mon in monitors) or any(tr is not None for tr in trackers)

    def checkpoints(positions):
        feed_checkpoints(net, st.params, st.params0, positions, st.ids, monitors, trackers, data, st.alpha, st.t,
                         st.steps, st.obj * st.alpha ** 2, st.marg)

    for j, mon in enumerate(monitors):
        if mon is not None:
            mon.start(models[j], data)
    checkpoints(range(len(st)))

    while True:
        elapsed = time.perf_counter() - start
        leave(st, stop_rules(flow, st, rule, trackers, handover, elapsed), net, models, trackers, monitors, results,
              rule, elapsed)
        if not len(st):
            return results
        # one trial step for every member left, with the coefficients of the accepted point
        trial = [v - rows(st.dt.to(x.dtype), v) * gv for v, gv in zip(st.params, st.g)]
        own = rule.own_gradient(st)
        new_out, new_marg, new_coef, new_obj, new_g, ctx = evaluate(trial, st.alpha, st.f0, gradient=own,
                                                                    reuse=rule.reuse)
        dout = (new_marg - st.marg).abs().amax(1)  # |f' - f|, as y = +-1
        # g'_s: the trial's gradient with the step's coefficients where the rule holds them and, for relu, the
        # accepted point's activation slopes, so that |g'_s - g| is smooth curvature, O(dt)
        g_s = (new_g if own and st.slopes is None else
               net.backward(trial, ctx, rule.smooth_coefficients(st.coef, new_coef), slopes=st.slopes,
                            reuse=st.slopes is None))
        ok, dgrad, new_dt = test(flow, st, g_s, dout)
        rule.checked(st, ok, new_out - st.out, trial, ctx, g_s)
        new_coef, new_g = rule.next(st, trial, ctx, new_marg, new_coef, new_g, ok, new_dt)
        if trace is not None:
            trace({"members": list(st.ids), "dt": st.dt, "dout": dout, "dgrad": dgrad, "ok": ok,
                   "implicit": None, "n_delta": (new_marg < 1).sum(1),
                   "crossed": (((st.marg - loss.kink) * (new_marg - loss.kink) <= 0) & (st.marg != new_marg)).sum(1)
                   if loss.kink is not None else None} | rule.traced(st))
        # the accepted members move to their trial points
        st.t = st.t + torch.where(ok, st.dt, torch.zeros_like(st.dt))
        st.steps = st.steps + ok.long()
        st.rejected = st.rejected + (~ok).long()
        st.params, st.g, st.gnorm2 = choose(ok, trial, st.params), choose(ok, new_g, st.g), choose(ok, sq(new_g),
                                                                                                   st.gnorm2)
        if st.slopes is not None:
            st.slopes = choose(ok, net.slopes(ctx), st.slopes)
        st.out, st.marg = choose(ok, new_out, st.out), choose(ok, new_marg, st.marg)
        st.coef, st.obj = choose(ok, new_coef, st.coef), choose(ok, new_obj, st.obj)
        st.dt = new_dt
        if fed:
            checkpoints([j for j in range(len(st)) if bool(ok[j])])


def turn(st, g_new):
    """dgrad = |g' - g|^2 / (|g| |g'|) per member, from the accepted gradient st.g; 0 where g' = 0."""
    new_gnorm2 = sq(g_new)
    return torch.where(new_gnorm2 > 0, sq([a - b for a, b in zip(g_new, st.g)]) / (st.gnorm2 * new_gnorm2).sqrt(),
                       torch.zeros_like(st.gnorm2))


def reference_test(flow, st, g_new, dout):
    """The reference rule: accept when dgrad = |g' - g|^2 / (|g| |g'|) < max_dgrad and dout < max_dout; the
    reference controller. Returns (accepted, dgrad, next dt), each (M,)."""
    dgrad = turn(st, g_new)
    ok = (dgrad < flow.max_dgrad) & (dout < flow.max_dout)  # NaN compares False: rejected
    easy = ok & (dgrad < 0.5 * flow.max_dgrad) & (dout < 0.5 * flow.max_dout)
    return ok, dgrad, reference(st.dt, ok, easy, flow.grow, flow.shrink)


def robust_test(flow, st, g_s, dout):
    """The robust rule: dgrad from g'_s; accept when err = max(sqrt(dgrad / max_dgrad), dout / max_dout) <= 1
    (dgrad is second order in dt, dout first order: both as first-order errors); a proportional controller."""
    dgrad = turn(st, g_s)
    err = torch.maximum((dout / flow.max_dout).to(torch.float64), (dgrad / flow.max_dgrad).sqrt().to(torch.float64))
    ok = err <= 1
    return ok, dgrad, proportional(st.dt, err, order=1, shrink=flow.shrink, grow=flow.grow_max)


def stop_rules(flow, st, rule, trackers, handover, elapsed):
    """The members that stop before the next trial step: (position, status, message), by the rules in order of
    precedence."""
    finite = torch.isfinite(st.out).all(1) & torch.isfinite(st.gnorm2)
    rules = common_rules(flow, finite, st.marg, st.steps + st.rejected, st.t, elapsed,
                         [trackers[m] for m in st.ids]) + [
        (st.dt < flow.min_dt, "budget",
         lambda j: f"stalled: dt = {float(st.dt[j]):.3g} fell below min_dt = {flow.min_dt:g}"),
        (st.gnorm2 == 0, "budget", lambda j: "stalled: zero gradient with unsatisfied margins"),
    ]
    leaving = rule.hand_over(st) if handover is not None else None
    if leaving is not None:
        rules.append(((st.steps + st.rejected >= handover) & leaving, HANDOVER, lambda j: ""))
    return stops(rules)


def leave(st, stopped, net, models, trackers, monitors, results, rule, elapsed) -> None:
    """Finish the ``stopped`` members (their results into ``results``, by member) and remove them from the
    batch."""
    if not stopped:
        return
    for j, status, message in stopped:
        m = st.ids[j]
        if status == HANDOVER:
            net.unstack(st.params, j, models[m].net)
            results[m] = Handover(t=float(st.t[j]), steps=int(st.steps[j]), rejected=int(st.rejected[j]),
                                  dt=float(st.dt[j]))
        else:
            results[m] = finish_member(net, st.params, j, models[m], trackers[m], monitors[m], status, message,
                                       int(st.steps[j]), float(st.t[j]), elapsed, rejected=int(st.rejected[j]))
    gone = {j for j, _, _ in stopped}
    rule.keep(torch.tensor([j for j in range(len(st)) if j not in gone], dtype=torch.long, device=st.dt.device))
    st.drop(gone)
