"""A fake third-party plugin, as a package would ship it: a dataset, an observable and an analysis."""

from typing import ClassVar

import attrs
import numpy as np

import dlphase
from dlphase import Analysis, Data, Dataset, Observable, Variable, param


@attrs.frozen(kw_only=True)
class Blobs(Dataset):
    """Two Gaussian blobs in d dimensions, labels the sign of the first coordinate's mean."""

    name: ClassVar[str] = "blobs"
    d: int = param(default=3, doc="input dimension")
    n_test: int = param(default=50, doc="test points")

    def load(self, P):
        rng = np.random.default_rng(0)
        y_all = np.where(np.arange(P + self.n_test) % 2 == 0, 1.0, -1.0)
        x_all = rng.standard_normal((P + self.n_test, self.d))
        x_all[:, 0] += 2 * y_all
        return Data(x_train=x_all[self.n_test:], y_train=y_all[self.n_test:],
                    x_test=x_all[:self.n_test], y_test=y_all[:self.n_test], attrs={"source": "fake blobs"})

    def max_train(self):
        return 500


@attrs.frozen(kw_only=True)
class MeanOutput(Observable):
    """The mean of f on the test set."""

    name: ClassVar[str] = "mean_output"
    variables: ClassVar = {"mean_f_test": Variable(long_name="mean of f on the test set")}

    def measure(self, run):
        import torch

        with torch.no_grad():
            return {"mean_f_test": float(run.model(run.tensors.x_test).mean())}


@dlphase.hookimpl
def register_datasets(register):
    register(Blobs)


@dlphase.hookimpl
def register_observables(register):
    register(MeanOutput)


@attrs.frozen(kw_only=True)
class WorstSeed(Analysis):
    """The largest test error over seeds at each (h, alpha_tilde, P)."""

    name: ClassVar[str] = "worst_seed"
    requires: ClassVar = ("test_error",)
    scale: float = param(default=1.0, doc="multiplies the result")

    def compute(self, cube):
        return (self.scale * cube["test_error"].max("seed")).assign_attrs(long_name="worst test error").to_dataset(
            name="worst")

    def summary(self, result):
        return [f"worst of all: {float(result['worst'].max()):.3f}"]

    def plot(self, result, backend="bokeh"):
        import holoviews as hv

        return hv.Curve((result["h"].values, result["worst"].max(["alpha_tilde", "P"]).values), "h", "worst")


@dlphase.hookimpl
def register_analyses(register):
    register(WorstSeed)

