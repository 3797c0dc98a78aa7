"""The trained predictor f(x) = alpha * (f~_theta(x) - f~_theta0(x)) of eq. (9).

alpha = alpha_tilde / sqrt(h). Subtracting the frozen initial net makes f exactly 0 at
initialisation, whatever alpha; dynamics minimise L / alpha^2 so that at large alpha the time
scale does not depend on alpha.
"""

from __future__ import annotations

import copy
import math

import torch


def rescaled(f_tilde: torch.Tensor, f_tilde0: torch.Tensor, alpha) -> torch.Tensor:
    """f = alpha (f~ - f~0): the one place the predictor is formed from the net's outputs. ``alpha`` is a
    number, or one value per member (M,) for outputs (M, n)."""
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1 and f_tilde.dim() > 1:
        alpha = alpha.reshape((-1,) + (1,) * (f_tilde.dim() - 1))
    return alpha * (f_tilde - f_tilde0)


def alpha_of(alpha_tilde: float, h: int) -> float:
    """alpha = alpha_tilde / sqrt(h)."""
    return alpha_tilde / math.sqrt(h)


def reference_time_factor(alpha_tilde: float, alpha: float) -> float:
    """t_reference / t = alpha_tilde / alpha^2: dlphase's flow descends L / alpha^2, the reference code's descends
    L / alpha_tilde (its read-out is (alpha_tilde / h) sum_i, as ours), so its clock runs this much faster."""
    return alpha_tilde / alpha ** 2


class AlphaModel(torch.nn.Module):
    """f = alpha (net - net0); ``net`` is trained, ``net0`` is a frozen copy taken at construction."""

    def __init__(self, net: torch.nn.Module, alpha: float):
        super().__init__()
        self.net = net
        self.net0 = copy.deepcopy(net).requires_grad_(False)
        self.alpha = float(alpha)
        #: set by kernel methods: a module x -> f(x) that replaces alpha (f~ - f~0) as the run's predictor
        self.predictor: torch.nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.predictor is not None:
            return self.predictor(x)
        with torch.no_grad():
            f0 = self.net0(x)
        return rescaled(self.net(x), f0, self.alpha)

    def f_from(self, x: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
        """f on inputs whose initial outputs ``f0 = net0(x)`` were computed once beforehand."""
        return rescaled(self.net(x), f0, self.alpha)

    def n_params(self) -> int:
        """N, the number of trained parameters."""
        return sum(p.numel() for p in self.net.parameters())

    def displacement(self) -> float:
        """|theta - theta_0|, the Euclidean distance travelled in parameter space."""
        with torch.no_grad():
            return math.sqrt(sum(float((p - p0).pow(2).sum())
                                 for p, p0 in zip(self.net.parameters(), self.net0.parameters())))
