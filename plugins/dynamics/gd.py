"""Gradient descent with a fixed step and stochastic gradient descent, on L / alpha^2 (the alpha trick).

Both stop on the same rules as the flow: converged when every training margin y f >= 1 (checked on
the whole training set), budgets on steps, flow time t = lr x steps and wall time, diverged on NaN,
and, with ``early_stopping``, a validation metric that stopped improving (SGD checks it once an epoch).
Runs of one architecture and width train together as batched ensembles (ensemble_descent.py).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs

import dlphase
from dlphase import param
from dlphase.specs import non_negative, positive

from .batched import Batched
from .ensemble_descent import descend_ensemble


@attrs.frozen(kw_only=True)
class Descent(Batched):
    """What GD and SGD share: a step ``lr``, and the batched engine of ensemble_descent.py."""

    lr: float = param(default=1.0, doc="the fixed step (learning rate); t = lr x steps", validator=positive)
    weight_decay: float = param(default=0.0, doc="adds weight_decay (theta - theta_ref) to the gradient",
                                validator=non_negative)
    decay_toward: Literal["zero", "init"] = param(
        default="zero", doc="theta_ref of the weight decay: zero (plain L2) or init (theta_0, which keeps f = 0 "
                            "the decay's fixed point, as the paper's alpha trick wants)")

    def _engine_options(self) -> dict:
        return {}

    def train_pass(self, models, data, monitors):
        return descend_ensemble(self, models, data, monitors, weight_decay=self.weight_decay,
                                decay_toward_init=self.decay_toward == "init", **self._engine_options())


@attrs.frozen(kw_only=True)
class GD(Descent):
    """Full-batch gradient descent theta <- theta - lr grad (L / alpha^2), with optional weight decay."""

    name: ClassVar[str] = "gd"


@attrs.frozen(kw_only=True)
class SGD(Descent):
    """Minibatch SGD on L / alpha^2 with optional momentum and weight decay, its own batch seed."""

    name: ClassVar[str] = "sgd"
    lr: float = param(default=0.1, doc="learning rate; t = lr x steps", validator=positive)
    batch_size: int = param(default=32, doc="minibatch size (sampled without replacement each epoch)",
                            validator=positive)
    momentum: float = param(default=0.0, doc="heavy-ball momentum in [0, 1)", validator=non_negative)
    seed: int = param(default=0, doc="seed of the minibatch order (separate from the init seed)",
                      validator=non_negative)

    def __attrs_post_init__(self):
        if self.momentum >= 1:
            raise ValueError(f"momentum = {self.momentum} must be below 1")

    def _engine_options(self):
        return {"batch_size": self.batch_size, "momentum": self.momentum, "seed": self.seed}


@dlphase.hookimpl
def register_dynamics(register):
    register(GD)
    register(SGD)
