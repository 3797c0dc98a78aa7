"""Activation functions sigma of the nets, by name.

``swish`` is the reference's: z * sigmoid(10 z) rescaled so that E[sigma(z)^2] = 1 for z ~ N(0, 1).
``relu`` is plain max(0, z), not rescaled, so that textbook infinite-width formulas apply as they stand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SWISH_BETA = 10.0
#: E[(z sigmoid(10 z))^2] for z ~ N(0,1), by adaptive quadrature (checked in the tests).
SWISH_SECOND_MOMENT = 0.49877173107472017
SWISH_SCALE = SWISH_SECOND_MOMENT ** -0.5


def swish(z: torch.Tensor) -> torch.Tensor:
    """Normalised swish: z sigmoid(10 z) / sqrt(E[(z sigmoid(10 z))^2])."""
    return SWISH_SCALE * z * torch.sigmoid(SWISH_BETA * z)


def swish_grad(z: torch.Tensor) -> torch.Tensor:
    """d swish / dz = C (s + 10 z s (1 - s)) with s = sigmoid(10 z)."""
    s = torch.sigmoid(SWISH_BETA * z)
    return SWISH_SCALE * (s + SWISH_BETA * z * s * (1 - s))


def relu_grad(z: torch.Tensor) -> torch.Tensor:
    """1 where z > 0, else 0 (torch's convention at 0)."""
    return (z > 0).to(z.dtype)


def tanh_grad(z: torch.Tensor) -> torch.Tensor:
    return 1 - torch.tanh(z) ** 2


ACTIVATIONS = {
    "swish": swish,
    "relu": torch.relu,
    "tanh": torch.tanh,
}

#: sigma' in closed form: the tests check it and the fused backward passes (FUSED) against autograd.
DERIVATIVES = {
    "swish": swish_grad,
    "relu": relu_grad,
    "tanh": tanh_grad,
}

def swish_second(z: torch.Tensor) -> torch.Tensor:
    """d^2 swish / dz^2 = C 10 s (1 - s) (2 + 10 z (1 - 2 s)) with s = sigmoid(10 z)."""
    s = torch.sigmoid(SWISH_BETA * z)
    return SWISH_SCALE * SWISH_BETA * s * (1 - s) * (2 + SWISH_BETA * z * (1 - 2 * s))


def tanh_second(z: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(z)
    return -2 * t * (1 - t ** 2)


#: sigma'' in closed form, for the fc net's closed-form Hessian (fc_hessian.py); relu's is 0 (almost everywhere).
SECOND_DERIVATIVES = {
    "swish": swish_second,
    "relu": torch.zeros_like,
    "tanh": tanh_second,
}

#: The batched kernels' fused forms: sigma(a) = c_out act(c_in a), where act and its backward are one
#: fused torch op each; c_in and c_out fold into the weights' scales. (act, act_backward(grad, u, act(u)),
#: c_in, c_out). Checked against ACTIVATIONS and DERIVATIVES in the tests.
FUSED = {
    "swish": (F.silu, lambda g, u, z: torch.ops.aten.silu_backward(g, u), SWISH_BETA, SWISH_SCALE / SWISH_BETA),
    "relu": (torch.relu, lambda g, u, z: torch.ops.aten.threshold_backward(g, u, 0), 1.0, 1.0),
    "tanh": (torch.tanh, lambda g, u, z: torch.ops.aten.tanh_backward(g, z), 1.0, 1.0),
}
