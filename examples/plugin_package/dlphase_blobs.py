"""A dlphase plugin package: a dataset (two Gaussian blobs), an observable (the spread of the training margins at
the end) and an analysis of it (its mean over seeds against h), registered through the entry-point group dlphase."""

from typing import ClassVar

import attrs
import numpy as np
import torch

import dlphase


@attrs.frozen(kw_only=True)
class Blobs(dlphase.Dataset):
    """Two Gaussian blobs in d dimensions, centred at +-separation / 2 along x_1, labelled by their blob."""

    name: ClassVar[str] = "blobs"
    d: int = dlphase.param(default=3, doc="input dimension")
    separation: float = dlphase.param(default=2.0, doc="distance between the blobs' centres")
    n_test: int = dlphase.param(default=200, doc="test points")
    seed: int = dlphase.param(default=0, doc="data seed")

    def load(self, P):
        rng = np.random.default_rng(self.seed)
        n = P + self.n_test
        y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        x = rng.standard_normal((n, self.d))
        x[:, 0] += y * self.separation / 2
        return dlphase.Data(x_train=x[self.n_test:], y_train=y[self.n_test:], x_test=x[:self.n_test],
                            y_test=y[:self.n_test])


@attrs.frozen(kw_only=True)
class Margins(dlphase.Observable):
    """The smallest training margin y f at the end and the spread (standard deviation) of the margins."""

    name: ClassVar[str] = "margins"
    variables: ClassVar = {
        "margin_min": dlphase.Variable(long_name="smallest training margin y f"),
        "margin_spread": dlphase.Variable(long_name="standard deviation of the training margins y f"),
    }

    def measure(self, run):
        with torch.no_grad():
            m = run.tensors.y_train * run.model(run.tensors.x_train)
        return {"margin_min": float(m.min()), "margin_spread": float(m.std())}


@attrs.frozen(kw_only=True)
class MarginSpread(dlphase.Analysis):
    """The margins' spread, mean over seeds, against h at each alpha_tilde and P."""

    name: ClassVar[str] = "margin_spread"
    requires: ClassVar = ("margin_spread",)

    def compute(self, cube):
        mean = cube["margin_spread"].mean("seed")
        return mean.to_dataset(name="margin_spread").assign(
            margin_spread=mean.assign_attrs(long_name="spread of the training margins, mean over seeds"))

    def summary(self, result):
        spread = result["margin_spread"]
        return [f"margin spread from {float(spread.min()):.3g} to {float(spread.max()):.3g}"]

    def plot(self, result, backend="bokeh"):
        import holoviews as hv

        curves = [hv.Curve((result["h"].values, result["margin_spread"].sel(alpha_tilde=a).isel(P=-1).values),
                           "h", "margin spread", label=f"alpha_tilde = {a:g}")
                  for a in result["alpha_tilde"].values]
        return hv.Overlay(curves).opts(title="spread of the training margins")


@dlphase.hookimpl
def register_datasets(register):
    register(Blobs)


@dlphase.hookimpl
def register_observables(register):
    register(Margins)


@dlphase.hookimpl
def register_analyses(register):
    register(MarginSpread)
