"""f~ = w . x, the smallest net: the tests' flows of it are known in closed form or by an ODE solver."""

import torch

from dlphase import TorchData


class Linear(torch.nn.Module):
    """f~(x) = x @ w, with w a copy of the weights given (so training never writes into the caller's array)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64).clone())

    def forward(self, x):
        return x @ self.w


def data(x, y):
    """Training points that are also the test points."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    return TorchData(x_train=x, y_train=y, x_test=x, y_test=y)
