"""A convolutional net in the NTK parametrisation.

``depth`` convolutions with h channels, each weight N(0,1) scaled by 1/sqrt(fan_in = channels k^2),
kernel k x k, one stride for every layer (5 x 5, stride 2, padding 2 by default) or one per layer
(``strides``: the reference code's two blocks of two layers are 5 x 5, strides 2, 1, 2, 1, padding 1), then
global average pooling of sigma(a_L) and a linear read-out W sigma / sqrt(h). Takes images (C, H, W): use it
with ``pca = 0``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import torch
import torch.nn.functional as F

import dlphase
from dlphase import Architecture, Net, param
from dlphase.specs import non_negative, positive

from dlphase.ensemble_net import EnsembleNet

from .activations import ACTIVATIONS, DERIVATIVES

#: numbers of one layer's per-sample gradients held at once by the NTK (about 128 MB in float64)
_NTK_BLOCK = 2 ** 24


class CNNEnsemble(EnsembleNet):
    """M cnns with a layer-by-layer NTK: convolutions as products of the members' weights with the unfolded
    inputs (member m owns channel group m); a forward and backward pass by hand, channels last."""

    def __init__(self, nets):
        super().__init__(nets)
        net = nets[0]
        self.depth, self.scales = len(net.weights), net.scales
        self.strides, self.padding, self.h, self.sigma = net.strides, net.padding, net.h, net.sigma
        self.activation = net.activation
        self.bias = net.biases is not None
        self.k = net.weights[0].shape[-1]
        self.channels = net.weights[0].shape[1]
        self.input_size = net.input_size
        self.kinked = net.activation == "relu"

    def _split(self, params):
        """(weights, biases or None, read-out) from ``params`` in ``named_parameters`` order: the module's own
        read-out comes before the ParameterLists' entries."""
        ws = list(params[1:1 + self.depth])
        bs = list(params[1 + self.depth:]) if self.bias else None
        return ws, bs, params[0]

    def _per_sample(self, params, x):
        """Every member's per-sample pieces of d f~(x_n) / d theta: for each conv layer the unfolded inputs
        U (1 or M, n P_i, k k C) of :meth:`forward` and the output gradients delta (M, n P_i, h) of f~(x_n) alone,
        and the pooled read-out inputs (M, n, h) / sqrt(h). Sample n's pixels depend on x_n only, so the
        back-propagation of dout = 1 gives every sample's own delta at once."""
        ws, _, readout = self._split(params)
        out, ctx = self.forward(params, x, grad=True)
        units, _, shapes, pooled = ctx
        deltas = [None] * self.depth
        for i, delta in self._deltas(ws, readout, self.slopes(ctx), shapes, torch.ones_like(out)):
            deltas[i] = delta
        return units, deltas, pooled

    def elements_per_member(self, n):
        """The widest per-member tensor of a pass: a layer's unfolded inputs, n P_out C k^2 numbers."""
        size, widest = self.input_size, 0
        for i in range(self.depth):
            out = self._out_size(size, i)
            widest = max(widest, n * out[0] * out[1] * (self.channels if i == 0 else self.h) * self.k ** 2)
            size = out
        return widest

    def _unfold(self, z, i):
        """The patches of layer i's input z (B, n, H, W, C), channels last: (B, n Ho Wo, k k C), one row per
        output pixel, read from a strided view of the padded input in one copy."""
        B, n, H, W, C = z.shape
        p, s, k = self.padding, self.strides[i], self.k
        zp = F.pad(z, (0, 0, p, p, p, p))
        Ho, Wo = self._out_size((H, W), i)
        st = zp.stride()
        view = zp.as_strided((B, n, Ho, Wo, k, k, C), (st[0], st[1], s * st[2], s * st[3], st[2], st[3], st[4]))
        return view.reshape(B, n * Ho * Wo, k * k * C)

    def _fold(self, du, shape, i):
        """The adjoint of :meth:`_unfold` for layer i: patch gradients (B, n Ho Wo, k k C) summed back onto the
        input pixels, (B, n, H, W, C)."""
        B, n, H, W, C = shape
        p, s, k = self.padding, self.strides[i], self.k
        Ho, Wo = self._out_size((H, W), i)
        grid = du.new_zeros((B, n, H + 2 * p, W + 2 * p, C))
        d = du.view(B, n, Ho, Wo, k, k, C)
        for a in range(k):
            for b in range(k):
                grid[:, :, a:a + s * (Ho - 1) + 1:s, b:b + s * (Wo - 1) + 1:s] += d[:, :, :, :, a, b]
        return grid[:, :, p:p + H, p:p + W]

    def _matrices(self, ws):
        """Each layer's weights as (M, k k C, h) matrices in the patches' order, scaled by 1 / sqrt(fan_in)."""
        return [(w * s).permute(0, 3, 4, 2, 1).reshape(len(w), -1, self.h) for w, s in zip(ws, self.scales)]

    def forward(self, params, x, grad=False):
        """Outputs (M, n): every convolution one product per member of its unfolded inputs (channels last)
        with its weights; with ``grad`` the context for :meth:`backward` (unfolded inputs, pre-activations,
        layer input shapes, pooled read-out inputs)."""
        ws, bs, readout = self._split(params)
        M, n, h = len(readout), len(x), self.h
        z = x.permute(0, 2, 3, 1)[None]                                   # (1, n, H, W, C): shared input
        units, pre, shapes = [], [], []
        for i, w in enumerate(self._matrices(ws)):
            shapes.append(tuple(z.shape))
            u = self._unfold(z, i)
            a = torch.matmul(u, w)                                          # (M, n Ho Wo, h)
            if bs is not None:
                a = a + bs[i][:, None, :]
            units.append(u)
            pre.append(a)
            Ho, Wo = self._out_size(z.shape[2:4], i)
            if i < self.depth - 1:
                z = self.sigma(a).view(M, n, Ho, Wo, h)
        pooled = self.sigma(pre[-1]).view(M, n, -1, h).mean(2) / math.sqrt(h)   # (M, n, h)
        out = torch.einsum("mnh,mh->mn", pooled, readout)
        return out, ((units, pre, shapes, pooled) if grad else None)

    def slopes(self, ctx):
        """sigma'(a_i) of every layer, (M, n P_i, h) each."""
        return [DERIVATIVES[self.activation](a) for a in ctx[1]]

    def backward(self, params, ctx, dout, slopes=None, reuse=False):
        """Each member's sum_mu dout[m, mu] grad f~_m(x_mu), by hand: weight gradients as products of the unfolded
        inputs with the output gradients, input gradients folded back onto the pixels (col2im)."""
        ws, bs, readout = self._split(params)
        units, pre, shapes, pooled = ctx
        if slopes is None:
            slopes = self.slopes(ctx)
        return self._backprop(ws, bs is not None, readout, units, slopes, shapes, pooled, dout)

    def _deltas(self, ws, readout, slopes, shapes, dout):
        """The output gradients of the conv layers, top down: (i, delta_i (M, n P_i, h)) of sum_mu dout[m, mu]
        f~_m(x_mu), each input gradient folded back onto the pixels (col2im)."""
        M, n, h = len(readout), dout.shape[1], self.h
        top = slopes[-1].view(M, n, -1, h)
        delta = (top * (readout[:, None, None, :] * dout[:, :, None, None] / (math.sqrt(h) * top.shape[2]))
                 ).view(M, -1, h)
        mats = self._matrices(ws)
        for i in range(self.depth - 1, -1, -1):
            yield i, delta
            if i > 0:
                dz = self._fold(torch.bmm(delta, mats[i].transpose(1, 2)), (M, n) + shapes[i][2:], i)
                delta = dz.reshape(M, -1, h) * slopes[i - 1]

    def _backprop(self, ws, bias, readout, units, slopes, shapes, pooled, dout):
        M, h = len(readout), self.h
        g_readout = torch.einsum("mn,mnh->mh", dout, pooled)
        gw, gb = [None] * self.depth, [None] * self.depth
        for i, delta in self._deltas(ws, readout, slopes, shapes, dout):
            g = torch.matmul(units[i].transpose(1, 2), delta) * self.scales[i]      # (M, k k C, h)
            C = shapes[i][-1]
            gw[i] = g.view(M, self.k, self.k, C, h).permute(0, 4, 3, 1, 2).contiguous()
            gb[i] = delta.sum(1)
        return [g_readout] + gw + (gb if bias else [])

    def add_backward(self, params, ctx, g, dout, rows):
        """As :meth:`EnsembleNet.add_backward`, member by member over the images in its rows only (a fraction
        |r| / n of a backward pass)."""
        ws, bs, readout = self._split(params)
        units, pre, shapes, pooled = ctx
        out = [t.clone() for t in g]
        for j, r in enumerate(rows):
            if r is None:
                continue
            n = shapes[0][1]

            def pick(t, shared=False):
                return t[0 if shared else j].view(n, -1, t.shape[-1]).index_select(0, r).reshape(1, -1, t.shape[-1])

            sub_units = [pick(u, shared=i == 0) for i, u in enumerate(units)]
            sub_slopes = [DERIVATIVES[self.activation](pick(a)) for a in pre]
            extra = self._backprop([w[j:j + 1] for w in ws], bs is not None, readout[j:j + 1], sub_units,
                                   sub_slopes, [(1, len(r)) + s[2:] for s in shapes],
                                   pooled[j:j + 1, r], dout[j:j + 1, r])
            for t, e in zip(out, extra):
                t[j] += e[0]
        return out

    def _out_size(self, size, i):
        """The output size of layer i for an input of ``size``."""
        return tuple((s + 2 * self.padding - self.k) // self.strides[i] + 1 for s in size)

    def ntk(self, params, x1, x2=None, chunk=None):
        """Theta layer by layer: conv layer i contributes s_i^2 <delta_n U_n^T, delta_m U_m^T> (per-sample weight
        gradients formed a block of samples at a time, never the whole Jacobian), its bias sum_p delta_n . sum_p
        delta_m, and the read-out pooled_n . pooled_m."""
        one = self._per_sample(params, x1)
        two = one if x2 is None else self._per_sample(params, x2)
        (u1, d1, p1), (u2, d2, p2) = one, two
        M, n1, n2 = len(params[0]), len(x1), len(p2[0])
        theta = torch.einsum("mnh,mlh->mnl", p1, p2)
        for i in range(self.depth):
            # per sample: (M, n, P_i, h) output gradients, (1 or M, n, P_i, k k C) unfolded inputs
            da, db = d1[i].view(M, n1, -1, self.h), d2[i].view(M, n2, -1, self.h)
            ua, ub = u1[i].view(len(u1[i]), n1, da.shape[2], -1), u2[i].view(len(u2[i]), n2, db.shape[2], -1)
            if self.bias:
                theta += torch.einsum("mnh,mlh->mnl", da.sum(2), db.sum(2))
            rows = max(1, _NTK_BLOCK // max(1, self.h * ua.shape[-1] * M))

            def grads(u, d, sl):
                return torch.einsum("mnph,mnpk->mnhk", d[:, sl], u[:, sl].expand(M, -1, -1, -1)).flatten(2)

            for a in range(0, n1, rows):
                ga = grads(ua, da, slice(a, a + rows))
                for b in range(0, n2, rows):
                    gb = ga if (x2 is None and b == a) else grads(ub, db, slice(b, b + rows))
                    theta[:, a:a + rows, b:b + rows] += self.scales[i] ** 2 * torch.bmm(ga, gb.transpose(1, 2))
        return theta


class CNNNet(Net):
    ensemble_class = CNNEnsemble

    def __init__(self, channels: int, h: int, depth: int, kernel_size: int, strides: tuple[int, ...], padding: int,
                 activation: str, bias: bool, generator: torch.Generator, input_size: tuple[int, int]):
        super().__init__()
        ins = [channels] + [h] * (depth - 1)
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(h, c, kernel_size, kernel_size, generator=generator, dtype=torch.float64))
            for c in ins)
        self.biases = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(h, generator=generator, dtype=torch.float64)) for _ in ins) if bias else None
        self.readout = torch.nn.Parameter(torch.randn(h, generator=generator, dtype=torch.float64))
        self.scales = [1 / math.sqrt(c * kernel_size ** 2) for c in ins]
        self.strides, self.padding, self.h = tuple(strides), padding, h
        self.input_size = input_size
        self.activation = activation
        self.sigma = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x
        for i, (w, s) in enumerate(zip(self.weights, self.scales)):
            if i > 0:
                z = self.sigma(z)
            z = F.conv2d(z, w * s, None if self.biases is None else self.biases[i],
                         stride=self.strides[i], padding=self.padding)
        pooled = self.sigma(z).mean(dim=(2, 3))
        return pooled @ self.readout / math.sqrt(self.h)


