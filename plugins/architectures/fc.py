"""The paper's fully connected net, in the NTK (LeCun) parametrisation.

a_1 = W_1 x / sqrt(d) + B_1,  a_i = W_i sigma(a_{i-1}) / sqrt(h) + B_i,  f~ = W_{L+1} sigma(a_L) / sqrt(h),
with every weight and bias i.i.d. N(0, 1). N ~ L h^2 parameters.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import torch

import dlphase
from dlphase import Architecture, Net, param
from dlphase.ensemble_net import EnsembleNet
from dlphase.net import parameters_by_name
from dlphase.specs import positive

from .activations import ACTIVATIONS, FUSED


def _per_member(z, M):
    """The shared input (n, d) as an (M, n, d) view, so that every product is one bmm whatever M is
    (a 2-d operand would let torch.matmul fold M into one gemm, whose rounding depends on M)."""
    return z.expand(M, *z.shape) if z.dim() == 2 else z


class FCEnsemble(EnsembleNet):
    """M fc nets by batched matrix products, with a hand-written backward pass.

    With sigma(a) = c_out act(c_in a) (activations.FUSED), hidden layer i computes
    u_i = z_{i-1} (k_i W_i)^T + c_in B_i and z_i = act(u_i), so that the weight scales 1/sqrt(fan_in) and
    the activation's constants act on the small weight matrices, not on the (M, n, h) activations: a
    hidden layer costs one bmm and one fused elementwise op forward, two bmm and one fused op backward.
    """

    def __init__(self, nets):
        super().__init__(nets)
        net = nets[0]
        self.act, self.act_backward, c_in, c_out = FUSED[net.activation]
        last = len(net.scales) - 1
        self.k = [s * (c_out if i > 0 else 1.0) * (c_in if i < last else 1.0) for i, s in enumerate(net.scales)]
        self.c_in = c_in
        self.n_layers = len(self.k)
        self.kinked = net.activation == "relu"

    def elements_per_member(self, n):
        return n * max(w.shape[1] for w in self.template.parameters() if w.dim() == 2)

    def layers(self, params):
        """(weights (M, n_out, n_in) per layer, biases (M, n_out) per hidden layer or None)."""
        L = self.n_layers
        return list(params[:L]), (list(params[L:]) if len(params) > L else None)

    def join(self, gw, gb):
        """Gradients in ``params`` order from per-layer weight and bias gradients."""
        return gw + (gb or [])

    def forward(self, params, x, grad=False):
        ws, bs = self.layers(params)
        z = x.flatten(1)
        acts, pre = [z], []
        for i, (w, k) in enumerate(zip(ws, self.k)):
            if i > 0:
                z = self.act(pre[-1])
                acts.append(z)
            if w.shape[1] == 1:   # the read-out: a per-row dot product, the same kernel whatever M is
                u = (z * (w * k)).sum(-1, keepdim=True)
            elif bs is not None and i < self.n_layers - 1:
                u = torch.baddbmm((bs[i] * self.c_in)[:, None, :], _per_member(z, len(w)), (w * k).transpose(1, 2))
            else:
                u = torch.bmm(_per_member(z, len(w)), (w * k).transpose(1, 2))
            pre.append(u)
        return u[..., 0], ((acts, pre, {}) if grad else None)

    def _backprop(self, ws, ctx, delta, slopes=None):
        """Yield (i, d/du_i) for the layers i = last .. 0, from the read-out's cotangent ``delta`` (M, n, 1);
        with ``slopes``, through those activation slopes instead of the pass's own."""
        acts, pre, _ = ctx
        for i in range(self.n_layers - 1, -1, -1):
            yield i, delta
            if i == 0:
                return
            if ws[i].shape[1] == 1:
                dz = delta * (ws[i] * self.k[i])                        # outer product, (M, n, h)
            else:
                dz = torch.bmm(delta, ws[i] * self.k[i])
            delta = self.act_backward(dz, pre[i - 1], acts[i]) if slopes is None else dz * slopes[i - 1]

    def _unit_deltas(self, ws, ctx):
        """The per-sample gradients d f~(x_mu) / d u_i, (M, n, .) per layer: the backward pass with a unit
        cotangent, whose rows stay apart since f~(x_mu) depends on x_mu only. Kept in ``ctx`` once computed."""
        store = ctx[2]
        if "unit" not in store:
            deltas = [None] * self.n_layers
            for i, delta in self._backprop(ws, ctx, torch.ones_like(ctx[1][-1])):
                deltas[i] = delta
            store["unit"] = deltas
        return store["unit"]

    def per_sample(self, params, x):
        """Each layer's input z_{i-1} and the per-sample gradient d f~(x_mu) / d u_i, (M, n, .) each."""
        out, ctx = self.forward(params, x, grad=True)
        ws, _ = self.layers(params)
        return [_per_member(a, len(out)) for a in ctx[0]], self._unit_deltas(ws, ctx)

    def ntk(self, params, x1, x2=None, chunk=None):
        """Theta(x, x') layer by layer, without the N x n Jacobian: d f~ / d W_i = k_i delta_i z_{i-1}^T, so
        Theta = sum_i k_i^2 (Delta_i Delta_i'^T) (Z_{i-1} Z_{i-1}'^T) (elementwise), plus c_in^2 Delta_i Delta_i'^T
        for the biases; the read-out has Delta = 1. Cost: two bmm per hidden layer, one for the read-out, (M, n1, n2)
        memory (``chunk``, for the generic path, is unused)."""
        a1, d1 = self.per_sample(params, x1)
        a2, d2 = (a1, d1) if x2 is None else self.per_sample(params, x2)
        _, bs = self.layers(params)
        theta = None
        for i, k in enumerate(self.k):
            # k^2 (Z Z'^T) on the layer's inputs, k folded into the (n, fan_in) factor rather than the (n, n) one
            z1 = a1[i] * k
            term = torch.bmm(z1, (z1 if x2 is None else a2[i] * k).transpose(1, 2))
            if bs is not None and i < self.n_layers - 1:
                term.add_(self.c_in ** 2)
            if i < self.n_layers - 1:       # the read-out's output gradient is 1: no Delta Delta'^T there
                term.mul_(torch.bmm(d1[i], d2[i].transpose(1, 2)))
            if theta is None:
                theta = term
            else:
                theta.add_(term)
        return theta

    def ntk_block(self, params, x, rows, vectors, ctx=None):
        """Each member m's (Theta(x[r], x[r]), Theta(x[r], x) v) for r = rows[m] and v = vectors[m] (n,), or None
        where rows[m] is None. The product never forms the rows: per layer, Theta(., x) v = z^T (Z^T diag(v) D) d
        (an h x h matrix, the weight gradient of v). One member's slice at a time, so that a member's numbers do
        not depend on the batch. ``ctx``: a forward pass on x with grad=True, reused."""
        if ctx is None:
            _, ctx = self.forward(params, x, grad=True)
        ws, bs = self.layers(params)
        deltas = self._unit_deltas(ws, ctx)
        acts = [_per_member(a, len(ws[0])) for a in ctx[0]]
        out = []
        for j, r in enumerate(rows):
            if r is None:
                out.append(None)
                continue
            v = vectors[j]
            square, prod = None, None
            for i, k in enumerate(self.k):
                z = acts[i][j] * k
                zr = z[r]
                term = zr @ zr.T
                hidden = i < self.n_layers - 1
                if bs is not None and hidden:
                    term.add_(self.c_in ** 2)
                if hidden:
                    d, dr = deltas[i][j], deltas[i][j, r]
                    term.mul_(dr @ dr.T)
                    p = ((zr @ (z.T @ (d * v[:, None]))) * dr).sum(1)
                    if bs is not None:
                        p = p + self.c_in ** 2 * (dr @ (d.T @ v))
                else:
                    p = zr @ (z.T @ v)
                square = term if square is None else square.add_(term)
                prod = p if prod is None else prod.add_(p)
            out.append((square, prod))
        return out

    def slopes(self, ctx):
        """act'(u_i) of every hidden layer, (M, n, h) each (relu: sigma'(a_i))."""
        acts, pre, _ = ctx
        return [self.act_backward(torch.ones_like(u), u, z) for u, z in zip(pre[:-1], acts[1:])]

    def backward(self, params, ctx, dout, slopes=None, reuse=False):
        """With ``reuse`` (or once ``ctx`` holds them), from the per-sample gradients D_i of a unit cotangent:
        d/du_i = dout D_i row by row, so that a further cotangent costs only the weight products."""
        ws, bs = self.layers(params)
        acts = ctx[0]
        gw, gb = [None] * self.n_layers, [None] * (self.n_layers - 1)
        if slopes is None and (reuse or "unit" in ctx[2]):
            units = self._unit_deltas(ws, ctx)
            pairs = ((i, units[i] * dout[..., None]) for i in range(self.n_layers - 1, -1, -1))
        else:
            pairs = self._backprop(ws, ctx, dout[..., None], slopes)
        for i, delta in pairs:
            gw[i] = torch.bmm(delta.transpose(1, 2), _per_member(acts[i], len(delta))) * self.k[i]
            if i < self.n_layers - 1:
                gb[i] = delta.sum(1) * self.c_in
        return self.join(gw, gb if bs is not None else None)

    def add_backward(self, params, ctx, g, dout, rows):
        """As :meth:`EnsembleNet.add_backward`, from the per-sample gradients D_i of a unit cotangent, member by
        member on its rows only: per layer k_i (dout D_i)[r]^T z_{i-1}[r], r = rows[m] (so |r| / n of a
        backward's weight products, and a member's numbers do not depend on the batch)."""
        ws, bs = self.layers(params)
        units = self._unit_deltas(ws, ctx)
        acts = ctx[0]
        gw, gb = self.layers(list(g))
        gw = [t.clone() for t in gw]
        gb = [t.clone() for t in gb] if gb is not None else None
        for j, r in enumerate(rows):
            if r is None:
                continue
            d = dout[j, r, None]
            for i in range(self.n_layers):
                delta = units[i][j, r] * d
                z = acts[i][r] if acts[i].dim() == 2 else acts[i][j, r]
                gw[i][j] += (delta.T @ z) * self.k[i]
                if gb is not None and i < self.n_layers - 1:
                    gb[i][j] += delta.sum(0) * self.c_in
        return self.join(gw, gb)


