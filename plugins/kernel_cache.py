"""Each member's training-set NTK Theta(x, x), kept across steps while its parameters stay close to where it
was computed: the robust step's sliding and implicit coefficients then take their blocks Theta_SS and
Theta_S,rest c_rest by indexing, instead of kernel products over the margins S at every step.

A stale kernel only approximates the Jacobian of the implicit step (a W-method): the step stays first order,
and its error check (dgrad against the trial point's own coefficients) sees any mismatch and shortens dt. That
costs steps wherever the margin modes are stiff and the kernel moves (swish at alpha_tilde = 1e3: 276 steps
fresh, over 2991 with tol = 0.01), so ``kernel_refresh`` is off by default; it pays in the lazy regime.
"""

from __future__ import annotations

import torch

#: the largest cache, in bytes, M P^2 numbers; above it every step forms its blocks afresh
CACHE_BYTES = 2 ** 31


def fits(members: int, n: int, dtype: torch.dtype) -> bool:
    """Whether ``members`` kernels on ``n`` points fit under :data:`CACHE_BYTES`."""
    return members * n * n * torch.finfo(dtype).bits // 8 <= CACHE_BYTES


class KernelCache:
    """Theta(x, x) (M, P, P) per batch position, recomputed for a member once |theta - theta_K| > ``tol`` |theta_K|,
    theta_K being its parameters when its kernel was last computed. Has :meth:`EnsembleNet.ntk_block`'s
    signature, so the coefficient rules take it in place of the net."""

    def __init__(self, net, x, tol: float):
        self.net, self.x, self.tol = net, x, tol
        self.theta: torch.Tensor | None = None
        self.anchor: list[torch.Tensor] | None = None
        self.fresh: torch.Tensor | None = None      # (M,) bool: the position holds a kernel
        self.computed = 0                           # kernels computed, for studies of the integrator

    def get(self, params, wanted: torch.Tensor) -> torch.Tensor:
        """The kernels (M, P, P), fresh for the positions where ``wanted`` (M,) bool holds."""
        if self.anchor is None:
            self.anchor = [p.clone() for p in params]
            self.fresh = torch.zeros(len(params[0]), dtype=torch.bool, device=params[0].device)
        d2 = sum((p - a).reshape(len(p), -1).square().sum(1) for p, a in zip(params, self.anchor))
        n2 = sum(a.reshape(len(a), -1).square().sum(1) for a in self.anchor)
        stale = torch.nonzero(wanted & (~self.fresh | (d2 > self.tol ** 2 * n2))).flatten()
        if len(stale):
            with torch.no_grad():
                new = self.net.ntk([p.index_select(0, stale) for p in params], self.x)
            if self.theta is None:
                self.theta = new.new_empty((len(params[0]),) + new.shape[1:])
            self.theta[stale] = new
            for a, p in zip(self.anchor, params):
                a[stale] = p.index_select(0, stale)
            self.fresh[stale] = True
            self.computed += len(stale)
        return self.theta

    def select(self, keep: torch.Tensor) -> None:
        """Keep the batch positions ``keep`` (the members still training), in that order."""
        if self.anchor is not None:
            self.theta = None if self.theta is None else self.theta.index_select(0, keep)
            self.anchor = [a.index_select(0, keep) for a in self.anchor]
            self.fresh = self.fresh.index_select(0, keep)

    def ntk_block(self, params, x, rows, vectors, ctx=None):
        """As :meth:`EnsembleNet.ntk_block`, from the cached kernels, refreshing the drifted ones among ``rows``."""
        theta = self.get(params, torch.tensor([r is not None for r in rows], dtype=torch.bool, device=x.device))
        out = []
        for j, r in enumerate(rows):
            if r is None:
                out.append(None)
                continue
            th = theta[j]
            out.append((th[r[:, None], r], torch.mv(th, vectors[j]).index_select(0, r)))
        return out