@attrs.frozen(kw_only=True)
class CNN(Architecture):
    """Convolutional net: h channels per layer, NTK scaling, global average pooling, linear read-out."""

    name: ClassVar[str] = "cnn"
    depth: int = param(default=2, doc="number of convolution layers", validator=positive)
    kernel_size: int = param(default=5, doc="k of the k x k kernels", validator=positive)
    stride: int = param(default=2, doc="stride of every convolution (unless strides is given)", validator=positive)
    strides: tuple[int, ...] = param(default=(), doc="one stride per convolution, e.g. [2, 1, 2, 1] (with depth 4, "
                                                     "padding 1) for the reference code's topology; empty: stride",
                                     validator=None)
    padding: int = param(default=2, doc="zero padding on each side", validator=non_negative)
    activation: Literal["swish", "relu", "tanh"] = param(default="swish", doc="sigma: swish (normalised), relu, tanh")
    bias: bool = param(default=False, doc="add N(0,1) biases to the convolutions")

    def __attrs_post_init__(self):
        if self.strides and (len(self.strides) != self.depth or any(s < 1 for s in self.strides)):
            raise ValueError(f"strides = {list(self.strides)} must give one stride >= 1 for each of the depth = "
                             f"{self.depth} convolutions")

    def layer_strides(self) -> tuple[int, ...]:
        """The stride of each convolution."""
        return tuple(self.strides) or (self.stride,) * self.depth

    def check(self, dataset) -> None:
        if getattr(dataset, "pca", 0):
            raise ValueError(f"cnn takes images, but dataset.pca = {dataset.pca} flattens them; set dataset.pca = 0")

    def build(self, h, input_shape, generator):
        if len(input_shape) != 3:
            raise ValueError(f"cnn takes images (C, H, W) but the data has points of shape {input_shape}; "
                             f"use dataset.pca = 0")
        size = tuple(input_shape[1:])
        for i, s in enumerate(self.layer_strides()):
            size = tuple((n + 2 * self.padding - self.kernel_size) // s + 1 for n in size)
            if min(size) < 1:
                raise ValueError(f"the {self.kernel_size} x {self.kernel_size} kernels leave no pixel after "
                                 f"convolution {i + 1} of {self.depth} on {tuple(input_shape[1:])} images; lower "
                                 f"architecture.depth, the strides or the kernel_size, or raise the padding")
        return CNNNet(input_shape[0], h, self.depth, self.kernel_size, self.layer_strides(), self.padding,
                      self.activation, self.bias, generator, tuple(input_shape[1:]))


@dlphase.hookimpl
def register_architectures(register):
    register(CNN)
