"""Gradient descent with a fixed step and stochastic gradient descent, on L / alpha^2 (the alpha trick).

Both stop on the same rules as the flow: converged when every training margin y f >= 1 (checked on
the whole training set), budgets on steps, flow time t = lr x steps and wall time, diverged on NaN.
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


def _objective(model, loss, x, y, f0):
    out = model.f_from(x, f0)
    return out, loss(y * out).mean() / model.alpha ** 2


@attrs.frozen(kw_only=True)
class GD(Budgeted):
    """Full-batch gradient descent theta <- theta - lr grad (L / alpha^2)."""

    name: ClassVar[str] = "gd"
    lr: float = param(default=1.0, doc="the fixed step (learning rate); t = lr x steps", validator=positive)

    def train(self, model, data, monitor=None):
        start, params, x, y, f0 = prepare(model, data)
        if monitor is not None:
            monitor.start(model, data)
        steps = 0
        while True:
            out, objective = _objective(model, self.loss, x, y, f0)
            if monitor is not None:
                monitor.observe(model, data, steps * self.lr, out.detach(), self.loss)
            stop = stop_reason(self, out.detach(), y, steps, steps * self.lr, start)
            if stop:
                return TrainResult(status=stop[0], message=stop[1], steps=steps, t=steps * self.lr,
                                   wall_seconds=time.perf_counter() - start)
            grads = torch.autograd.grad(objective, params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-self.lr)
            steps += 1


@attrs.frozen(kw_only=True)
class SGD(Budgeted):
    """Minibatch SGD on L / alpha^2 with optional momentum and weight decay, its own batch seed."""

    name: ClassVar[str] = "sgd"
    lr: float = param(default=0.1, doc="learning rate", validator=positive)
    batch_size: int = param(default=32, doc="minibatch size (sampled without replacement each epoch)",
                            validator=positive)
    momentum: float = param(default=0.0, doc="heavy-ball momentum in [0, 1)", validator=non_negative)
    weight_decay: float = param(default=0.0, doc="adds weight_decay theta to the gradient", validator=non_negative)
    seed: int = param(default=0, doc="seed of the minibatch order (separate from the init seed)",
                      validator=non_negative)

    def __attrs_post_init__(self):
        if self.momentum >= 1:
            raise ValueError(f"momentum = {self.momentum} must be below 1")

    def train(self, model, data, monitor=None):
        start, params, x, y, f0 = prepare(model, data)
        if monitor is not None:
            monitor.start(model, data)
        P = len(x)
        gen = torch.Generator().manual_seed(self.seed)
        velocity = [torch.zeros_like(p) for p in params]
        steps, order, pos = 0, torch.randperm(P, generator=gen), 0
        epoch = max(1, math.ceil(P / self.batch_size))
        while True:
            if steps % epoch == 0:  # the full-batch stop rules (and checkpoints), once an epoch
                with torch.no_grad():
                    out = model.f_from(x, f0)
                if monitor is not None:
                    monitor.observe(model, data, steps * self.lr, out, self.loss)
                stop = stop_reason(self, out, y, steps, steps * self.lr, start)
                if stop:
                    return TrainResult(status=stop[0], message=stop[1], steps=steps, t=steps * self.lr,
                                       wall_seconds=time.perf_counter() - start)
            if pos >= P:
                order, pos = torch.randperm(P, generator=gen), 0
            batch = order[pos:pos + self.batch_size].to(x.device)
            pos += self.batch_size
            _, objective = _objective(model, self.loss, x[batch], y[batch], f0[batch])
            grads = torch.autograd.grad(objective, params)
            with torch.no_grad():
                if self.weight_decay:
                    grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
                if self.momentum:
                    torch._foreach_mul_(velocity, self.momentum)
                    torch._foreach_add_(velocity, grads)
                    grads = velocity
                torch._foreach_add_(params, grads, alpha=-self.lr)
            steps += 1


@dlphase.hookimpl
def register_dynamics(register):
    register(GD)
    register(SGD)
