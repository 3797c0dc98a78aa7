"""What the two batched engines (ensemble_flow.py for gradient_flow, ensemble_descent.py for gd and sgd)
share: the dynamics base that trains a single run as an ensemble of one, the loss's derivative per
member, and the feeding of trajectory monitors and early-stopping trackers at their checkpoints."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from dlphase.ensemble_net import in_passes
from dlphase.model import rescaled

from .stopping import Budgeted, value_at


@attrs.frozen(kw_only=True)
class Batched(Budgeted):
    """A dynamics whose runs train as batched ensembles. A single run is an ensemble of one through the
    same code, so a member ends where it ends alone (to rounding: docs/reproducibility.md)."""

    batched: ClassVar[bool] = True

    def train_pass(self, models, data, monitors) -> list:
        """Train ``models`` (one architecture and width) in place as one batched pass; their results."""
        raise NotImplementedError

    def train(self, model, data, monitor=None):
        return self.train_ensemble([model], data, [monitor])[0]

    def train_ensemble(self, models, data, monitors=None):
        """Train several members of one architecture and width together, in passes of as many members
        as memory (GPU) or cache (CPU) serves well."""
        return in_passes(lambda ms, mons: self.train_pass(ms, data, mons), models, data, monitors)


def loss_coefficients(loss, margins: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor):
    """For objective_m = mean_mu l(margins_m,mu) / alpha_m^2 over the n points given: dObjective/df~
    (M, n), and the per-point losses l (M, n)."""
    m = margins.detach().requires_grad_(True)
    with torch.enable_grad():
        per = loss(m)
        (dm,) = torch.autograd.grad(per.sum(), m)
    return dm * y / (len(y) * alpha[:, None]), per.detach()


def member_rows(mask: torch.Tensor, members) -> list | None:
    """For each batch position, the indices where ``mask`` (M, n) holds if the position is in ``members`` and
    any holds, else None; None when no position has any: the rows a robust step's coefficients solve for."""
    rows = [torch.nonzero(mask[j]).flatten() if j in members and bool(mask[j].any()) else None
            for j in range(len(mask))]
    return None if all(r is None for r in rows) else rows


def feed_checkpoints(net, params, params0, positions, idx, monitors, trackers, data, alpha, t, steps,
                     train_loss: torch.Tensor, margins: torch.Tensor) -> None:
    """Record the members at batch ``positions`` whose trajectory or early-stopping checkpoint is due.

    ``idx`` maps batch positions to members; ``t`` and ``steps`` are per position (tensors) or shared
    (numbers); ``train_loss`` (M,) is each member's mean loss and ``margins`` (M, P) its y f.
    """
    device = data.x_train.device
    due = [j for j in positions if monitors[idx[j]] is not None and monitors[idx[j]].due(value_at(t, j))]
    if due:
        sel = torch.tensor(due, device=device)
        p_sel = [v.index_select(0, sel) for v in params]
        with torch.no_grad():
            test_out, _ = net.forward(p_sel, data.x_test)
        disp = sum((v - v0.index_select(0, sel)).reshape(len(due), -1).square().sum(1)
                   for v, v0 in zip(p_sel, params0)).sqrt()
        for r, j in enumerate(due):
            mon = monitors[idx[j]]
            mon.record(t=value_at(t, j), train_loss=float(train_loss[j]), n_delta=int((margins[j] < 1).sum()),
                       f_test=rescaled(test_out[r], mon.f0_test, alpha[j]), displacement=float(disp[r]),
                       params=[v[r] for v in p_sel] if mon.keep_params else None)
    due = [j for j in positions if trackers[idx[j]] is not None and trackers[idx[j]].due(value_at(t, j))]
    if due:
        sel = torch.tensor(due, device=device)
        with torch.no_grad():
            val_out, _ = net.forward([v.index_select(0, sel) for v in params], data.x_val)
        for r, j in enumerate(due):
            trackers[idx[j]].update(value_at(t, j), int(value_at(steps, j)), val_out[r], [v[j] for v in params])
