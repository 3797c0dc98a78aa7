"""The step-size controllers of the adaptive flows (gradient_flow's rules, the kernel flow).

``reference``: the reference code's rule. dt grows by ``grow`` after an easy step (both tests below half their
limits), stays after a plain accepted one and shrinks by ``shrink`` after a rejection.

``proportional`` and ``proportional_integral``: a step with error ratio err (its error over the tolerated
one; accepted when err <= 1) whose error grows as dt^order sets the next step to
dt * clip(SAFETY err^(-1 / order), 1 / shrink, grow): the step that would just meet the tolerance, a little
shorter, never more than ``grow`` times longer nor ``shrink`` times shorter.
A non-finite err (a step that diverged) shrinks dt by ``shrink``.
"""

from __future__ import annotations

import torch

#: the fraction of the step that would exactly meet the tolerance
SAFETY = 0.9
#: the weight of the previous step's error in the PI controller
PI_INTEGRAL = 0.4


def reference(dt, accepted, easy, grow: float, shrink: float):
    """The next step size after steps of size ``dt``: per member (tensors (M,)) or for one flow (numbers)."""
    if isinstance(dt, torch.Tensor):
        return torch.where(easy, dt * grow, torch.where(accepted, dt, dt / shrink))
    return dt * grow if easy else dt if accepted else dt / shrink


def _ratios(err: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """err in dt's dtype, a non-finite one as inf and none below 1e-12."""
    return torch.where(torch.isfinite(err), err, torch.full_like(err, torch.inf)).to(dt.dtype).clamp_min(1e-12)


def _factor(e: torch.Tensor, order: float) -> torch.Tensor:
    """The proportional controller's factor SAFETY e^(-1 / order)."""
    return SAFETY / e if order == 1 else SAFETY * e ** (-1.0 / order)


def proportional(dt: torch.Tensor, err: torch.Tensor, order: float, shrink: float, grow: float) -> torch.Tensor:
    """The next step size (M,) after steps of size ``dt`` (M,) with error ratios ``err`` (M,)."""
    return dt * torch.clamp(_factor(_ratios(err, dt), order), 1.0 / shrink, grow)


def proportional_integral(dt: torch.Tensor, err: torch.Tensor, previous: torch.Tensor, order: float, shrink: float,
                          grow: float, integral: float = PI_INTEGRAL) -> torch.Tensor:
    """As :func:`proportional`, with the error ratio ``previous`` (M,) of each member's last accepted step
    damping the response (Gustafsson's PI controller): dt * clip(SAFETY err^-(1 - b) / order
    previous^(b / order)), b = ``integral``. Noisy error estimates then move dt less, and fewer steps are
    rejected. After a rejection (err > 1) the plain proportional factor applies."""
    e, p = _ratios(err, dt), previous.to(dt.dtype).clamp(1e-12, 1.0)
    factor = torch.where(e <= 1, SAFETY * e ** (-(1 - integral) / order) * p ** (integral / order),
                         _factor(e, order))
    return dt * torch.clamp(factor, 1.0 / shrink, grow)
