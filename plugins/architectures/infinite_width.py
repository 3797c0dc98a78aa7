"""The infinite-width NNGP and NTK of the fc net, in exactly the parametrisation of ``fc``.

With b = 1 if the hidden layers have (N(0,1)) biases, else 0, and (u, v) ~ N(0, Sigma restricted to x, x'):

    Sigma_1(x, x') = x.x' / d + b,                     Theta_1 = Sigma_1,
    Sigma_l = E[sigma(u) sigma(v)] + b,                Theta_l = Sigma_l + Theta_{l-1} E[sigma'(u) sigma'(v)],
    NNGP    = E[sigma(u) sigma(v)] under Sigma_L,      NTK     = NNGP + Theta_L E[sigma'(u) sigma'(v)] under Sigma_L.

For relu the Gaussian expectations are the arc-cosine kernels (Cho & Saul): with c = cos(theta) the
correlation, E[relu(u) relu(v)] = sqrt(q q') (sin theta + (pi - theta) c) / (2 pi) and
E[relu'(u) relu'(v)] = (pi - theta) / (2 pi). For any other activation they are computed by a tensor
product of Gauss-Legendre rules of 2 ``quadrature`` nodes, split where the activation's argument is 0 so that
the bend of swish (width 1/10) is resolved: the error falls exponentially, about 6e-5 for swish and
4e-10 for tanh at the default 24 (2e-6 and 2e-14 at 32; relu by quadrature meets the arc-cosine formula to
4e-9 at 32); the cost is n1 n2 (2 quadrature)^2 activations per layer (half that for one set against itself).
Past about 150k pairs the expectations are interpolated instead from a table over (log q, log q', theta =
arccos c) built by the same quadrature (Chebyshev in log q, cubic in theta; within 1e-5 of the direct
quadrature in the tests): 1000 points take about 20 s for swish at depth 2, against about 250 s for every
pair integrated. These are the limits, as h -> infinity, of the empirical NTK of f~ (the kernel of ``ntk``)
and of the covariance of f~ over initialisations.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .activations import ACTIVATIONS, DERIVATIVES

#: numbers held at once by the quadrature (rows x columns x nodes^2), to bound memory
_QUADRATURE_BLOCK = 2 ** 24


def _arccos_terms(q1, q2, cov):
    """relu's E[sigma sigma] and E[sigma' sigma'] for variances q1 (n1,), q2 (n2,) and covariances (n1, n2)."""
    norm = torch.sqrt(q1[:, None] * q2[None, :])
    c = (cov / norm).clamp(-1.0, 1.0)
    theta = torch.arccos(c)
    ss = norm * (torch.sin(theta) + (math.pi - theta) * c) / (2 * math.pi)
    dd = (math.pi - theta) / (2 * math.pi)
    return ss, dd


#: the Gaussian variables are integrated over [-_RANGE, _RANGE] (the mass outside is below 1e-18)
_RANGE = 6.5


def _legendre(n: int, like: torch.Tensor):
    """The n-point Gauss-Legendre rule on [-1, 1]."""
    t, w = np.polynomial.legendre.leggauss(n)
    return (torch.as_tensor(t, dtype=like.dtype, device=like.device),
            torch.as_tensor(w, dtype=like.dtype, device=like.device))


def _split_rule(split: torch.Tensor, t: torch.Tensor, w: torch.Tensor):
    """Nodes and weights, shape split.shape + (2 n,), of E[g(z)], z ~ N(0, 1), by Gauss-Legendre on
    [-R, split] and [split, R]: the nodes crowd at the split, where the activation bends."""
    split = split.clamp(-_RANGE, _RANGE)[..., None]
    nodes, weights = [], []
    for lo, hi in ((-_RANGE, split), (split, _RANGE)):
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        z = mid + half * t
        nodes.append(z)
        weights.append(half * w * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi))
    return torch.cat(nodes, -1), torch.cat(weights, -1)


def _pair_terms(sigma, dsigma, q_i, q_j, c, t, w, z1, w1):
    """E[sigma(u) sigma(v)] and E[sigma'(u) sigma'(v)] for pairs given by their variances and correlations
    (each (pairs,)), by the split Gauss-Legendre rules (nodes t, weights w; z1, w1: the rule over z1)."""
    s = torch.sqrt(1 - c * c)
    u = torch.sqrt(q_i)[:, None] * z1                                              # (pairs, 2G)
    cz = c[:, None] * z1
    z2, w2 = _split_rule(-cz / s[:, None].clamp_min(1e-300), t, w)                  # (pairs, 2G, 2G)
    v = torch.sqrt(q_j)[:, None, None] * (cz[..., None] + s[:, None, None] * z2)
    return tuple(((g(v) * w2).sum(-1) * g(u)) @ w1 for g in (sigma, dsigma))      # over z2, then z1


