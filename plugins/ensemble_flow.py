"""Gradient flow for a whole ensemble at once: every member in one batched computation (torch.func.vmap).

Members share the architecture, h and the training data; each keeps its own alpha, adaptive time step,
stop rule and status, exactly as :class:`GradientFlow` treats a single net. A member that stops leaves
the batch, so it costs nothing afterwards.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

from dlphase import TrainResult


def train_ensemble(flow, models, data) -> list[TrainResult]:
    """Train ``models`` (AlphaModels of one architecture and width) in place with ``flow``'s scheme."""
    start = time.perf_counter()
    x, y = data.x_train, data.y_train
    nets = [m.net for m in models]
    params, buffers = stack_module_state(nets)
    params = {k: v.detach().clone() for k, v in params.items()}
    base = copy.deepcopy(nets[0]).to("meta")
    with torch.no_grad():
        f0 = torch.stack([m.net0(x) for m in models])
    alpha = torch.tensor([m.alpha for m in models], dtype=x.dtype, device=x.device)
    loss = flow.loss

    forward = vmap(lambda p, b: functional_call(base, (p, b), (x,)))

    def evaluate(p, b, f0_, a_):
        """Outputs (M, P) and each member's gradient of its own L / alpha^2, by one backward pass:
        the members' objectives are independent, so the gradient of their sum is theirs."""
        leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        out = a_[:, None] * (forward(leaves, b) - f0_)
        total = (loss(y * out).mean(1) / a_ ** 2).sum()
        g = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
        return out.detach(), g

    def flat_sq(d):
        return sum(v.reshape(len(v), -1).square().sum(1) for v in d.values())

    M = len(models)
    idx = list(range(M))                      # the members still in the batch, in batch order
    out, g = evaluate(params, buffers, f0, alpha)
    gnorm = flat_sq(g).sqrt()
    dt = torch.full((M,), flow.dt, dtype=x.dtype, device=x.device)
    t = torch.zeros(M, dtype=torch.float64, device=x.device)
    steps = torch.zeros(M, dtype=torch.long, device=x.device)
    rejected = torch.zeros(M, dtype=torch.long, device=x.device)
    results: list[TrainResult | None] = [None] * M
    final: dict[int, dict[str, torch.Tensor]] = {}

    def shape(v, like):
        return v.reshape((-1,) + (1,) * (like.dim() - 1))

    while idx:
        # the stop rules, per member, in order of precedence
        elapsed = time.perf_counter() - start
        finite = torch.isfinite(out).all(1) & torch.isfinite(gnorm)
        rules = [
            (~finite, "diverged", lambda j: "non-finite output or gradient"),
            ((y * out >= 1).all(1), "converged", lambda j: ""),
            (steps + rejected >= flow.max_steps, "budget", lambda j: f"max_steps = {flow.max_steps} trial steps reached"),
            (t >= flow.max_time, "budget", lambda j: f"max_time = {flow.max_time:g} reached"),
            (torch.full_like(finite, elapsed >= flow.max_seconds), "budget",
             lambda j: f"max_seconds = {flow.max_seconds:g} reached"),
            (dt < flow.min_dt, "budget", lambda j: f"stalled: dt = {float(dt[j]):.3g} fell below min_dt = {flow.min_dt:g}"),
            (gnorm == 0, "budget", lambda j: "stalled: zero gradient with unsatisfied margins"),
        ]
        stopping = torch.stack([r[0] for r in rules]).any(0)
        if bool(stopping.any()):
            stop = torch.nonzero(stopping).flatten().tolist()
            for j in stop:
                status, message = next((st, msg(j)) for mask, st, msg in rules if bool(mask[j]))
                m = idx[j]
                results[m] = TrainResult(status=status, message=message, steps=int(steps[j]),
                                         rejected=int(rejected[j]), t=float(t[j]), wall_seconds=elapsed)
                final[m] = {k: v[j].clone() for k, v in params.items()}
            keep = torch.nonzero(~stopping).flatten()
            idx = [m for j, m in enumerate(idx) if j not in set(stop)]
            if not idx:
                break

            def sel(d):
                return {k: v.index_select(0, keep) for k, v in d.items()}

            params, buffers, g = sel(params), sel(buffers), sel(g)
            out, gnorm, dt, f0, alpha, t, steps, rejected = (
                v.index_select(0, keep) for v in (out, gnorm, dt, f0, alpha, t, steps, rejected))

        # one trial step for every member left
        trial = {k: v - shape(dt, v) * g[k] for k, v in params.items()}
        new_out, new_g = evaluate(trial, buffers, f0, alpha)
        new_gnorm = flat_sq(new_g).sqrt()
        diff = flat_sq({k: new_g[k] - g[k] for k in g})
        dgrad = torch.where(new_gnorm > 0, diff / (gnorm * new_gnorm), torch.zeros_like(diff))
        dout = (new_out - out).abs().amax(1)
        ok = (dgrad < flow.max_dgrad) & (dout < flow.max_dout)  # NaN compares False: rejected
        easy = ok & (dgrad < 0.5 * flow.max_dgrad) & (dout < 0.5 * flow.max_dout)
        t = t + torch.where(ok, dt, torch.zeros_like(dt)).to(torch.float64)
        steps = steps + ok.long()
        rejected = rejected + (~ok).long()
        params = {k: torch.where(shape(ok, v), trial[k], v) for k, v in params.items()}
        g = {k: torch.where(shape(ok, v), new_g[k], v) for k, v in g.items()}
        out = torch.where(ok[:, None], new_out, out)
        gnorm = torch.where(ok, new_gnorm, gnorm)
        dt = torch.where(easy, dt * flow.grow, torch.where(ok, dt, dt / flow.shrink))

    with torch.no_grad():
        for m, model in enumerate(models):
            for name, p in model.net.named_parameters():
                p.copy_(final[m][name])
    return results