class FCNet(Net):
    """L hidden layers of width h; inputs are flattened; output shape (n,)."""

    ensemble_class = FCEnsemble

    def __init__(self, d: int, h: int, depth: int, activation: str, bias: bool, generator: torch.Generator):
        super().__init__()
        sizes = [d] + [h] * depth + [1]
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(n_out, n_in, generator=generator, dtype=torch.float64))
            for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        self.biases = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(n_out, generator=generator, dtype=torch.float64))
            for n_out in sizes[1:-1]) if bias else None
        self.scales = [1 / math.sqrt(n_in) for n_in in sizes[:-1]]
        self.activation = activation
        self.sigma = ACTIVATIONS[activation]

    def infinite_kernels(self, x1, x2=None, quadrature: int = 24):
        """The h -> infinity NNGP and NTK of this net's architecture (infinite_width.py)."""
        from .infinite_width import fc_kernels

        return fc_kernels(x1, x2, depth=len(self.weights) - 1, activation=self.activation,
                          bias=self.biases is not None, quadrature=quadrature)

    def curvature(self, x: torch.Tensor):
        """The closed-form per-sample gradients, Hessians and Hessian-vector products on x (fc_hessian.py), which
        the Hessian observable uses instead of its generic autograd path."""
        from .fc_hessian import FCCurvature

        return FCCurvature(self, x)

    def first_layer(self, params=None):
        """W_1 (h, d), and each first-layer neuron's outgoing weights |W_2[:, i]| / sqrt(rows of W_2) (|W_2i| for
        one hidden layer)."""
        p = parameters_by_name(self, params)
        w2 = p["weights.1"]
        return p["weights.0"], w2.norm(dim=0) / math.sqrt(len(w2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        last = len(self.weights) - 1
        for i, (w, s) in enumerate(zip(self.weights, self.scales)):
            if i > 0:
                z = self.sigma(z)
            z = (z @ w.t()) * s
            if self.biases is not None and i < last:
                z = z + self.biases[i]
        return z[:, 0]


@attrs.frozen(kw_only=True)
class FC(Architecture):
    """Fully connected net, NTK scaling, N(0,1) weights, optional biases."""

    name: ClassVar[str] = "fc"
    depth: int = param(default=2, doc="L, the number of hidden layers", validator=positive)
    activation: Literal["swish", "relu", "tanh"] = param(
        default="swish", doc="swish (normalised, beta = 10, as the reference), relu = max(0, z), or tanh")
    bias: bool = param(default=False, doc="add N(0,1) biases to the hidden layers (the reference uses none)")

    def build(self, h, input_shape, generator):
        return FCNet(math.prod(input_shape), h, self.depth, self.activation, self.bias, generator)

    def infinite_kernels(self, x1, x2=None, quadrature: int = 24):
        """The h -> infinity NNGP and NTK of f~ between the rows of x1 and x2 (infinite_width.py)."""
        from .infinite_width import fc_kernels

        return fc_kernels(x1, x2, depth=self.depth, activation=self.activation, bias=self.bias,
                          quadrature=quadrature)


@dlphase.hookimpl
def register_architectures(register):
    register(FC)
