"""The observable ``errors``: losses, error rates, N_Delta, N, |f| and the test outputs f_test."""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np
import torch

import dlphase
from dlphase import Observable, Variable


def error_rate(f: np.ndarray, y: np.ndarray) -> float:
    """Fraction of points with sign(f) != y (f = 0 counts as an error)."""
    return float(np.mean(f * y <= 0))


@attrs.frozen(kw_only=True)
class Errors(Observable):
    """Train loss and error, test error, N_Delta, N, RMS |f| on the test set, f_test and y_test."""

    name: ClassVar[str] = "errors"
    variables: ClassVar = {
        "train_loss": Variable(long_name="training loss L = mean l(y f)"),
        "train_error": Variable(long_name="training error"),
        "test_error": Variable(long_name="test error"),
        "n_delta": Variable(long_name="N_Delta, training points with y f < 1"),
        "n_params": Variable(long_name="N, number of parameters", over=("h",)),
        "f_norm": Variable(long_name="|f|, RMS of f on the test set"),
        "converged": Variable(long_name="every training margin y f >= 1"),
        "f_test": Variable(long_name="f on the test points", dims=("test",)),
        "y_test": Variable(long_name="test labels", dims=("test",), over=("P",)),
    }

    def measure(self, run):
        model, tensors = run.model, run.tensors
        with torch.no_grad():
            f_train_t = model(tensors.x_train)
            train_loss = float(run.loss(tensors.y_train * f_train_t).mean())
            f_train = f_train_t.cpu().numpy().astype(np.float64)
            f_test = model(tensors.x_test).cpu().numpy().astype(np.float64)
        y_train, y_test = run.data.y_train, run.data.y_test
        margins = y_train * f_train
        return {
            "train_loss": train_loss,
            "train_error": error_rate(f_train, y_train),
            "test_error": error_rate(f_test, y_test),
            "n_delta": int(np.sum(margins < 1)),
            "n_params": model.n_params(),
            "f_norm": math.sqrt(float(np.mean(f_test ** 2))),
            "converged": bool(np.all(margins >= 1)),
            "f_test": f_test,
            "y_test": y_test.astype(np.float64),
        }


@dlphase.hookimpl
def register_observables(register):
    register(Errors)
