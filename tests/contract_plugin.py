"""A third-party package written from the documented contract alone (core/interfaces.py): a dynamics, plain
full-batch Adam on L / alpha^2 with trajectories and early stopping, and an architecture with none of the
optional fast paths. tests/test_contract.py installs it as a package, found through the entry point group
``dlphase``, and sweeps with it from the command line."""

from __future__ import annotations

import math
import time
from typing import ClassVar

import attrs
import torch

import dlphase
from dlphase import Architecture, Dynamics, EarlyStopping, Loss, TrainResult, param
from dlphase.specs import positive


@attrs.frozen(kw_only=True)
class Adam(Dynamics):
    """Full-batch Adam on L / alpha^2; flow time t = steps x lr."""

    name: ClassVar[str] = "adam"
    loss: Loss = param(doc="the loss l(y f)")
    lr: float = param(default=0.01, doc="Adam's learning rate", validator=positive)
    max_steps: int = param(default=2000, doc="budget on steps", validator=positive)
    early_stopping: EarlyStopping | None = param(default=None, doc="stop when the validation error stops improving")

    def train(self, model, data, monitor=None):
        start = time.perf_counter()
        opt = torch.optim.Adam(model.net.parameters(), lr=self.lr)
        watch = None if self.early_stopping is None else self.early_stopping.watch(model, data, self.loss)
        if monitor is not None:
            monitor.start(model, data)
        step, t = 0, 0.0
        while True:
            f = model(data.x_train)
            margins = data.y_train * f
            objective = self.loss(margins).mean() / model.alpha ** 2
            if monitor is not None:
                monitor.observe(model, data, t, f.detach(), self.loss)

            def result(status, message=""):
                return TrainResult(status=status, message=message, steps=step, t=t,
                                   wall_seconds=time.perf_counter() - start)

            if not math.isfinite(float(objective.detach())):
                return result("diverged", "non-finite loss")
            if bool((margins >= 1).all()):
                return result("converged")
            if watch is not None and watch.observe(model, t, step):
                step, t = watch.restore(model, step, t)
                return result("early_stopped", watch.message(t))
            if step >= self.max_steps:
                return result("budget", f"max_steps = {self.max_steps} reached")
            opt.zero_grad()
            objective.backward()
            opt.step()
            step, t = step + 1, t + self.lr


class TwoLayer(torch.nn.Module):
    """f~ = w2 . tanh(W1 x / sqrt(d)) / sqrt(h), N(0, 1) weights."""

    def __init__(self, d, h, generator):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(h, d, generator=generator, dtype=torch.float64))
        self.w2 = torch.nn.Parameter(torch.randn(h, generator=generator, dtype=torch.float64))

    def forward(self, x):
        z = torch.tanh(x.flatten(1) @ self.w1.T / math.sqrt(self.w1.shape[1]))
        return z @ self.w2 / math.sqrt(len(self.w2))


@attrs.frozen(kw_only=True)
class Plain(Architecture):
    """One tanh hidden layer of width h in NTK scaling, with no batched, NTK, curvature or infinite-width path."""

    name: ClassVar[str] = "plain"

    def build(self, h, input_shape, generator):
        return TwoLayer(math.prod(input_shape), h, generator)


@dlphase.hookimpl
def register_dynamics(register):
    register(Adam)


@dlphase.hookimpl
def register_architectures(register):
    register(Plain)
