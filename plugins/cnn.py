"""A convolutional net in the NTK parametrisation (SCIENCE.md section 1).

``depth`` convolutions with h channels, each weight N(0,1) scaled by 1/sqrt(fan_in = channels k^2),
kernel k x k, stride 2 (the reference's 5 x 5, stride 2), then global average pooling of sigma(a_L)
and a linear read-out W sigma / sqrt(h). Takes images (C, H, W): use it with ``pca = 0``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import torch
import torch.nn.functional as F

import dlphase
from dlphase import Architecture, param
from dlphase.specs import non_negative, positive

from .activations import ACTIVATIONS


class CNNNet(torch.nn.Module):
    def __init__(self, channels: int, h: int, depth: int, kernel_size: int, stride: int, padding: int,
                 activation: str, bias: bool, generator: torch.Generator):
        super().__init__()
        ins = [channels] + [h] * (depth - 1)
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(h, c, kernel_size, kernel_size, generator=generator, dtype=torch.float64))
            for c in ins)
        self.biases = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(h, generator=generator, dtype=torch.float64)) for _ in ins) if bias else None
        self.readout = torch.nn.Parameter(torch.randn(h, generator=generator, dtype=torch.float64))
        self.scales = [1 / math.sqrt(c * kernel_size ** 2) for c in ins]
        self.stride, self.padding, self.h = stride, padding, h
        self.sigma = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x
        for i, (w, s) in enumerate(zip(self.weights, self.scales)):
            if i > 0:
                z = self.sigma(z)
            z = F.conv2d(z, w * s, None if self.biases is None else self.biases[i],
                         stride=self.stride, padding=self.padding)
        pooled = self.sigma(z).mean(dim=(2, 3))
        return pooled @ self.readout / math.sqrt(self.h)


@attrs.frozen(kw_only=True)
class CNN(Architecture):
    """Convolutional net: h channels per layer, NTK scaling, global average pooling, linear read-out."""

    name: ClassVar[str] = "cnn"
    depth: int = param(default=2, doc="number of convolution layers", validator=positive)
    kernel_size: int = param(default=5, doc="k of the k x k kernels", validator=positive)
    stride: int = param(default=2, doc="stride of every convolution", validator=positive)
    padding: int = param(default=2, doc="zero padding on each side", validator=non_negative)
    activation: Literal["swish", "relu", "tanh"] = param(default="swish", doc="sigma: swish (normalised), relu, tanh")
    bias: bool = param(default=False, doc="add N(0,1) biases to the convolutions")

    def check(self, dataset) -> None:
        if getattr(dataset, "pca", 0):
            raise ValueError(f"cnn takes images, but dataset.pca = {dataset.pca} flattens them; set dataset.pca = 0")

    def build(self, h, input_shape, generator):
        if len(input_shape) != 3:
            raise ValueError(f"cnn takes images (C, H, W) but the data has points of shape {input_shape}; "
                             f"use dataset.pca = 0")
        return CNNNet(input_shape[0], h, self.depth, self.kernel_size, self.stride, self.padding,
                      self.activation, self.bias, generator)


@dlphase.hookimpl
def register_architectures(register):
    register(CNN)
