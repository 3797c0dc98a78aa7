"""The fully connected net of SCIENCE.md section 1, in the NTK (LeCun) parametrisation.

a_1 = W_1 x / sqrt(d) + B_1,  a_i = W_i sigma(a_{i-1}) / sqrt(h) + B_i,  f~ = W_{L+1} sigma(a_L) / sqrt(h),
with every weight and bias i.i.d. N(0, 1). N ~ L h^2 parameters.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import torch

import dlphase
from dlphase import Architecture, param
from dlphase.specs import positive

from .activations import ACTIVATIONS


class FCNet(torch.nn.Module):
    """L hidden layers of width h; inputs are flattened; output shape (n,)."""

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
        self.sigma = ACTIVATIONS[activation]

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


@dlphase.hookimpl
def register_architectures(register):
    register(FC)
