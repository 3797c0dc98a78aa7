"""The robust step's loss-coefficient rules: which c = dObjective/df~ a trial step theta' = theta - dt J^T c
takes, held fixed through the step. One interface, three strategies:

- :class:`Explicit`: c at the accepted point, the plain gradient flow (and the reference rule's).
- :class:`Sliding`: a loss with a kink (``Loss.kink``: the plain hinge). Margins within ``sliding_band`` of
  the kink take the Filippov weights that relax them onto 1 + ``sliding_offset`` over ``sliding_steps``
  steps (sliding.py), so they rest on the kink instead of chattering across it, which held dt near 1e-5.
- :class:`Implicit`: a curved loss (the soft hinge's l'' = beta / 4 at m = 1). Backward Euler on the stiff
  margin modes (implicit.py), which otherwise hold dt by their coefficient change. Every PROBE trial steps
  each member is switched to or from them (:func:`implicit_pays`): in the feature regime they do not pay.

The two rules that solve on NTK blocks take them from a :class:`KernelCache` (kernel_cache.py,
``kernel_refresh``) where it fits, else from the net. A rule keeps its per-member state in the engine's
:class:`Batch`, so members that stop leave it with the rest.
"""

from __future__ import annotations

import torch

from ..batched import loss_coefficients, member_rows
from .implicit import curvature_scale, implicit_coefficients
from .kernel_cache import KernelCache, fits
from ..members import sq
from .sliding import sliding_coefficients

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
    ratio = sq([a - b for a, b in zip(g_s, g_plain)]) / sq([a - b for a, b in zip(g_step, g)])
    return torch.where(ratio > SWITCH_ON, True, torch.where(ratio < SWITCH_OFF, False, on))


class CoefficientRule:
    """The plain coefficients; the base of the others. ``st`` is the engine's Batch (params, alpha, marg, coef,
    g, gnorm2, slopes, dt, steps, rejected); a trial point comes with its forward context ``ctx``."""

    #: the trial's forward context will take more cotangents than its own gradient's
    reuse = False

    def __init__(self, net, x, y, loss, flow):
        self.net, self.x, self.y, self.loss, self.flow = net, x, y, loss, flow

    def start(self, st, ctx) -> None:
        """Set the first step's st.coef and st.g at the starting point (st.coef holds the plain ones)."""

    def own_gradient(self, st) -> bool:
        """Whether a trial step needs its own gradient J'^T c' (c' plain at the trial point): it is g'_s, the
        gradient whose change from g measures the step's curvature."""
        return True

    def smooth_coefficients(self, step_coef, trial_coef):
        """The coefficients of g'_s when it is formed apart (relu slopes, or a rule that holds its own)."""
        return trial_coef

    def hand_over(self, st):
        """(M,) bool: the members that should leave for the chebyshev rule; None for none."""
        return None

    def keep(self, positions: torch.Tensor) -> None:
        """Keep the batch positions ``positions`` in any state held outside the Batch."""

    def checked(self, st, ok, change, trial, ctx, g_s) -> None:
        """Learn from a trial step: which members accepted it (``ok``), how it changed f~ (``change``)."""

    def next(self, st, trial, ctx, marg, coef, g, ok, dt):
        """The coefficients and gradient at the trial points for the next step (of size ``dt``), for the
        members that accept them (``ok``), from the trial's plain ``coef`` and ``g`` (None unless own);
        st.coef and st.g of those that reject, for their shorter step."""
        return coef, g

    def traced(self, st) -> dict:
        """The rule's per-member state, for the engine's trace."""
        return {}


class Explicit(CoefficientRule):
    """c = l'(m) y / (P alpha) at the accepted point."""


class _Blocks(CoefficientRule):
    """A rule that solves for coefficients on NTK blocks of the margins it holds."""

    reuse = True

    def __init__(self, net, x, y, loss, flow, members: int):
        super().__init__(net, x, y, loss, flow)
        # each member's cached Theta(x, x) while it predicts the accepted steps; relu nets form their blocks
        # afresh, as their kernel jumps when units cross their kinks
        self.cache = (KernelCache(net, x, flow.kernel_refresh) if flow.kernel_refresh > 0 and not net.kinked
                      and fits(members, len(x), x.dtype) else None)
        self.blocks = self.cache if self.cache is not None else net

    def coefficients(self, st, p, ctx, m, positions, dt):
        """The coefficients (M, P) of steps of size ``dt`` from the points p (margins m), for the batch
        ``positions``."""
        raise NotImplementedError

    def start(self, st, ctx):
        st.coef = self.coefficients(st, st.params, ctx, st.marg, list(range(len(st))), st.dt)
        st.g = self.net.backward(st.params, ctx, st.coef)

    def own_gradient(self, st):
        return False

    def keep(self, positions):
        if self.cache is not None:
            self.cache.select(positions)

    def checked(self, st, ok, change, trial, ctx, g_s):
        if self.cache is not None:
            self.cache.check(ok, st.coef, change, st.dt)

    def next(self, st, trial, ctx, marg, coef, g, ok, dt):
        accepted = torch.nonzero(ok).flatten().tolist()
        plain = coef
        coef = self.coefficients(st, trial, ctx, marg, accepted, dt)
        if g is None:
            return coef, self.net.backward(trial, ctx, coef) if accepted else st.g
        # g = J'^T plain: add J'^T (coef - plain) on the accepted members' changed margins
        changed = member_rows((coef != plain) & ok[:, None], range(len(ok)))
        return coef, g if changed is None else self.net.add_backward(trial, ctx, g, coef - plain, changed)


