"""The infinite-width NNGP and NTK of the fc net, in exactly the parametrisation of ``fc`` (SCIENCE.md section 1).

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
4e-9 at 32); the cost is n1 n2 (2 quadrature)^2 activations per layer (half that for one set against itself). These are the limits, as h -> infinity, of the
empirical NTK of f~ (the kernel of ``ntk``) and of the covariance of f~ over initialisations.
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


def _quadrature_terms(sigma, dsigma, q1, q2, cov, n_nodes, symmetric=False):
    """E[sigma(u) sigma(v)] and E[sigma'(u) sigma'(v)] with u = sqrt(q1) z1, v = sqrt(q2) (c z1 + s z2),
    s = sqrt(1 - c^2), by Gauss-Legendre rules split where u = 0 (over z1) and where v = 0 (over z2 given
    z1), so that activations that bend sharply at 0 (relu, swish) are integrated accurately. With
    ``symmetric`` (one set against itself) only the pairs i <= j are integrated."""
    t, w = _legendre(n_nodes, cov)
    n1, n2 = cov.shape
    if symmetric:
        i_all, j_all = torch.triu_indices(n1, n2, device=cov.device)
    else:
        i_all = torch.arange(n1, device=cov.device).repeat_interleave(n2)
        j_all = torch.arange(n2, device=cov.device).repeat(n1)
    z1, w1 = _split_rule(torch.zeros((), dtype=cov.dtype, device=cov.device), t, w)   # (2G,)
    ss, dd = torch.empty_like(cov), torch.empty_like(cov)
    block = max(1, _QUADRATURE_BLOCK // (4 * n_nodes * n_nodes))
    for start in range(0, len(i_all), block):
        i, j = i_all[start:start + block], j_all[start:start + block]
        q_i, q_j = q1[i], q2[j]
        c = (cov[i, j] / torch.sqrt(q_i * q_j)).clamp(-1.0, 1.0)
        s = torch.sqrt(1 - c * c)
        u = torch.sqrt(q_i)[:, None] * z1                                              # (pairs, 2G)
        cz = c[:, None] * z1
        z2, w2 = _split_rule(-cz / s[:, None].clamp_min(1e-300), t, w)                  # (pairs, 2G, 2G)
        v = torch.sqrt(q_j)[:, None, None] * (cz[..., None] + s[:, None, None] * z2)
        for out, g in ((ss, sigma), (dd, dsigma)):
            value = ((g(v) * w2).sum(-1) * g(u)) @ w1                                   # over z2, then z1
            out[i, j] = value
            if symmetric:
                out[j, i] = value
    return ss, dd


def _diagonal_terms(sigma, dsigma, q, n_nodes):
    """E[sigma(u)^2] and E[sigma'(u)^2] for u ~ N(0, q), per point (q: (n,))."""
    t, w = _legendre(max(n_nodes, 64), q)
    z, w = _split_rule(torch.zeros((), dtype=q.dtype, device=q.device), t, w)
    u = torch.sqrt(q)[:, None] * z
    return (sigma(u) ** 2) @ w, (dsigma(u) ** 2) @ w


def fc_kernels(x1: torch.Tensor, x2: torch.Tensor | None = None, *, depth: int, activation: str, bias: bool,
               quadrature: int = 24) -> dict[str, torch.Tensor]:
    """The infinite-width kernels of an fc net between the rows of x1 and x2 (x1 when None):
    ``{"nngp": (n1, n2), "ntk": (n1, n2)}``. Inputs are flattened; the computation runs in x1's dtype."""
    x1 = x1.flatten(1)
    same = x2 is None
    x2 = x1 if same else x2.flatten(1)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 has {x1.shape[1]} features but x2 has {x2.shape[1]}")
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
            ss, dd = _quadrature_terms(sigma, dsigma, q1, q2, cov, quadrature, symmetric=same)
            ss1, dd1 = _diagonal_terms(sigma, dsigma, q1, quadrature)
            ss2, dd2 = (ss1, dd1) if same else _diagonal_terms(sigma, dsigma, q2, quadrature)
        last = layer == depth - 1
        extra = 0.0 if last else b      # the read-out has no bias
        cov, q1, q2 = ss + extra, ss1 + extra, ss2 + extra
        theta, t1, t2 = cov + theta * dd, q1 + t1 * dd1, q2 + t2 * dd2
    return {"nngp": cov, "ntk": theta}
