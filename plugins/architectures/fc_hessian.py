"""Closed-form curvature of the fc net (fc.py), layer by layer with matrix products: the per-sample gradients J,
the dense Hessian of phi = sum_mu c_mu f~(x_mu), and products v -> (J^T diag(a) J + Hess phi) v. The generic path
(hessian.py) needs one backward pass per row of the Hessian; this one costs about one product J^T J.

Layer i = 0..L computes u_i = s_i z_i W_i^T + b_i from z_0 = x, z_{i+1} = sigma(u_i), and f~ = u_L (no bias
there). With e_i = (s_i z_i, 1) (the 1 only where layer i has a bias) and g_i = d f~ / d u_i:

    d f~ / d [W_i, b_i][p, q] = g_i[p] e_i[q],
    d^2 f~ / d theta_i[p, q] d theta_k[r, t] = (K_i G_ik)[p, r] e_i[q] e_k[t] + [k < i] g_i[p] s_i F_ik[q, r] e_k[t]

for k <= i, where G_ik = d u_i / d u_k and F_ik = d z_i / d u_k are the forward Jacobians and K_i = d^2 f~ / d u_i^2
follows K_L = 0, K_i = diag(sigma''(u_i) r_i) + s_{i+1}^2 D_i W_{i+1}^T K_{i+1} W_{i+1} D_i, with
r_i = s_{i+1} W_{i+1}^T g_{i+1} and D_i = diag(sigma'(u_i)). For relu sigma'' = 0: every K_i = 0 and only the
cross-layer terms are left.
"""

from __future__ import annotations

import torch

from .activations import DERIVATIVES, SECOND_DERIVATIVES


