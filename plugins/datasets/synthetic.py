"""Synthetic data: the stripe model, random labels, and a random teacher net.

x ~ N(0, I_d). Each split comes from its own random stream fixed by ``seed``: the test, kernel and
validation sets do not depend on P, and the first P training points are the same for every larger P (nested).
The training stream also follows ``draw``, which ``training = "per_seed"`` sets to each run's initialisation seed:
the seeds then train on independent training sets, and are tested on the same test set.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs
import numpy as np
import torch

import dlphase
from dlphase import Data, Dataset, param
from dlphase.specs import non_negative, positive

STREAMS = {"test": 0, "kernel": 1, "train": 2, "val": 3}


@attrs.frozen(kw_only=True)
class Gaussian(Dataset):
    """Gaussian inputs in d dimensions; subclasses give the labels."""

    cacheable: ClassVar[bool] = False  # generating is faster than reading a cache entry

    d: int = param(default=10, doc="input dimension", validator=positive)
    n_test: int = param(default=1000, doc="test points", validator=positive)
    n_kernel: int = param(default=0, doc="kernel-set points for NTK observables", validator=non_negative)
    seed: int = param(default=0, doc="data seed", validator=non_negative)
    training: Literal["shared", "per_seed"] = param(
        default="shared", doc="shared: every initialisation seed trains on the training set `draw`; per_seed: seed s "
                              "trains on draw s, so that averages over seeds also average over training sets (the "
                              "test and kernel sets stay shared)")
    draw: int = param(default=0, doc="which training set of this data seed (set per run by training = per_seed)",
                      validator=non_negative)

    def for_seed(self, seed: int) -> "Gaussian":
        return attrs.evolve(self, draw=seed) if self.training == "per_seed" else self

    def stream(self, split: str, *extra: int) -> np.random.Generator:
        """The random stream of one split; the training split's follows ``draw`` (draw 0: the stream without it)."""
        own = [self.draw] if split == "train" and self.draw else []
        return np.random.default_rng([self.seed, STREAMS[split], *extra, *own])

    def inputs(self, split: str, n: int) -> np.ndarray:
        return self.stream(split).standard_normal((n, self.d))

    def label(self, split: str, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def informative(self) -> np.ndarray | None:
        """Orthonormal rows (k, d) spanning the directions the labels depend on; None where all may matter."""
        return None

    def load(self, P: int) -> Data:
        return self.load_validation(P, 0)

    def load_validation(self, P: int, n_validation: int) -> Data:
        """Validation points come from a stream of their own: the other splits are those of ``load(P)``."""
        parts = {}
        for split, n in (("train", P), ("test", self.n_test), ("kernel", self.n_kernel), ("val", n_validation)):
            x = self.inputs(split, n)
            parts[split] = (x, self.label(split, x))
        val = parts["val"] if n_validation else (None, None)
        return Data(x_train=parts["train"][0], y_train=parts["train"][1], x_test=parts["test"][0],
                    y_test=parts["test"][1], x_kernel=parts["kernel"][0], y_kernel=parts["kernel"][1],
                    x_val=val[0], y_val=val[1], informative=self.informative(), attrs={"source": self.describe()})

    def describe(self) -> str:
        return self.name


@attrs.frozen(kw_only=True)
class Stripe(Gaussian):
    """Stripe model: y = +1 when low < x_1 < high, else -1 (only x_1 is informative)."""

    name: ClassVar[str] = "stripe"
    low: float = param(default=-0.3, doc="lower end of the +1 interval of x_1")
    high: float = param(default=1.18549, doc="upper end (with -0.3, P(y = +1) = 1/2)")

    def __attrs_post_init__(self):
        if self.d < 2:
            raise ValueError(f"d = {self.d}: the stripe model needs d >= 2 (x_1 and at least one uninformative x_i)")
        if not self.low < self.high:
            raise ValueError(f"low = {self.low} must be below high = {self.high}")

    def label(self, split, x):
        return np.where((x[:, 0] > self.low) & (x[:, 0] < self.high), 1.0, -1.0)

    def informative(self):
        """x_1 alone: d_par = 1, d_perp = d - 1."""
        return np.eye(1, self.d)

    def describe(self):
        return f"stripe model, d = {self.d}, y = +1 on {self.low} < x_1 < {self.high}"


@attrs.frozen(kw_only=True)
class RandomLabels(Gaussian):
    """Gaussian inputs with independent random +-1 labels (the jamming point is linear in P)."""

    name: ClassVar[str] = "random"

    def label(self, split, x):
        rng = self.stream(split, 7)
        return np.where(rng.random(len(x)) < 0.5, 1.0, -1.0)

    def describe(self):
        return f"random labels, Gaussian x in d = {self.d}"


@attrs.frozen(kw_only=True)
class Teacher(Gaussian):
    """Labels = sign of a random fc teacher net (NTK scaling, N(0,1) weights) of the given depth and width."""

    name: ClassVar[str] = "teacher"
    depth: int = param(default=1, doc="hidden layers of the teacher", validator=positive)
    width: int = param(default=100, doc="width of the teacher", validator=positive)
    activation: Literal["relu", "swish", "tanh"] = param(default="relu", doc="teacher's activation")
    teacher_seed: int = param(default=0, doc="seed of the teacher's weights", validator=non_negative)

    def label(self, split, x):
        from ..architectures.fc import FC

        net = FC(depth=self.depth, activation=self.activation).build(
            self.width, (self.d,), torch.Generator().manual_seed(self.teacher_seed))
        with torch.no_grad():
            f = net(torch.from_numpy(x)).numpy()
        return np.where(f >= 0, 1.0, -1.0)

    def describe(self):
        return f"fc teacher (depth {self.depth}, width {self.width}, {self.activation}), Gaussian x in d = {self.d}"


@dlphase.hookimpl
def register_datasets(register):
    for cls in (Stripe, RandomLabels, Teacher):
        register(cls)
