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
from .model import rescaled

from .errors import DataError
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
        """A run's tracker from f~0 on the validation points (for batched dynamics, which evaluate them)."""
        return Tracker(self, f0_val, y_val, alpha, loss)

    def watch(self, model, data, loss) -> "Tracker":
        """The tracker of ``model`` (an AlphaModel) on ``data``'s validation points, which it evaluates itself
        (:meth:`Tracker.observe`)."""
        if data.x_val is None:
            raise DataError("early stopping needs validation points but the data has none; load it through "
                            "dlphase.Run, which holds out dynamics.early_stopping.n_validation points")
        with torch.no_grad():
            f0_val = model.net0(data.x_val)
        tracker = self.tracker(f0_val, data.y_val, model.alpha, loss)
        tracker.x_val = data.x_val
        return tracker


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
        self.x_val: torch.Tensor | None = None   # set by EarlyStopping.watch

    def next_time(self) -> float:
        return self.spec.t_min * 10.0 ** (self.k / self.spec.per_decade)

    def due(self, t: float) -> bool:
        return t >= self.next_time()

    def metric(self, out_val: torch.Tensor) -> float:
        """The metric from the raw net's output f~ on the validation points."""
        margins = self.y_val * rescaled(out_val, self.f0_val, self.alpha)
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

    def observe(self, model, t: float, steps: int) -> bool:
        """For a tracker from :meth:`EarlyStopping.watch`: evaluate ``model`` if a checkpoint is due at t; True
        when the run must stop."""
        if self.due(t):
            with torch.no_grad():
                self.update(t, steps, model.net(self.x_val), list(model.net.parameters()))
        return self.stopped

    def restore(self, model, steps: int, t: float) -> tuple[int, float]:
        """At the stop: give ``model`` the best checkpoint's parameters (with ``restore_best``); the steps and t
        of the state it is left in."""
        if not self.spec.restore_best or self.best_params is None:
            return steps, t
        with torch.no_grad():
            for p, best in zip(model.net.parameters(), self.best_params):
                p.copy_(best)
        return self.best_steps, self.best_t

    def message(self, t: float) -> str:
        what = f"validation {self.spec.metric}"
        text = (f"{what} did not improve for {self.spec.patience} checkpoints after its best, "
                f"{self.best:.4g} at t = {self.best_t:.4g}; stopped at t = {t:.4g}")
        return text + ("; parameters of the best checkpoint restored" if self.spec.restore_best else "")
