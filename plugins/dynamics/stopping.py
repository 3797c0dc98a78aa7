"""Stop rules shared by every dynamics: converged (all y f >= 1), early stopping on a validation set,
budgets (steps, flow time, wall time) and divergence (non-finite outputs)."""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch

from dlphase import Dynamics, Loss, TrainResult, param
from dlphase.early_stopping import EarlyStopping
from dlphase.specs import positive

from ..losses import SoftHinge


@attrs.frozen(kw_only=True)
class Budgeted(Dynamics):
    """The loss and the budgets that every built-in dynamics takes."""

    #: what ``max_steps`` counts, in messages
    steps_name: ClassVar[str] = "steps"

    loss: Loss = param(default=attrs.Factory(SoftHinge), doc="the loss l(y f): a name or {name = ..., ...}")
    max_steps: int = param(default=1_000_000, doc="budget on steps (trial steps for gradient_flow)",
                           validator=positive)
    max_seconds: float = param(default=math.inf, doc="wall-time budget, in seconds, of a run or of a batched "
                                                     "ensemble as a whole (its members stop together)",
                               validator=positive)

    max_time: float = param(default=math.inf, doc="flow-time budget (the jamming line moves with it)",
                            validator=positive)
    early_stopping: EarlyStopping | None = param(
        default=None, doc="stop when the error on held-out validation points stops improving: "
                          "{n_validation = ..., patience = 8, metric = 'error', per_decade = 8, restore_best = true}")


def validation_tracker(dyn, model, data):
    """The run's early-stopping :class:`dlphase.early_stopping.Tracker`, or None without early stopping."""
    return None if dyn.early_stopping is None else dyn.early_stopping.watch(model, data, dyn.loss)


def finish_member(net, params, j, model, tracker, monitor, status: str, message: str, steps: int, t: float,
                  elapsed: float, rejected: int = 0) -> TrainResult:
    """Member j leaves the batch: its parameters (the best checkpoint's, if early stopping restores them)
    go back to its module, and its result is made."""
    if status == "early_stopped" and tracker.best_params is not None:
        with torch.no_grad():
            for v, best in zip(params, tracker.best_params):
                v[j] = best
        t, steps = tracker.best_t, tracker.best_steps
    net.unstack(params, j, model.net)
    if monitor is not None:
        monitor.finish()
    return TrainResult(status=status, message=message, steps=steps, rejected=rejected, t=t, wall_seconds=elapsed)


def value_at(v, j: int) -> float:
    """Batch position j's value of a per-member tensor, or a number shared by the batch."""
    return float(v[j]) if isinstance(v, torch.Tensor) else float(v)


def common_rules(dyn, finite, margins, trials, t, elapsed: float, trackers) -> list:
    """The stop rules of every dynamics for a batch of members, in order of precedence.

    ``finite`` (M,) whether each member's outputs are finite; ``margins`` (M, P) the training margins
    y f; ``trials`` and ``t`` per member (tensors) or shared (numbers); ``trackers`` each member's
    early-stopping tracker or None. Returns [(mask (M,), status, message(j))]: a member stops on the
    first rule whose mask holds for it.
    """
    M, device = len(margins), margins.device

    def mask(v):
        return v if isinstance(v, torch.Tensor) else torch.full((M,), bool(v), device=device)

    early = torch.tensor([tr is not None and tr.stopped for tr in trackers], device=device)
    return [
        (~finite, "diverged", lambda j: "non-finite output or gradient"),
        ((margins >= 1).all(1), "converged", lambda j: ""),
        (early, "early_stopped", lambda j: trackers[j].message(value_at(t, j))),
        (mask(trials >= dyn.max_steps), "budget", lambda j: f"max_steps = {dyn.max_steps} {dyn.steps_name} reached"),
        (mask(t >= dyn.max_time), "budget", lambda j: f"max_time = {dyn.max_time:g} reached"),
        (mask(elapsed >= dyn.max_seconds), "budget", lambda j: f"max_seconds = {dyn.max_seconds:g} reached"),
    ]


def stops(rules) -> list[tuple[int, str, str]]:
    """(position, status, message) of every batch position that must stop, by the first of ``rules``
    (as :func:`common_rules` gives them) whose mask holds for it."""
    stopping = torch.stack([r[0] for r in rules]).any(0)
    return [(j, *next((status, message(j)) for mask, status, message in rules if bool(mask[j])))
            for j in torch.nonzero(stopping).flatten().tolist()]
