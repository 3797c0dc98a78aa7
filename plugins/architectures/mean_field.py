"""The mean-field one-hidden-layer net of eq. (7): f~ = (1/h) sum_i W2_i sigma(W1_i . x / sqrt(d) + B_i).

All weights N(0,1). The read-out is 1/h rather than 1/sqrt(h), so alpha = alpha_tilde multiplies f~ - f~0:
f = (alpha_tilde / h) sum_i W2_i sigma(...) less its initial value, the same model as ``fc`` with depth 1 (and the
same biases) at the same alpha_tilde. Eq. (7) itself is alpha_tilde = 1.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import torch

import dlphase
from dlphase import Architecture, Net, param
from dlphase.net import parameters_by_name

from .activations import ACTIVATIONS
from .fc import FCEnsemble


class MeanFieldEnsemble(FCEnsemble):
    """M mean-field nets through the fc batched kernels: weights (W1, W2 as a 1 x h matrix), bias B."""

    def layers(self, params):
        w1, *rest = params
        b, w2 = rest if len(rest) == 2 else (None, rest[0])
        return [w1, w2[:, None, :]], (None if b is None else [b])

    def join(self, gw, gb):
        return [gw[0]] + (gb or []) + [gw[1][:, 0, :]]


class MeanFieldNet(Net):
    ensemble_class = MeanFieldEnsemble

    def __init__(self, d: int, h: int, activation: str, bias: bool, generator: torch.Generator):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(h, d, generator=generator, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(h, generator=generator, dtype=torch.float64)) if bias else None
        self.w2 = torch.nn.Parameter(torch.randn(h, generator=generator, dtype=torch.float64))
        self.d, self.h = d, h
        self.scales = [1 / math.sqrt(d), 1 / h]
        self.activation = activation
        self.sigma = ACTIVATIONS[activation]

    def first_layer(self, params=None):
        """W_1 (h, d) and |W_2i|."""
        p = parameters_by_name(self, params)
        return p["w1"], p["w2"].abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1) @ self.w1.t() / math.sqrt(self.d)
        if self.b is not None:
            a = a + self.b
        return self.sigma(a) @ self.w2 / self.h


@attrs.frozen(kw_only=True)
class MeanField(Architecture):
    """One hidden layer, output (1/h) sum_i W2_i sigma(W1_i . x / sqrt(d) + B_i) (eq. 7), with alpha = alpha_tilde:
    at a given alpha_tilde, the same predictor as fc with depth 1 and the same weights."""

    name: ClassVar[str] = "mean_field"
    activation: Literal["swish", "relu", "tanh"] = param(default="relu", doc="sigma: relu (as the paper's text), "
                                                                             "swish (normalised) or tanh")
    bias: bool = param(default=True, doc="the biases B_i of eq. (7)")

    def build(self, h, input_shape, generator):
        return MeanFieldNet(math.prod(input_shape), h, self.activation, self.bias, generator)

    def alpha(self, alpha_tilde, h):
        """alpha_tilde: the 1/h read-out already holds the 1/sqrt(h) that fc's alpha carries."""
        return float(alpha_tilde)


@dlphase.hookimpl
def register_architectures(register):
    register(MeanField)