class Sliding(_Blocks):
    """Filippov forces at the loss's kink (sliding.py); g'_s keeps the step's coefficients."""

    def start(self, st, ctx):
        st.weights = (st.marg < self.loss.kink).to(st.marg.dtype)
        super().start(st, ctx)

    def smooth_coefficients(self, step_coef, trial_coef):
        return step_coef

    def coefficients(self, st, p, ctx, m, positions, dt):
        flow = self.flow
        c, w = sliding_coefficients(self.blocks, p, ctx, self.x, self.y, m, st.alpha, self.loss, flow.sliding_band,
                                    self.loss.kink + flow.sliding_offset, flow.sliding_steps * dt, positions,
                                    st.weights)
        chosen = torch.zeros(len(m), dtype=torch.bool, device=m.device)
        chosen[positions] = True
        st.weights = torch.where(chosen[:, None], w, st.weights)
        return c


class Implicit(_Blocks):
    """Linearly implicit coefficients on the stiff margins (implicit.py), for the members switched on (st.on);
    g'_s takes the trial point's own coefficients, so dgrad sees how far they are from the predicted c~."""

    def __init__(self, net, x, y, loss, flow, members: int, scale: float):
        super().__init__(net, x, y, loss, flow, members)
        self.scale = scale

    def start(self, st, ctx):
        st.on = torch.ones(len(st), dtype=torch.bool, device=self.x.device)
        super().start(st, ctx)

    def own_gradient(self, st):
        return st.slopes is None

    def hand_over(self, st):
        # a member of a smooth net whose implicit coefficients are off: its stiffness is the net's curvature
        return None if self.net.kinked else ~st.on

    def coefficients(self, st, p, ctx, m, positions, dt):
        positions = [j for j in positions if bool(st.on[j])]
        return implicit_coefficients(self.blocks, p, ctx, self.x, self.y, m, st.alpha, self.loss, self.scale, dt,
                                     positions)

    def checked(self, st, ok, change, trial, ctx, g_s):
        super().checked(st, ok, change, trial, ctx, g_s)
        if int(st.steps[0] + st.rejected[0]) % PROBE == 0:
            plain = loss_coefficients(self.loss, st.marg, self.y, st.alpha)[0]
            st.on = implicit_pays(self.net, trial, ctx, st.g, g_s, st.coef, plain, st.slopes, st.on)

    def next(self, st, trial, ctx, marg, coef, g, ok, dt):
        coef, g = super().next(st, trial, ctx, marg, coef, g, ok, dt)
        if bool(ok.all()):
            return coef, g
        # the rejected members' coefficients for their shorter step
        again = torch.nonzero(~ok).flatten()
        redo = torch.where(ok[:, None], st.coef, self.coefficients(st, st.params, None, st.marg, again.tolist(), dt))
        again = torch.nonzero((redo != st.coef).any(1)).flatten()      # those whose coefficients changed
        st.coef = redo
        if len(again):
            sub = [v.index_select(0, again) for v in st.params]   # a pass over those members only
            _, ctx0 = self.net.forward(sub, self.x, grad=True)
            g0 = self.net.backward(sub, ctx0, st.coef.index_select(0, again))
            st.g = [v.index_copy(0, again, v0) for v, v0 in zip(st.g, g0)]
            st.gnorm2 = st.gnorm2.index_copy(0, again, sq(g0))
        return coef, g

    def traced(self, st):
        return {"implicit": st.on.clone()}


def coefficient_rule(flow, net, x, y, members: int) -> CoefficientRule:
    """The rule ``flow`` asks for: sliding at a kink, implicit on a curved loss with ``flow.implicit``, explicit
    otherwise and under the reference rule."""
    loss = flow.loss
    if flow.rule == "reference":
        return Explicit(net, x, y, loss, flow)
    if loss.kink is not None:
        return Sliding(net, x, y, loss, flow, members)
    scale = curvature_scale(loss, x.dtype, x.device) if flow.implicit else 0.0
    if scale > 0:
        return Implicit(net, x, y, loss, flow, members, scale)
    return Explicit(net, x, y, loss, flow)