class FCCurvature:
    """One forward and backward pass of an FCNet on x, kept: the layer inputs z_i and features e_i, sigma'(u_i),
    sigma''(u_i), the output gradients g_i and r_i, and where each layer's W_i and b_i sit in the flat theta
    (torch's parameter order: every weight, then every bias)."""

    def __init__(self, net, x: torch.Tensor):
        ws = [w.detach() for w in net.weights]
        bs = [b.detach() for b in net.biases] if net.biases is not None else None
        self.ws, self.s, self.L = ws, list(net.scales), len(ws) - 1
        self.has_bias = [bs is not None and i < self.L for i in range(self.L + 1)]
        z, self.z, self.d1, self.d2 = x.flatten(1), [], [], []
        for i, w in enumerate(ws):
            self.z.append(z)
            u = (z @ w.T) * self.s[i]
            if self.has_bias[i]:
                u = u + bs[i]
            if i < self.L:
                self.d1.append(DERIVATIVES[net.activation](u))
                self.d2.append(SECOND_DERIVATIVES[net.activation](u))
                z = net.sigma(u)
        one = x.new_ones(len(x), 1)
        self.e = [torch.cat([z * s, one], 1) if b else z * s for z, s, b in zip(self.z, self.s, self.has_bias)]
        self.g, self.r = [None] * (self.L + 1), [None] * self.L
        self.g[self.L] = one
        for i in range(self.L - 1, -1, -1):
            self.r[i] = (self.g[i + 1] @ ws[i + 1]) * self.s[i + 1]
            self.g[i] = self.d1[i] * self.r[i]
        offset, self.w_at, self.b_at = 0, [], [None] * (self.L + 1)
        for w in ws:
            self.w_at.append(slice(offset, offset + w.numel()))
            offset += w.numel()
        for i in range(self.L + 1):
            if self.has_bias[i]:
                self.b_at[i] = slice(offset, offset + ws[i].shape[0])
                offset += ws[i].shape[0]
        self.n = offset
        self._forward = {}

    def parts(self, i: int, weights_only: bool = False):
        """[(slice of theta, columns of e_i)] of layer i: its weights (e_i's first n_i columns), then its bias."""
        n = self.ws[i].shape[1]
        out = [(self.w_at[i], slice(0, n))]
        if self.has_bias[i] and not weights_only:
            out.append((self.b_at[i], slice(n, n + 1)))
        return out

    def put(self, out: torch.Tensor, i: int, k: int, block: torch.Tensor, kind: str = "full",
            weights_only: bool = False):
        """Add second derivatives d theta_i d theta_k to ``out``. kind "full": ``block`` is (m_i, n_i', m_k, n_k');
        "same_row" (k = i): the block is zero but where r = p, given as (m_i, n_i', n_k'); "row_is_input"
        (k = i - 1, the weights of layer i only): zero but where r = q, given as (m_i, n_i, n_k').
        ``weights_only``: the block has no row for layer i's bias (n_i, not n_i')."""
        m_i, m_k = self.ws[i].shape[0], self.ws[k].shape[0]
        for rows, cols_i in self.parts(i, weights_only=weights_only or kind == "row_is_input"):
            for cols, cols_k in self.parts(k):
                a, b = cols_i.stop - cols_i.start, cols_k.stop - cols_k.start
                view = out[rows, cols].view(m_i, a, m_k, b)
                if kind == "full":
                    view += block[:, cols_i, :, cols_k]
                elif kind == "same_row":
                    view.diagonal(0, 0, 2).add_(block[:, cols_i, cols_k].permute(1, 2, 0))
                else:
                    view.diagonal(0, 1, 2).add_(block[:, :, cols_k].permute(0, 2, 1))

    def mirror(self, out: torch.Tensor):
        """Copy the blocks below the block diagonal (theta_i rows, theta_k columns, k < i) to above it."""
        for i in range(self.L + 1):
            for k in range(i):
                for rows, _ in self.parts(i):
                    for cols, _ in self.parts(k):
                        out[cols, rows] = out[rows, cols].T

    def jacobian(self) -> torch.Tensor:
        """J, (P, N): d f~(x_mu) / d theta."""
        jac = self.e[0].new_empty(len(self.e[0]), self.n)
        for i in range(self.L + 1):
            per = self.g[i][:, :, None] * self.e[i][:, None, :]
            for rows, cols in self.parts(i):
                jac[:, rows] = per[:, :, cols].reshape(len(per), rows.stop - rows.start)
        return jac

    def curvatures(self) -> list:
        """[(K_i, diagonal)]: K_i as (P, m_i) if diagonal, else (P, m_i, m_i); None where it is 0 (sigma'' = 0
        on every later layer)."""
        ks = [None] * (self.L + 1)
        for i in range(self.L - 1, -1, -1):
            k = (self.d2[i] * self.r[i], True) if bool(self.d2[i].any()) else None
            if ks[i + 1] is not None:
                w = self.ws[i + 1] * self.s[i + 1]
                later, diagonal = ks[i + 1]
                mid = (torch.einsum("ap,ma,aq->mpq", w, later, w) if diagonal
                       else torch.einsum("ap,mab,bq->mpq", w, later, w))
                mid *= self.d1[i][:, :, None] * self.d1[i][:, None, :]
                k = (mid + torch.diag_embed(k[0]) if k is not None else mid, False)
            ks[i] = k
        return ks

    def forward_jacobian(self, i: int, k: int) -> torch.Tensor:
        """F_ik = d z_i / d u_k, (P, n_i, m_k), for k <= i - 2 (F_{k+1,k} = diag(sigma'(u_k)) is used as such)."""
        if (i, k) not in self._forward:
            w = self.ws[i - 1] * self.s[i - 1]
            inner = (w * self.d1[k][:, None, :]) if k == i - 2 else w @ self.forward_jacobian(i - 1, k)
            self._forward[i, k] = self.d1[i - 1][:, :, None] * inner
        return self._forward[i, k]

    def transfer(self, i: int, k: int) -> torch.Tensor:
        """G_ik = d u_i / d u_k, (P, m_i, m_k), for k < i."""
        w = self.ws[i] * self.s[i]
        return w * self.d1[k][:, None, :] if k == i - 1 else w @ self.forward_jacobian(i, k)

    def hessian_of_sum(self, c: torch.Tensor) -> torch.Tensor:
        """The dense Hessian of phi = sum_mu c_mu f~(x_mu), (N, N), from the formula of this module's docstring."""
        out = c.new_zeros(self.n, self.n)
        P = len(c)
        ks = self.curvatures()
        for i in range(self.L + 1):
            cg = c[:, None] * self.g[i]
            for k in range(i + 1):
                if ks[i] is not None:                              # (K_i G_ik)[p, r] e_i[q] e_k[t]
                    kk, diagonal = ks[i]
                    ck = c[:, None] * kk if diagonal else c[:, None, None] * kk
                    if k == i and diagonal:
                        block = torch.einsum("mp,mq,mt->pqt", ck, self.e[i], self.e[i])
                        self.put(out, i, k, block, "same_row")
                    else:
                        m = ck if k == i else (ck[:, :, None] * self.transfer(i, k) if diagonal
                                               else ck @ self.transfer(i, k))
                        ee = (self.e[i][:, :, None] * self.e[k][:, None, :]).reshape(P, -1)
                        block = (m.reshape(P, -1).T @ ee).reshape(m.shape[1], m.shape[2], self.e[i].shape[1],
                                                                  self.e[k].shape[1])
                        self.put(out, i, k, block.permute(0, 2, 1, 3), "full")
                if k == i - 1:                                     # g_i[p] s_i sigma'(u_k)[q] e_k[t], r = q
                    de = (self.d1[k][:, :, None] * self.e[k][:, None, :]).reshape(P, -1) * self.s[i]
                    block = (cg.T @ de).reshape(len(cg.T), self.d1[k].shape[1], self.e[k].shape[1])
                    self.put(out, i, k, block, "row_is_input")
                elif k < i - 1:                                    # g_i[p] s_i F_ik[q, r] e_k[t]
                    f = self.forward_jacobian(i, k) * self.s[i]
                    m_i, n_i, m_k, n_k = cg.shape[1], f.shape[1], f.shape[2], self.e[k].shape[1]
                    if m_i <= n_k:                                 # contract the smaller pair of factors last
                        cf = (cg[:, :, None, None] * f[:, None]).reshape(P, -1)
                        block = (cf.T @ self.e[k]).reshape(m_i, n_i, m_k, n_k)
                    else:
                        fe = (f[:, :, :, None] * self.e[k][:, None, None, :]).reshape(P, -1)
                        block = (cg.T @ fe).reshape(m_i, n_i, m_k, n_k)
                    self.put(out, i, k, block, "full", weights_only=True)
        self.mirror(out)
        return out

    def products(self, a, c):
        """v -> (J^T diag(a) J + Hess sum_mu c_mu f~_mu) v by Pearlmutter's R-operator on the kept pass: about six
        (P, h) x (h, h) matrix products for the whole net. v is (N,) or a block (B, N) of B vectors, done as one
        pass of wider products. a or c may be 0 (the H0 or the Hp part alone)."""
        L = self.L
        with_c = not (isinstance(c, (int, float)) and c == 0)
        with_a = not (isinstance(a, (int, float)) and a == 0)
        ws = [w * s for w, s in zip(self.ws, self.s)]                      # s_i W_i
        zs = [z * s for z, s in zip(self.z, self.s)]                       # s_i z_i
        delta = [c[:, None] * g for g in self.g] if with_c else None      # d phi / d u_i
        d2rc = [d2 * (c[:, None] * r) if bool(d2.any()) else None for d2, r in zip(self.d2, self.r)] if with_c else None
        shapes = [w.shape for w in ws]

        def hv(v):
            lead = v.shape[:-1]
            vw = [v[..., self.w_at[i]].reshape(*lead, *shapes[i]) for i in range(L + 1)]
            ru, rz = [], [None]
            for i in range(L + 1):
                t = zs[i] @ vw[i].mT
                if rz[i] is not None:
                    t = _add_product(t, rz[i], ws[i].T)
                if self.has_bias[i]:
                    t += v[..., self.b_at[i]].unsqueeze(-2)
                ru.append(t)
                if i < L:
                    rz.append(self.d1[i] * t)
            rd = [None] * (L + 1)
            rd[L] = a[:, None] * ru[L] if with_a else torch.zeros_like(ru[L])
            for i in range(L - 1, -1, -1):
                rr = _product(rd[i + 1], ws[i + 1])
                if with_c:
                    rr = _add_product(rr, delta[i + 1], vw[i + 1] * self.s[i + 1])
                rd[i] = rr.mul_(self.d1[i])
                if with_c and d2rc[i] is not None:
                    rd[i].addcmul_(d2rc[i], ru[i])
            out = v.new_empty(v.shape)
            for i in range(L + 1):
                gw = rd[i].mT @ zs[i]
                if with_c and rz[i] is not None:
                    gw = _add_product(gw, delta[i].T, rz[i] * self.s[i])
                out[..., self.w_at[i]] = gw.reshape(*lead, -1)
                if self.has_bias[i]:
                    out[..., self.b_at[i]] = rd[i].sum(-2)
            return out

        hv.blocks = True
        return hv


def _product(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y; an outer product (inner size 1: the read-out) by broadcasting, which beats a gemm call for that shape
    (docs/benchmarks.md)."""
    return x * y if x.shape[-1] == 1 else x @ y


def _add_product(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """t += x @ y in place (t has the full broadcast shape); between matrices one fused gemm with beta = 1."""
    if x.shape[-1] == 1:
        return t.addcmul_(x, y)
    if t.dim() == 2 and x.dim() == 2 and y.dim() == 2:
        return t.addmm_(x, y)
    return t.add_(x @ y)
