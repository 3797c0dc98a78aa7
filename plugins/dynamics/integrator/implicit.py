"""Linearly implicit loss coefficients: the stiff margin modes of a curved loss (the soft hinge's l'' = beta / 4
at the kink) integrated by backward Euler, so that they do not limit the explicit step of the parameters.

With c_mu = dObjective / df~_mu = l'(m_mu) y_mu / (P alpha), a step theta' = theta - dt J^T c~ moves the margins by
dm = -dt y alpha Theta c~. Backward Euler on the coefficients, linearised, asks c~ = c + (dc / dm) dm, that is

    (I + dt K Theta_SS) c~_S = c_S - dt K Theta_{S,rest} c_rest,      K = diag(l''(m_S) / P),

on the margins S where l'' is at least ``1e-3`` of the loss's largest curvature; the others keep c (their
coefficients hardly move in a step, and the step's error check sees it if they do).
"""

from __future__ import annotations

import torch

from ..batched import loss_coefficients, member_rows

#: margins whose l'' is below this fraction of the loss's largest l'' keep the explicit coefficients
CURVATURE_CUT = 1e-3


def loss_curvature(loss, margins: torch.Tensor) -> torch.Tensor:
    """l''(margins), elementwise, by autograd."""
    m = margins.detach().requires_grad_(True)
    with torch.enable_grad():
        (d1,) = torch.autograd.grad(loss(m).sum(), m, create_graph=True)
        if not d1.requires_grad:  # l' piecewise constant: l'' = 0
            return torch.zeros_like(margins)
        (d2,) = torch.autograd.grad(d1.sum(), m)
    return d2.detach()


def curvature_scale(loss, dtype=torch.float64, device=None) -> float:
    """The loss's largest l'' over margins in [-4, 6]: the scale of CURVATURE_CUT."""
    return float(loss_curvature(loss, torch.linspace(-4.0, 6.0, 2001, dtype=dtype, device=device)).max())


def implicit_coefficients(net, params, ctx, x, y, margins, alpha, loss, scale: float, dt: torch.Tensor, members):
    """The coefficients c~ (M, n) of a linearly implicit step of length ``dt`` (M,) for the batch positions
    ``members``; the plain ones elsewhere. ``scale``: :func:`curvature_scale` of the loss. ``net``: anything
    with :meth:`EnsembleNet.ntk_block` (a :class:`KernelCache`)."""
    coef, _ = loss_coefficients(loss, margins, y, alpha)
    if scale <= 0 or not members:
        return coef
    curv = loss_curvature(loss, margins)
    stiff = curv >= CURVATURE_CUT * scale
    P = margins.shape[1]
    rows = member_rows(stiff, members)
    if rows is None:
        return coef
    out = coef.clone()
    rest = torch.where(stiff, torch.zeros_like(coef), coef)
    for j, (s, block) in enumerate(zip(rows, net.ntk_block(params, x, rows, rest, ctx))):
        if block is None:
            continue
        th_ss, th_rest = block
        k = dt[j].to(th_ss.dtype) * curv[j, s] / P
        out[j, s] = solve_shifted(th_ss, k, coef[j, s] - k * th_rest)
    return out


def solve_shifted(theta: torch.Tensor, k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(I + diag(k) Theta)^-1 r. An LU solve: Cholesky on the symmetric form I + K^1/2 Theta K^1/2 is no faster for
    the sizes of S met in training."""
    A = k[:, None] * theta
    A.diagonal().add_(1.0)
    return torch.linalg.solve(A, r)