def _pairwise(sigma, dsigma, q_i, q_j, c, n_nodes):
    """:func:`_pair_terms` over any number of pairs, in blocks that bound memory."""
    t, w = _legendre(n_nodes, c)
    z1, w1 = _split_rule(torch.zeros((), dtype=c.dtype, device=c.device), t, w)   # (2G,)
    block = max(1, _QUADRATURE_BLOCK // (4 * n_nodes * n_nodes))
    parts = [_pair_terms(sigma, dsigma, q_i[k:k + block], q_j[k:k + block], c[k:k + block], t, w, z1, w1)
             for k in range(0, len(c), block)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _quadrature_terms(sigma, dsigma, q1, q2, cov, n_nodes, symmetric=False):
    """E[sigma(u) sigma(v)] and E[sigma'(u) sigma'(v)] with u = sqrt(q1) z1, v = sqrt(q2) (c z1 + s z2),
    s = sqrt(1 - c^2), by Gauss-Legendre rules split where u = 0 (over z1) and where v = 0 (over z2 given
    z1), so that activations that bend sharply at 0 (relu, swish) are integrated accurately. With
    ``symmetric`` (one set against itself) only the pairs i <= j are integrated."""
    n1, n2 = cov.shape
    if symmetric:
        i, j = torch.triu_indices(n1, n2, device=cov.device)
    else:
        i = torch.arange(n1, device=cov.device).repeat_interleave(n2)
        j = torch.arange(n2, device=cov.device).repeat(n1)
    c = (cov[i, j] / torch.sqrt(q1[i] * q2[j])).clamp(-1.0, 1.0)
    ss, dd = torch.empty_like(cov), torch.empty_like(cov)
    for out, value in zip((ss, dd), _pairwise(sigma, dsigma, q1[i], q2[j], c, n_nodes)):
        out[i, j] = value
        if symmetric:
            out[j, i] = value
    return ss, dd


#: the tabulated path: Chebyshev nodes in log q (fewer when the variances span a small range) and a uniform
#: grid of the angle theta = arccos(c) with cubic interpolation
TABLE_Q_NODES = 12
TABLE_ANGLES = 257


def _chebyshev_weights(x: torch.Tensor, lo: float, hi: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n Chebyshev nodes on [lo, hi] and the Lagrange weights (len(x), n) that interpolate at x."""
    k = torch.arange(n, dtype=x.dtype, device=x.device)
    nodes = (lo + hi) / 2 + (hi - lo) / 2 * torch.cos(math.pi * (k + 0.5) / n)
    if n == 1:
        return nodes, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
    diff = x[:, None] - nodes[None, :]
    exact = diff == 0
    bary = (-1.0) ** k * torch.sin(math.pi * (k + 0.5) / n)        # barycentric weights of Chebyshev points
    terms = bary / torch.where(exact, torch.ones_like(diff), diff)
    weights = terms / terms.sum(1, keepdim=True)
    hit = exact.any(1)
    weights[hit] = exact[hit].to(x.dtype)
    return nodes, weights


def _tabulated_terms(sigma, dsigma, q1, q2, cov, n_nodes):
    """The same expectations as :func:`_quadrature_terms`, interpolated from a table over (q, q', theta) built
    by quadrature: Chebyshev interpolation in log q and log q', cubic in theta = arccos(c) (the table is
    extended by reflection, since the expectations are even in theta about 0 and about pi)."""
    logs = torch.log(torch.cat([q1, q2]))
    lo, hi = float(logs.min()), float(logs.max())
    n_q = 1 if hi - lo < 1e-12 else TABLE_Q_NODES
    nodes, l1 = _chebyshev_weights(torch.log(q1), lo, hi, n_q)
    _, l2 = _chebyshev_weights(torch.log(q2), lo, hi, n_q)
    q_nodes = torch.exp(nodes)
    angles = torch.linspace(0, math.pi, TABLE_ANGLES, dtype=cov.dtype, device=cov.device)
    a, b = torch.triu_indices(n_q, n_q, device=cov.device)          # symmetric in (q, q')
    qa = q_nodes[a].repeat_interleave(TABLE_ANGLES)
    qb = q_nodes[b].repeat_interleave(TABLE_ANGLES)
    c = torch.cos(angles).repeat(len(a))
    d_theta = math.pi / (TABLE_ANGLES - 1)
    theta = torch.arccos((cov / torch.sqrt(q1[:, None] * q2[None, :])).clamp(-1.0, 1.0))
    k0 = torch.clamp((theta / d_theta).floor().long(), 0, TABLE_ANGLES - 2)
    frac = theta / d_theta - k0
    taps = torch.stack([-frac * (frac - 1) * (frac - 2) / 6, (frac + 1) * (frac - 1) * (frac - 2) / 2,
                        -(frac + 1) * frac * (frac - 2) / 2, (frac + 1) * frac * (frac - 1) / 6])  # cubic Lagrange
    out = []
    for values in _pairwise(sigma, dsigma, qa, qb, c, n_nodes):
        table = torch.empty(n_q, n_q, TABLE_ANGLES, dtype=cov.dtype, device=cov.device)
        table[a, b] = values.reshape(len(a), TABLE_ANGLES)
        table[b, a] = values.reshape(len(a), TABLE_ANGLES)
        table = torch.cat([table[..., 1:2], table, table[..., -2:-1]], -1)   # reflect at theta = 0 and pi
        left = torch.einsum("ia,abk->ibk", l1, table)                        # (n1, n_q, angles + 2)
        result = torch.empty_like(cov)
        rows = max(1, 2 ** 22 // max(1, n_q * cov.shape[1] * 4))
        for r in range(0, cov.shape[0], rows):
            sl = slice(r, r + rows)
            idx = k0[sl][:, None, :, None] + torch.arange(4, device=cov.device)       # padded index k0 - 1 + tap + 1
            g = torch.gather(left[sl][:, :, None, :].expand(-1, -1, cov.shape[1], -1), 3,
                             idx.expand(-1, n_q, -1, -1))                              # (r, n_q, n2, 4)
            per_q = (g * taps[:, sl].permute(1, 2, 0)[:, None]).sum(-1)                # (r, n_q, n2)
            result[sl] = torch.einsum("rbn,nb->rn", per_q, l2)
        out.append(result)
    return tuple(out)


def _diagonal_terms(sigma, dsigma, q, n_nodes):
    """E[sigma(u)^2] and E[sigma'(u)^2] for u ~ N(0, q), per point (q: (n,))."""
    t, w = _legendre(max(n_nodes, 64), q)
    z, w = _split_rule(torch.zeros((), dtype=q.dtype, device=q.device), t, w)
    u = torch.sqrt(q)[:, None] * z
    return (sigma(u) ** 2) @ w, (dsigma(u) ** 2) @ w


def fc_kernels(x1: torch.Tensor, x2: torch.Tensor | None = None, *, depth: int, activation: str, bias: bool,
               quadrature: int = 24, method: str = "auto") -> dict[str, torch.Tensor]:
    """The infinite-width kernels of an fc net between the rows of x1 and x2 (x1 when None):
    ``{"nngp": (n1, n2), "ntk": (n1, n2)}``. Inputs are flattened; the computation runs in x1's dtype.
    For activations without a closed form, ``method`` "direct" integrates every pair, "table" interpolates
    from a table over (q, q', theta), "auto" takes the table when there are many more pairs than entries."""
    x1 = x1.flatten(1)
    same = x2 is None
    x2 = x1 if same else x2.flatten(1)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 has {x1.shape[1]} features but x2 has {x2.shape[1]}")
    if method not in ("auto", "direct", "table"):
        raise ValueError(f"method must be auto, direct or table, not {method!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"no infinite-width kernel for activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    b = 1.0 if bias else 0.0
    d = x1.shape[1]
    cov = x1 @ x2.T / d + b
    q1 = (x1 * x1).sum(1) / d + b
    q2 = q1 if same else (x2 * x2).sum(1) / d + b
    if float(torch.min(q1.min(), q2.min())) <= 0:
        raise ValueError("an input with zero norm has a degenerate kernel without biases; drop it or set bias = true")
    theta, t1, t2 = cov, q1, q2          # Theta_l on the pairs and on each set's diagonal
    sigma, dsigma = ACTIVATIONS[activation], DERIVATIVES[activation]
    for layer in range(depth):
        if activation == "relu":
            ss, dd = _arccos_terms(q1, q2, cov)
            ss1, dd1, ss2, dd2 = q1 / 2, torch.full_like(q1, 0.5), q2 / 2, torch.full_like(q2, 0.5)
        else:
            pairs = cov.numel() // (2 if same else 1)
            tabulate = method == "table" or (method == "auto" and pairs > 4 * TABLE_Q_NODES ** 2 * TABLE_ANGLES)
            ss, dd = (_tabulated_terms(sigma, dsigma, q1, q2, cov, quadrature) if tabulate
                      else _quadrature_terms(sigma, dsigma, q1, q2, cov, quadrature, symmetric=same))
            ss1, dd1 = _diagonal_terms(sigma, dsigma, q1, quadrature)
            ss2, dd2 = (ss1, dd1) if same else _diagonal_terms(sigma, dsigma, q2, quadrature)
        last = layer == depth - 1
        extra = 0.0 if last else b      # the read-out has no bias
        cov, q1, q2 = ss + extra, ss1 + extra, ss2 + extra
        theta, t1, t2 = cov + theta * dd, q1 + t1 * dd1, q2 + t2 * dd2
    return {"nngp": cov, "ntk": theta}
