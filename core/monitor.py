"""Trajectories: a run's state recorded at log-spaced checkpoints of the flow time t.

A dynamics feeds its :class:`Monitor` after each step; at the first step with t >= t_k the monitor
records checkpoint k (and every earlier one it skipped) with the actual t. Checkpoints the run never
reaches stay NaN, so runs of a sweep share the ``time`` coordinate.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from .model import rescaled

#: what a trajectory holds at each checkpoint
QUANTITIES = ("t", "train_loss", "test_error", "n_delta", "f_norm", "displacement")


class Monitor:
    """Records one run at the nominal times ``times`` (sorted, > 0)."""

    def __init__(self, times, keep_params: bool = False):
        self.times = np.asarray(times, dtype=np.float64)
        self.values = {q: np.full(len(self.times), np.nan) for q in QUANTITIES}
        self.next = 0
        self.f0_test = self.y_test = None
        #: with ``keep_params``: (first checkpoint, end checkpoint, parameters) of every record, for
        #: observables that measure the net along the flow (the NTK)
        self.keep_params = keep_params
        self.snapshots: list[tuple[int, int, list[torch.Tensor]]] = []

    def start(self, model, data) -> None:
        """Keep what later records need: f~0 and the labels on the test set."""
        with torch.no_grad():
            self.f0_test = model.net0(data.x_test)
        self.y_test = data.y_test

    def due(self, t: float) -> bool:
        return self.next < len(self.times) and t >= self.times[self.next]

    def record(self, *, t: float, train_loss: float, n_delta: int, f_test: torch.Tensor, displacement: float,
               params=None) -> None:
        """Fill every checkpoint up to t with this state (f_test: f on the test set; ``params``: the net's
        parameters in ``net.parameters()`` order, kept when the monitor keeps them)."""
        k = int(np.searchsorted(self.times, t, side="right"))
        if k <= self.next:
            return
        f = f_test.detach()
        row = {"t": t, "train_loss": train_loss, "n_delta": n_delta, "displacement": displacement,
               "test_error": float((f * self.y_test <= 0).double().mean()),
               "f_norm": math.sqrt(float(f.double().square().mean()))}
        for q, v in row.items():
            self.values[q][self.next:k] = v
        if self.keep_params and params is not None:
            self.snapshots.append((self.next, k, [p.detach().clone() for p in params]))
        self.next = k

    def observe(self, model, data, t: float, f_train: torch.Tensor, loss) -> None:
        """Record one (unbatched) model, if a checkpoint is due: for dynamics that step one net."""
        if not self.due(t):
            return
        with torch.no_grad():
            margins = data.y_train * f_train
            self.record(t=t, train_loss=float(loss(margins).mean()), n_delta=int((margins < 1).sum()),
                        f_test=rescaled(model.net(data.x_test), self.f0_test, model.alpha),
                        displacement=model.displacement(), params=list(model.net.parameters()))

    def finish(self) -> None:
        """Nothing to flush: checkpoints after the stop stay NaN."""
