"""Early stopping on a validation set, an option of every dynamics (``dynamics.early_stopping``).

The validation points are held out beside the P training points (``Dataset.load_validation``). At
log-spaced flow times t_k = t_min 10^(k / per_decade) the dynamics evaluates f on them; when the
validation error (or loss) has not improved for ``patience`` checkpoints, the run stops with status
``early_stopped`` and, by default, gets back the parameters of its best checkpoint.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
import torch

from .specs import param, positive


@attrs.frozen(kw_only=True)
class EarlyStopping:
    """Stop when the validation metric has not improved for ``patience`` checkpoints."""

    n_validation: int = param(doc="validation points held out beside the P training points (class-balanced)",
                              validator=positive)
    metric: Literal["error", "loss"] = param(default="error", doc="what must improve: the validation error "
                                                                  "(fraction of y f <= 0) or the mean loss")
    patience: int = param(default=8, doc="checkpoints without a strict improvement before stopping",
                          validator=positive)
    per_decade: int = param(default=8, doc="checkpoints per decade of flow time", validator=positive)
    t_min: float = param(default=1e-2, doc="first checkpoint (flow time)", validator=positive)
    restore_best: bool = param(default=True, doc="give the run back the parameters of its best checkpoint")

    def tracker(self, f0_val: torch.Tensor, y_val: torch.Tensor, alpha: float, loss) -> "Tracker":
        return Tracker(self, f0_val, y_val, alpha, loss)


class Tracker:
    """One run's validation record: the best metric so far, its flow time, steps and parameters."""

    def __init__(self, spec: EarlyStopping, f0_val: torch.Tensor, y_val: torch.Tensor, alpha: float, loss):
        self.spec, self.f0_val, self.y_val, self.alpha, self.loss = spec, f0_val, y_val, float(alpha), loss
        self.k = 0                      # index of the next checkpoint
        self.best = np.inf
        self.best_t = 0.0
        self.best_steps = 0
        self.best_params: list[torch.Tensor] | None = None
        self.waited = 0
        self.stopped = False

    def next_time(self) -> float:
        return self.spec.t_min * 10.0 ** (self.k / self.spec.per_decade)

    def due(self, t: float) -> bool:
        return t >= self.next_time()

    def metric(self, out_val: torch.Tensor) -> float:
        """The metric from the raw net's output f~ on the validation points."""
        margins = self.y_val * (self.alpha * (out_val - self.f0_val))
        if self.spec.metric == "error":
            return float((margins <= 0).double().mean())
        return float(self.loss(margins).double().mean())

    def update(self, t: float, steps: int, out_val: torch.Tensor, params) -> bool:
        """Record checkpoint(s) up to t; True when patience ran out (the run must stop).

        ``params``: the run's parameters now (tensors; cloned only when they are the best so far).
        """
        value = self.metric(out_val)
        if value < self.best:
            self.best, self.best_t, self.best_steps, self.waited = value, t, steps, 0
            if self.spec.restore_best:
                self.best_params = [p.detach().clone() for p in params]
        else:
            self.waited += 1
        while self.due(t):
            self.k += 1
        self.stopped = self.waited >= self.spec.patience
        return self.stopped

    def message(self, t: float) -> str:
        what = f"validation {self.spec.metric}"
        text = (f"{what} did not improve for {self.spec.patience} checkpoints after its best, "
                f"{self.best:.4g} at t = {self.best_t:.4g}; stopped at t = {t:.4g}")
        return text + ("; parameters of the best checkpoint restored" if self.spec.restore_best else "")
