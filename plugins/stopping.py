"""Stop rules shared by every dynamics: converged (all y f >= 1), budgets (steps, flow time, wall
time) and divergence (non-finite outputs)."""

from __future__ import annotations

import time

import torch


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


