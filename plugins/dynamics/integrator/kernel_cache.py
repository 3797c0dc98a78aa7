"""Each member's training-set NTK Theta(x, x), kept across steps while it still predicts them: the robust step's
sliding and implicit coefficients then take their blocks Theta_SS and Theta_S,rest c_rest by indexing, instead
of kernel products over the margins S at every step.

A stale kernel only approximates the Jacobian of the implicit step (a W-method): the step stays first order,
and its error check (dgrad against the trial point's own coefficients) sees any mismatch and shortens dt. So
the cache checks each kernel against the steps it serves (KernelCache.check) and recomputes it once it
mispredicts them: the step count stays close to that with fresh blocks at every step (a rule on the
parameters' drift needs far more steps), and in the lazy regime each member's first kernel lasts the run
(docs/benchmarks.md).
"""

from __future__ import annotations

import torch

#: the largest cache, in bytes, M P^2 numbers; above it every step forms its blocks afresh
CACHE_BYTES = 2 ** 31
#: a member whose last kernel served fewer accepted steps forms its blocks afresh ...
MIN_LIFE = 4
#: ... and tries a whole kernel again after (MIN_LIFE - served) / RETRY such steps
RETRY = 0.125


def fits(members: int, n: int, dtype: torch.dtype) -> bool:
    """Whether ``members`` kernels on ``n`` points fit under :data:`CACHE_BYTES`."""
    return members * n * n * torch.finfo(dtype).bits // 8 <= CACHE_BYTES


class KernelCache:
    """Theta(x, x) (M, P, P) per batch position, kept until a step it could have served mispredicts the change of
    f~: a member's kernel is recomputed, when next asked for, after an accepted step theta' = theta - dt J^T c whose
    f~' - f~ differs from the linear prediction -dt Theta c by more than ``tol`` of its norm (:meth:`check`). With
    a fresh kernel that error is the step's own nonlinearity (about 1e-4 to 1e-3 for swish at alpha_tilde = 2^20
    to 1e3); a stale one adds to it.

    A whole kernel costs a few steps' blocks on the margins S, so a member whose last kernel served fewer than
    :data:`MIN_LIFE` accepted steps (the feature regime, where the kernel moves every step or two) forms its
    blocks afresh (``net.ntk_block``); each such step adds :data:`RETRY` to that count, so it tries a whole
    kernel again some tens of steps later. Has :meth:`EnsembleNet.ntk_block`'s signature, so the coefficient
    rules take it in place of the net."""

    def __init__(self, net, x, tol: float):
        self.net, self.x, self.tol = net, x, tol
        self.theta: torch.Tensor | None = None
        self.fresh: torch.Tensor | None = None      # (M,) bool: the position holds a kernel still trusted
        self.life: torch.Tensor | None = None       # (M,) accepted steps the kernel has served so far
        self.last: torch.Tensor | None = None       # (M,) steps the previous one served (inf: none yet)
        self.computed = 0                           # kernels computed, for studies of the integrator

    def _start(self, M: int, device) -> None:
        if self.fresh is None:
            self.fresh = torch.zeros(M, dtype=torch.bool, device=device)
            self.life = torch.zeros(M, dtype=torch.float64, device=device)
            self.last = torch.full((M,), torch.inf, dtype=torch.float64, device=device)

    def get(self, params, wanted: torch.Tensor) -> torch.Tensor:
        """The kernels (M, P, P), recomputed at ``params`` for the positions where ``wanted`` (M,) bool holds and
        the kernel is missing or stale."""
        self._start(len(params[0]), params[0].device)
        stale = torch.nonzero(wanted & ~self.fresh).flatten()
        if len(stale):
            with torch.no_grad():
                new = self.net.ntk([p.index_select(0, stale) for p in params], self.x)
            if self.theta is None:
                self.theta = new.new_empty((len(params[0]),) + new.shape[1:])
            self.theta[stale] = new
            self.fresh[stale] = True
            self.life[stale] = 0.0
            self.computed += len(stale)
        return self.theta

    def check(self, accepted: torch.Tensor, coef: torch.Tensor, change: torch.Tensor, dt: torch.Tensor) -> None:
        """After a trial step of length ``dt`` (M,) with loss coefficients ``coef`` (M, P) that changed f~ by
        ``change`` (M, P): mark stale the ``accepted`` (M,) bool positions whose kernel mispredicts the change,
        |change + dt Theta c| > tol |change|."""
        if self.fresh is None:
            return
        pos = torch.nonzero(accepted & self.fresh).flatten()
        if not len(pos):
            return
        # an mv each (a batched product would copy the kernels), then one comparison for all: no per-member sync
        miss = torch.stack([(change[j] + dt[j].to(coef.dtype) * torch.mv(self.theta[j], coef[j])).norm()
                            for j in pos.tolist()])
        off = miss > self.tol * change.index_select(0, pos).norm(dim=1)
        stale, kept = pos[off], pos[~off]
        self.fresh[stale] = False
        self.last[stale] = self.life[stale]
        self.life[kept] += 1

    def select(self, keep: torch.Tensor) -> None:
        """Keep the batch positions ``keep`` (the members still training), in that order."""
        if self.fresh is not None:
            self.theta = None if self.theta is None else self.theta.index_select(0, keep)
            self.fresh, self.life, self.last = (v.index_select(0, keep) for v in (self.fresh, self.life, self.last))

    def ntk_block(self, params, x, rows, vectors, ctx=None):
        """As :meth:`EnsembleNet.ntk_block`: from the cached kernels, computing the missing or stale ones that pay
        (:data:`MIN_LIFE`), and from ``net.ntk_block`` for the others."""
        self._start(len(rows), x.device)
        asked = [r is not None for r in rows]
        fresh, last = self.fresh.tolist(), self.last.tolist()
        whole = [a and (fresh[j] or last[j] >= MIN_LIFE) for j, a in enumerate(asked)]
        direct = [r if a and not w else None for r, a, w in zip(rows, asked, whole)]
        theta = self.get(params, torch.tensor(whole, dtype=torch.bool, device=x.device)) if any(whole) else None
        blocks = (self.net.ntk_block(params, x, direct, vectors, ctx) if any(r is not None for r in direct)
                  else [None] * len(rows))
        out = []
        for j, r in enumerate(rows):
            if whole[j]:
                th = theta[j]
                out.append((th[r[:, None], r], torch.mv(th, vectors[j]).index_select(0, r)))
            else:
                out.append(blocks[j])
                if r is not None:
                    self.last[j] += RETRY
        return out
