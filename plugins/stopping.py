"""Stop rules shared by every dynamics: converged (all y f >= 1), budgets (steps, flow time, wall
time) and divergence (non-finite outputs)."""

from __future__ import annotations

import math
import time

import attrs
import torch

from dlphase import Dynamics, Loss, param
from dlphase.specs import positive

from .losses import SoftHinge


@attrs.frozen(kw_only=True)
class Budgeted(Dynamics):
    """The loss and the budgets that every built-in dynamics takes."""

    loss: Loss = param(default=attrs.Factory(SoftHinge), doc="the loss l(y f): a name or {name = ..., ...}")
    max_steps: int = param(default=1_000_000, doc="budget on steps (trial steps for gradient_flow)",
                           validator=positive)
    max_seconds: float = param(default=math.inf, doc="wall-time budget per run, in seconds", validator=positive)
    max_time: float = param(default=math.inf, doc="flow-time budget (the jamming line moves with it)",
                            validator=positive)


def prepare(model, data):
    """What every dynamics starts from: the clock, the trained tensors, x and y, and f~0 on x."""
    start = time.perf_counter()
    params = [p for p in model.net.parameters() if p.requires_grad]
    with torch.no_grad():
        f0 = model.net0(data.x_train)
    return start, params, data.x_train, data.y_train, f0


def stop_reason(dyn, out: torch.Tensor, y: torch.Tensor, trials: int, t: float, start: float,
                steps_name: str = "steps") -> tuple[str, str] | None:
    """(status, message) if training must stop now, else None. ``dyn`` has max_steps, max_time, max_seconds."""
    if not bool(torch.isfinite(out).all()):
        return "diverged", "non-finite output"
    if bool((y * out >= 1).all()):
        return "converged", ""
    if trials >= dyn.max_steps:
        return "budget", f"max_steps = {dyn.max_steps} {steps_name} reached"
    if t >= dyn.max_time:
        return "budget", f"max_time = {dyn.max_time:g} reached"
    if time.perf_counter() - start >= dyn.max_seconds:
        return "budget", f"max_seconds = {dyn.max_seconds:g} reached"
    return None


