"""Per-sample losses l(m) of the margin m = y f, with Delta = 1 - m."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
import torch.nn.functional as F

import dlphase
from dlphase import Loss, param
from dlphase.specs import non_negative, positive


@attrs.frozen(kw_only=True)
class Hinge(Loss):
    """max(0, Delta): the plain hinge; its gradient jumps where a margin crosses 1."""

    name: ClassVar[str] = "hinge"
    kink: ClassVar[float] = 1.0

    def __call__(self, margin):
        return torch.relu(1 - margin)


@attrs.frozen(kw_only=True)
class QuadraticHinge(Loss):
    """max(0, Delta + offset)^2 / 2: the energy U of the jamming analysis, per constraint, aimed a little past the
    margin. With offset = 0, an accurate flow brings unsatisfied margins to 1 only asymptotically (the force
    vanishes with Delta), so N_Delta never reaches 0 and SAT cannot be told from UNSAT in finite time. Aiming at
    1 + offset, a satisfiable set of constraints is satisfied (every Delta <= 0, U = 0) after a time of order
    log(1 / offset) over the smallest curvature, while an unsatisfiable one keeps N_Delta > 0 and U > 0."""

    name: ClassVar[str] = "quadratic_hinge"
    offset: float = param(default=1e-3, doc="margins are pulled to 1 + offset, so that a satisfiable fit ends with "
                                            "every y f >= 1 in finite time (0: the bare U)", validator=non_negative)

    def __call__(self, margin):
        return 0.5 * torch.relu(1 + self.offset - margin) ** 2


@attrs.frozen(kw_only=True)
class SoftHinge(Loss):
    """softplus(beta Delta) / beta: a smooth hinge (beta = 20 in the reference runs)."""

    name: ClassVar[str] = "soft_hinge"
    beta: float = param(default=20.0, doc="sharpness; beta -> infinity gives the hinge", validator=positive)

    def __call__(self, margin):
        return F.softplus(self.beta * (1 - margin)) / self.beta


@attrs.frozen(kw_only=True)
class CrossEntropy(Loss):
    """log(1 + exp(-y f)), the logistic loss."""

    name: ClassVar[str] = "cross_entropy"

    def __call__(self, margin):
        return F.softplus(-margin)


@attrs.frozen(kw_only=True)
class MSE(Loss):
    """(f - y)^2 / 2 = Delta^2 / 2 for y = +-1: the quadratic hinge without the max."""

    name: ClassVar[str] = "mse"

    def __call__(self, margin):
        return 0.5 * (1 - margin) ** 2


@dlphase.hookimpl
def register_losses(register):
    for cls in (Hinge, QuadraticHinge, SoftHinge, CrossEntropy, MSE):
        register(cls)
