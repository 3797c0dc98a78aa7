"""Sliding mode at the hinge's kink: the Filippov forces that let margins rest on y f = 1 without chatter.

At a margin on the kink the hinge's force is any convex combination of its one-sided values: l'(m) in
[l'(1+), l'(1-)]. Filippov's solution picks the weights that keep such margins on the surface. Here the
margins within ``band`` of the kink form S; each gets a weight w in [0, 1] on its force,
c_S = c(1+) + w (c(1-) - c(1+)), chosen so that the margins relax to ``target`` in a time ``tau``:

    dm_S / dt = -y_S alpha (Theta c)_S = -(m_S - target) / tau,

solved in the least-squares sense of Theta_SS (a box-constrained quadratic program) where the box forbids
it. Theta is the empirical NTK of f~; c = dObjective / df~ as in :func:`batched.loss_coefficients`.
"""

from __future__ import annotations

import torch

from ..batched import loss_coefficients, member_rows


def box_qp(Q: torch.Tensor, r: torch.Tensor, w: torch.Tensor, tol: float = 1e-10, max_iter: int = 100):
    """argmin_{0 <= w <= 1} w^T Q w / 2 - r^T w for a positive semi-definite Q (n, n), from the start ``w``.

    Projected Newton (Bertsekas 1982): Newton steps on the variables not held at a bound, an Armijo search
    along the projection arc. Stops when the projected gradient is below ``tol`` times Q's largest diagonal.
    Returns (w, iterations).
    """
    n = len(r)
    scale = float(Q.diagonal().max()) if n else 0.0
    if scale <= 0:
        return w.clamp(0, 1), 0
    Q, r = Q / scale, r / scale
    ridge = 1e-12 * torch.eye(n, dtype=Q.dtype, device=Q.device)
    w = w.clamp(0, 1)
    f = 0.5 * w @ (Q @ w) - r @ w
    for it in range(max_iter):
        grad = Q @ w - r
        projected = w - (w - grad).clamp(0, 1)
        if float(projected.abs().max()) <= tol:
            return w, it
        # variables at a bound whose gradient pushes outwards stay there (with Bertsekas' epsilon margin)
        eps = min(float(projected.norm()), 1e-3)
        held = ((w <= eps) & (grad > 0)) | ((w >= 1 - eps) & (grad < 0))
        free = torch.nonzero(~held).flatten()
        d = torch.zeros_like(w)
        if len(free):
            Qf = Q[free][:, free] + ridge[: len(free), : len(free)]
            d[free] = -torch.linalg.solve(Qf, grad[free])
        d[held] = -grad[held]  # a gradient step on the held ones moves them onto (or along) their bound
        w, f = _armijo(Q, r, w, f, grad, d)
    return w, max_iter


def _armijo(Q, r, w, f, grad, d):
    """The first of the steps 1, 1/2, ..., 2^-40 along the projection arc w(s) = clamp(w + s d, 0, 1) that meets
    f(w(s)) <= f + 1e-4 grad . (w(s) - w), else the last; returns (w(s), f(w(s))). The candidates are judged in
    blocks, each with one product Q @ [w(s_k)...]: long searches are common where Q is far from full rank, and one
    matrix product reads Q once where a product per step would read it once per step."""
    blocks = ((0, 2), (2, 10), (10, 41))
    for first, last in blocks:
        steps = 0.5 ** torch.arange(first, last, dtype=w.dtype, device=w.device)
        trials = (w[:, None] + d[:, None] * steps[None, :]).clamp(0, 1)
        values = 0.5 * (trials * (Q @ trials)).sum(0) - r @ trials
        ok = values <= f + 1e-4 * (grad @ (trials - w[:, None]))
        ok[-1] |= last == blocks[-1][1]  # the smallest step is taken whatever it gives
        hit = torch.nonzero(ok).flatten()
        if len(hit):
            k = int(hit[0])
            return trials[:, k], values[k]


def sliding_coefficients(net, params, ctx, x, y, margins, alpha, loss, band: float, target: float,
                         tau: torch.Tensor, members, weights_prev: torch.Tensor):
    """dObjective/df~ (M, n) with the Filippov forces on the margins within ``band`` of ``loss.kink``, and
    their weights w (M, n) (1 below the band, 0 above), for the batch ``members`` (a list of positions).

    ``tau`` (M,) is each member's relaxation time; ``weights_prev`` the weights of the previous point, the
    start of the quadratic program. Only the rows of ``members`` are meant to be used: the others' margins in
    the band get c(1+).
    """
    kink = loss.kink
    coef, _ = loss_coefficients(loss, margins, y, alpha)
    left, _ = loss_coefficients(loss, torch.full_like(margins, kink - 1e-9), y, alpha)
    right, _ = loss_coefficients(loss, torch.full_like(margins, kink + 1e-9), y, alpha)
    inside = (margins - kink).abs() <= band
    weights = torch.where(margins < kink, torch.ones_like(margins), torch.zeros_like(margins))
    coef = torch.where(inside, right, coef)
    rows = member_rows(inside, members)
    if rows is None:
        return coef, weights
    for j, (s, block) in enumerate(zip(rows, net.ntk_block(params, x, rows, coef, ctx))):
        if block is None:
            continue
        th_ss, b = block                                # Theta_SS, and (Theta c)_S from the forces outside S
        spread = (left[j, s] - right[j, s])             # c_S = right + w spread
        want = y[s] * (margins[j, s] - target) / (tau[j] * alpha[j]) - b
        Q = th_ss * spread[:, None] * spread[None, :]
        w, _ = box_qp(Q, spread * want, weights_prev[j, s])
        coef[j, s] = right[j, s] + w * spread
        weights[j, s] = w
    return coef, weights
