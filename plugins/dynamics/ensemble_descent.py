"""The engine of ``gd`` and ``sgd``: M members of one architecture and width stepped as one batched computation.

Each step: theta <- theta - lr v, v <- momentum v + grad (L_batch / alpha^2) + weight_decay (theta - theta_ref),
with theta_ref = 0 or theta_0, per member, with its own alpha. Members share the minibatch order (the dynamics'
own seed), so each member follows the trajectory it follows alone. The stop rules are checked on the whole
training set every step for GD and once an epoch for SGD; a member that stops leaves the batch.
"""

from __future__ import annotations

import math
import time

import torch

from dlphase import TrainResult
from dlphase.ensemble_net import stacked
from dlphase.model import rescaled

from .batched import feed_checkpoints, loss_coefficients
from .members import Batch
from .stopping import common_rules, finish_member, stops, validation_tracker


def descend_ensemble(dyn, models, data, monitors, batch_size: int | None = None, momentum: float = 0.0,
                     weight_decay: float = 0.0, decay_toward_init: bool = False,
                     seed: int = 0) -> list[TrainResult]:
    """Train ``models`` in place by (minibatch) gradient descent with step ``dyn.lr``.

    ``batch_size`` None: full batch (GD), the stop rules checked every step; else minibatches drawn
    without replacement each epoch from a generator seeded by ``seed``, the rules checked once an epoch.
    """
    start = time.perf_counter()
    x, y = data.x_train, data.y_train
    P = len(y)
    M = len(models)
    net, params, params0, alpha, f0 = stacked(models, x)
    b = Batch(range(M), params=params, params0=params0, alpha=alpha, f0=f0,
              velocity=[torch.zeros_like(p) for p in params] if momentum else None)
    loss = dyn.loss
    full = batch_size is None or batch_size >= P
    epoch = 1 if full else math.ceil(P / batch_size)
    gen = torch.Generator().manual_seed(seed)
    order, pos = (None, 0) if full else (torch.randperm(P, generator=gen), 0)
    trackers = [validation_tracker(dyn, m, data) for m in models]
    for j, mon in enumerate(monitors):
        if mon is not None:
            mon.start(models[j], data)
    results: list[TrainResult | None] = [None] * M
    steps = 0

    def coefficients(out, a, yb, f0b):
        """dObjective/df~ for objective = mean l(y alpha (f~ - f~0)) / alpha^2 over the points given, the
        per-point losses and the margins."""
        m = yb * rescaled(out, f0b, a)
        return (*loss_coefficients(loss, m, yb, a), m)

    while len(b):
        t = steps * dyn.lr
        ctx = coef = None
        if steps % epoch == 0:  # the stop rules, checkpoints and validation, on the whole training set
            out, ctx = net.forward(b.params, x, grad=full)
            coef, per, marg = coefficients(out, b.alpha, y, b.f0)
            feed_checkpoints(net, b.params, b.params0, range(len(b)), b.ids, monitors, trackers, data, b.alpha, t,
                             steps, per.mean(1), marg)
            elapsed = time.perf_counter() - start
            rules = common_rules(dyn, torch.isfinite(out).all(1), marg, steps, t, elapsed,
                                 [trackers[m] for m in b.ids])
            stopped = stops(rules)
            if stopped:
                for j, status, message in stopped:
                    m = b.ids[j]
                    results[m] = finish_member(net, b.params, j, models[m], trackers[m], monitors[m], status,
                                               message, steps, t, elapsed)
                b.drop(j for j, _, _ in stopped)
                if not len(b):
                    break
                ctx = None  # the members' context changed: computed again below
        if full:
            if ctx is None:
                out, ctx = net.forward(b.params, x, grad=True)
                coef = coefficients(out, b.alpha, y, b.f0)[0]
        else:
            if pos >= P:
                order, pos = torch.randperm(P, generator=gen), 0
            batch = order[pos:pos + batch_size].to(x.device)
            pos += batch_size
            out_b, ctx = net.forward(b.params, x[batch], grad=True)
            coef = coefficients(out_b, b.alpha, y[batch], b.f0[:, batch])[0]
        grads = net.backward(b.params, ctx, coef)
        with torch.no_grad():
            if weight_decay:
                ref = b.params0 if decay_toward_init else [0.0] * len(b.params)
                grads = [g + weight_decay * (p - r) for g, p, r in zip(grads, b.params, ref)]
            if b.velocity is not None:
                b.velocity = [momentum * v + g for v, g in zip(b.velocity, grads)]
                grads = b.velocity
            b.params = [p - dyn.lr * g for p, g in zip(b.params, grads)]
        steps += 1
    return results

