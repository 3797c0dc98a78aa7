"""Gradient flow d theta / dt = -grad (L / alpha^2), by adaptive steps with error control.

Four rules (docs/integrator.md):

- ``reference``: the reference code's explicit Euler scheme. Try theta <- theta - dt g; accept if
  dgrad = |g' - g|^2 / (|g| |g'|) < max_dgrad and dout = max_mu |f'_mu - f_mu| < max_dout; dt *= grow after an
  easy step, dt /= shrink after a rejection.
- ``robust``: Euler steps that kinks (relu, the plain hinge) and stiff margins do not stall: dgrad past the
  kinks, sliding-mode forces on the hinge, linearly implicit coefficients for a curved loss's stiff margins,
  and a proportional controller (ensemble_flow.py).
- ``chebyshev``: stabilised explicit Runge-Kutta steps (chebyshev.py) for the stiff flow of a smooth net in
  the feature regime, where Euler steps are held below 2 / rho by the Hessian's largest eigenvalue rho.
- ``auto`` (default): robust steps; after HANDOVER_AFTER trial steps, a member of a smooth net whose implicit
  coefficients do not pay (its stiffness is its curvature, not its margins') goes on by chebyshev steps.

Time convention: t is the time of the flow of L / alpha^2 with f = alpha (f~ - f~0), f~'s last layer
divided by sqrt(h) and alpha = alpha_tilde / sqrt(h).
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import attrs

import dlphase
from dlphase import param
from dlphase.specs import non_negative, positive

from .batched import Batched
from .integrator.chebyshev import train_chebyshev
from .integrator.coefficient_rules import PROBE
from .integrator.ensemble_flow import Handover, train_ensemble
from .stopping import validation_tracker

#: rule auto: the trial steps after which a member of a smooth net whose implicit coefficients do not pay goes
#: on by the chebyshev rule (three decisions of coefficient_rules.implicit_pays)
HANDOVER_AFTER = 3 * PROBE


@attrs.frozen(kw_only=True)
class GradientFlow(Batched):
    """Full-batch gradient flow by adaptive steps (auto, robust, chebyshev or reference rule); stops when all
    y f >= 1."""

    name: ClassVar[str] = "gradient_flow"
    steps_name: ClassVar[str] = "trial steps (gradients, for chebyshev steps)"
    rule: Literal["auto", "robust", "reference", "chebyshev"] = param(
        default="auto", doc="the integrator: robust (Euler steps; kinks of the hinge or relu do not stall the flow), "
                            "chebyshev (stabilised Runge-Kutta steps, for the stiff flow of smooth nets in the "
                            "feature regime), auto (robust, then chebyshev for each member of a smooth net whose "
                            "stiffness is its curvature) or reference (the reference code's rule, for comparison)")
    max_dgrad: float = param(default=1e-4, doc="accept a step only if |g'-g|^2/(|g||g'|) < max_dgrad",
                             validator=positive)
    max_dout: float = param(default=0.1, doc="accept a step only if no f(x_mu) moves by max_dout or more",
                            validator=positive)
    max_error: float = param(default=0.01, doc="chebyshev rule: accept a step only if its local error estimate is "
                                                "below max_error times the step's length |theta' - theta|",
                             validator=positive)
    dt: float = param(default=1.0, doc="initial time step", validator=positive)
    grow: float = param(default=1.1, doc="reference rule: dt *= grow after an easy step (both below half their limits)",
                        validator=positive)
    shrink: float = param(default=10.0, doc="dt /= shrink after a rejected step", validator=positive)
    grow_max: float = param(default=1.2, doc="robust and chebyshev rules: dt grows by at most this factor per step",
                            validator=positive)
    implicit: bool = param(default=True, doc="robust rule, curved loss (soft hinge, ...): the loss coefficients of the "
                                             "stiff margins by linearly implicit Euler")
    kernel_refresh: float = param(default=0.005, doc="robust rule, implicit or sliding coefficients: reuse a "
                                                     "member's training-set NTK until it mispredicts a step's change "
                                                     "of f~ by this fraction (0: the kernel blocks afresh at every "
                                                     "step; relu nets always)",
                                  validator=non_negative)
    sliding_band: float = param(default=0.02, doc="robust rule, plain hinge: margins within this of the kink get "
                                                  "Filippov (sliding-mode) forces", validator=positive)
    sliding_offset: float = param(default=1e-4, doc="robust rule, plain hinge: sliding margins relax to 1 + this",
                                  validator=positive)
    sliding_steps: float = param(default=2.0, doc="robust rule, plain hinge: sliding margins relax over this many "
                                                  "time steps", validator=positive)
    min_dt: float = param(default=1e-30, doc="stop as stalled (status budget) when dt falls below this",
                          validator=non_negative)

    def train_pass(self, models, data, monitors):
        if self.rule == "chebyshev":
            return train_chebyshev(self, models, data, monitors)
        if self.rule != "auto":
            return train_ensemble(self, models, data, monitors)
        # robust steps first; the members whose stiffness is their net's curvature go on by chebyshev steps
        start = time.perf_counter()
        trackers = [validation_tracker(self, m, data) for m in models]
        results = train_ensemble(self, models, data, monitors, handover=HANDOVER_AFTER, trackers=trackers,
                                 start=start)
        moved = [j for j, r in enumerate(results) if isinstance(r, Handover)]
        if moved:
            pick = lambda seq: [seq[j] for j in moved]  # noqa: E731
            for j, r in zip(moved, train_chebyshev(self, pick(models), data, pick(monitors), resume=pick(results),
                                                   trackers=pick(trackers), start=start)):
                results[j] = r
        return results


@dlphase.hookimpl
def register_dynamics(register):
    register(GradientFlow)
