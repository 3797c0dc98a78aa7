"""Gradient flow d theta / dt = -grad (L / alpha^2), integrated by the reference's adaptive scheme.

From the current output ``out`` (f on the training set) and gradient ``g``, try
theta <- theta - dt g and recompute out', g'. Accept if dgrad = |g' - g|^2 / (|g| |g'|) < max_dgrad
and dout = max_mu |out'_mu - out_mu| < max_dout (f itself may move by at most max_dout). On
acceptance dt *= grow (1.1) when both are below half their limits; on rejection theta is restored
and dt /= shrink (10). Every accepted step meets both limits whatever grow and shrink are.
Time convention: t is the time of the flow of L / alpha^2 with f = alpha (f~ - f~0), f~'s last layer
divided by sqrt(h) and alpha = alpha_tilde / sqrt(h) (SCIENCE.md section 1).
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import attrs
import torch

import dlphase
from dlphase import TrainResult, param
from dlphase.specs import non_negative, positive

from .stopping import Budgeted, prepare, stop_reason


@attrs.frozen(kw_only=True)
class GradientFlow(Budgeted):
    """Full-batch gradient flow with the reference's adaptive time step; stops when all y f >= 1."""

    name: ClassVar[str] = "gradient_flow"
    max_dgrad: float = param(default=1e-4, doc="accept a step only if |g'-g|^2/(|g||g'|) < max_dgrad",
                             validator=positive)
    max_dout: float = param(default=0.1, doc="accept a step only if no f(x_mu) moves by max_dout or more",
                            validator=positive)
    dt: float = param(default=1.0, doc="initial time step", validator=positive)
    grow: float = param(default=1.1, doc="dt *= grow after an easy step (both criteria below half their limits)",
                        validator=positive)
    shrink: float = param(default=10.0, doc="dt /= shrink after a rejected step", validator=positive)
    min_dt: float = param(default=1e-30, doc="stop as stalled (status budget) when dt falls below this",
                          validator=non_negative)

    def train(self, model, data):
        start, params, x, y, f0 = prepare(model, data)
        inv_alpha2 = 1.0 / model.alpha ** 2

        def evaluate():
            out = model.f_from(x, f0)
            objective = self.loss(y * out).mean() * inv_alpha2
            grads = torch.autograd.grad(objective, params)
            return out.detach(), [g.detach() for g in grads]

        def sqnorm(ts):
            return float(torch.stack(torch._foreach_norm(ts)).square().sum())

        out, grad = evaluate()
        gnorm = math.sqrt(sqnorm(grad))
        saved = [p.detach().clone() for p in params]
        dt, t, steps, rejected = self.dt, 0.0, 0, 0

        def result(status, message=""):
            return TrainResult(status=status, message=message, steps=steps, rejected=rejected, t=t,
                               wall_seconds=time.perf_counter() - start)

        while True:
            if not math.isfinite(gnorm):
                return result("diverged", "non-finite gradient")
            stop = stop_reason(self, out, y, steps + rejected, t, start, "trial steps")
            if stop:
                return result(*stop)
            if dt < self.min_dt:
                return result("budget", f"stalled: dt = {dt:.3g} fell below min_dt = {self.min_dt:g}")
            if gnorm == 0.0:
                return result("budget", "stalled: zero gradient with unsatisfied margins")

            with torch.no_grad():
                torch._foreach_add_(params, grad, alpha=-dt)
            new_out, new_grad = evaluate()
            new_gnorm = math.sqrt(sqnorm(new_grad))
            dgrad = sqnorm(torch._foreach_sub(new_grad, grad)) / (gnorm * new_gnorm) if new_gnorm > 0 else 0.0
            dout = float((new_out - out).abs().max())
            if dgrad < self.max_dgrad and dout < self.max_dout:  # NaN compares False: rejected
                steps += 1
                t += dt
                out, grad, gnorm = new_out, new_grad, new_gnorm
                with torch.no_grad():
                    torch._foreach_copy_(saved, params)
                if dgrad < 0.5 * self.max_dgrad and dout < 0.5 * self.max_dout:
                    dt *= self.grow
            else:
                rejected += 1
                with torch.no_grad():
                    torch._foreach_copy_(params, saved)
                dt /= self.shrink


    def train_ensemble(self, models, data):
        """Train several members of one architecture and width together (see ensemble_flow.py)."""
        from .ensemble_flow import train_ensemble

        return train_ensemble(self, models, data)


@dlphase.hookimpl
def register_dynamics(register):
    register(GradientFlow)
