"""Gradient flow d theta / dt = -grad (L / alpha^2) by adaptive explicit Euler steps.

From the current output ``out`` (f on the training set) and gradient ``g``, try
theta <- theta - dt g and recompute out', g'. The rule ``reference`` accepts if
dgrad = |g' - g|^2 / (|g| |g'|) < max_dgrad and dout = max_mu |out'_mu - out_mu| < max_dout, grows dt
by ``grow`` after an easy step and divides it by ``shrink`` after a rejection, as the reference code.
The default rule ``robust`` measures dgrad past relu kinks, gives the plain hinge's margins at its kink
sliding-mode forces and a curved loss's stiff margins linearly implicit coefficients, and sets dt with a
proportional controller (ensemble_flow.py), so that kinks and stiff margins do not stall the flow.
Time convention: t is the time of the flow of L / alpha^2 with f = alpha (f~ - f~0), f~'s last layer
divided by sqrt(h) and alpha = alpha_tilde / sqrt(h) (SCIENCE.md section 1).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs

import dlphase
from dlphase import param
from dlphase.specs import non_negative, positive

from .batched import Batched
from .ensemble_flow import train_ensemble


@attrs.frozen(kw_only=True)
class GradientFlow(Batched):
    """Full-batch gradient flow by adaptive Euler steps (robust or reference rule); stops when all y f >= 1."""

    name: ClassVar[str] = "gradient_flow"
    steps_name: ClassVar[str] = "trial steps"
    rule: Literal["robust", "reference"] = param(
        default="robust", doc="step acceptance: robust (kinks of the hinge or relu do not stall the flow) "
                              "or reference (the reference code's rule, for comparison)")
    max_dgrad: float = param(default=1e-4, doc="accept a step only if |g'-g|^2/(|g||g'|) < max_dgrad",
                             validator=positive)
    max_dout: float = param(default=0.1, doc="accept a step only if no f(x_mu) moves by max_dout or more",
                            validator=positive)
    dt: float = param(default=1.0, doc="initial time step", validator=positive)
    grow: float = param(default=1.1, doc="reference rule: dt *= grow after an easy step (both below half their limits)",
                        validator=positive)
    shrink: float = param(default=10.0, doc="dt /= shrink after a rejected step", validator=positive)
    grow_max: float = param(default=1.2, doc="robust rule: dt grows by at most this factor per step",
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
        return train_ensemble(self, models, data, monitors)


@dlphase.hookimpl
def register_dynamics(register):
    register(GradientFlow)
