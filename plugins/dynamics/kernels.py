"""Kernels K(x, x') for the kernel methods (kernel_methods.py) and their predictors f(x) = sum_mu a_mu K(x, x_mu) + b.

- ``ntk_init``: the empirical NTK Theta_0 of the run's net at initialisation (its width h and seed);
- ``ntk_final``: the empirical NTK of the same net after training it (the paper: a kernel machine on it
  performs like the net);
- ``ntk_infinite``: the h -> infinity NTK of the architecture (fc: infinite_width.py);
- ``laplace``: exp(-|x - x'| / sigma); ``gaussian``: exp(-|x - x'|^2 / (2 sigma^2)), with the bandwidth
  sigma given, or by default the median distance between training points.
"""

from __future__ import annotations

from typing import Literal

import torch

from dlphase import DataError
from dlphase.ensemble_net import ntk_of
from dlphase.net import fast_paths

KernelName = Literal["ntk_init", "ntk_final", "ntk_infinite", "laplace", "gaussian"]
KERNELS = ("ntk_init", "ntk_final", "ntk_infinite", "laplace", "gaussian")


def median_distance(x: torch.Tensor, limit: int = 2000) -> float:
    """The median Euclidean distance between distinct rows of x (the first ``limit`` rows)."""
    x = x.flatten(1)[:limit]
    d = torch.cdist(x, x)
    i, j = torch.triu_indices(len(x), len(x), 1, device=x.device)
    return float(torch.quantile(d[i, j], 0.5))   # the mean of the two middle values, as numpy


class KernelFunction:
    """K(x1, x2) for one run: ``name`` among :data:`KERNELS`; ``model`` the run's AlphaModel (its nets give
    the NTKs); ``bandwidth`` sigma of laplace and gaussian (None: the median training distance)."""

    def __init__(self, name: str, model, x_train: torch.Tensor, bandwidth: float | None = None,
                 quadrature: int = 32):
        if name not in KERNELS:
            raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
        self.name, self.model, self.quadrature = name, model, quadrature
        if name == "ntk_infinite" and not fast_paths(model.net).offers("infinite_kernels"):
            raise DataError(f"{type(model.net).__name__} has no infinite-width kernel; use kernel = ntk_init, or fc")
        self.bandwidth = None
        if name in ("laplace", "gaussian"):
            self.bandwidth = bandwidth if bandwidth is not None else median_distance(x_train)

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        if self.name == "ntk_init":
            return ntk_of(self.model.net0, x1, x2)
        if self.name == "ntk_final":
            return ntk_of(self.model.net, x1, x2)
        if self.name == "ntk_infinite":
            return self.model.net.infinite_kernels(x1, x2, quadrature=self.quadrature)["ntk"]
        x2 = x1 if x2 is None else x2
        dist = torch.cdist(x1.flatten(1), x2.flatten(1))
        if self.name == "laplace":
            return torch.exp(-dist / self.bandwidth)
        return torch.exp(-dist.square() / (2 * self.bandwidth ** 2))


class KernelPredictor(torch.nn.Module):
    """f(x) = K(x, x_train) a + b, the trained predictor of a kernel method; K(x, x_train) is kept for the
    last few input tensors, since observables ask for the same sets again."""

    def __init__(self, kernel: KernelFunction, x_train: torch.Tensor, a: torch.Tensor, b: float = 0.0,
                 k_train: torch.Tensor | None = None):
        super().__init__()
        self.kernel, self.x_train, self.a, self.b = kernel, x_train, a, float(b)
        self._cache: dict = {} if k_train is None else {self._key(x_train): k_train}

    @staticmethod
    def _key(x: torch.Tensor):
        return x.data_ptr(), tuple(x.shape), x.dtype

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """K(x, x_train), cached by the tensor's storage and shape (K on the training set is given when known)."""
        key = self._key(x)
        if key not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.kernel(x, self.x_train)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gram(x) @ self.a + self.b
