"""The six kinds of plugin, as documented abstract interfaces.

Every implementation is a frozen, keyword-only attrs class whose fields are its parameters (what
the spec writes beside ``name``), and whose ``name`` class attribute is the name the spec uses.
The instance *is* the validated spec of that component, so it is hashable and picklable.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import attrs
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import xarray as xr

    from .model import AlphaModel
    from .results import TrainResult


@attrs.frozen(kw_only=True, eq=False)
class Data:
    """Arrays of one dataset at one P: inputs ``x_*`` (n, ...) and labels ``y_*`` = +-1 (n,).

    The kernel set (``x_kernel``, ``y_kernel``) is a fixed set of points, disjoint from the training
    set, for kernel observables. The validation set (``x_val``, ``y_val``), disjoint from the others,
    serves early stopping. ``classes_*`` keeps the original class of each point (multi-class
    labels) where one exists; ``attrs`` holds provenance for the cube's attributes. ``informative``
    (k, d), orthonormal rows, spans the input directions the labels depend on, where the dataset knows
    them (the stripe model: x_1); the ``first_layer`` observable and compressed kernels use it.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_kernel: np.ndarray | None = None
    y_kernel: np.ndarray | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    classes_train: np.ndarray | None = None
    classes_test: np.ndarray | None = None
    classes_kernel: np.ndarray | None = None
    informative: np.ndarray | None = None
    attrs: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self):
        for split in ("train", "test", "kernel", "val"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x is None and y is None:
                continue
            if x is None or y is None:
                raise ValueError(f"give both x_{split} and y_{split}, or neither")
            if x.shape[1:] != self.x_train.shape[1:]:
                raise ValueError(f"x_{split} has point shape {x.shape[1:]}, x_train {self.x_train.shape[1:]}")
            if len(x) != len(y):
                raise ValueError(f"x_{split} has {len(x)} points but y_{split} has {len(y)}")
            if not np.all(np.abs(y) == 1):
                raise ValueError(f"y_{split} must hold only +1 and -1")
        if self.informative is not None:
            u = np.asarray(self.informative, dtype=np.float64)
            d = int(np.prod(self.x_train.shape[1:]))
            if u.ndim != 2 or u.shape[1] != d or not 0 < len(u) < d:
                raise ValueError(f"informative must be (k, {d}) with 0 < k < {d}, got shape {u.shape}")
            if not np.allclose(u @ u.T, np.eye(len(u)), atol=1e-8):
                raise ValueError("the rows of informative must be orthonormal")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def tensors(self, dtype: "torch.dtype", device: "torch.device | str") -> "TorchData":
        """The same arrays as torch tensors of ``dtype`` on ``device``."""
        import torch

        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

        return TorchData(x_train=t(self.x_train), y_train=t(self.y_train),
                         x_test=t(self.x_test), y_test=t(self.y_test),
                         x_val=None if self.x_val is None else t(self.x_val),
                         y_val=None if self.y_val is None else t(self.y_val),
                         informative=None if self.informative is None else t(self.informative))


@attrs.frozen(kw_only=True, eq=False)
class TorchData:
    """:class:`Data` as tensors on the run's device and dtype."""

    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    x_val: "torch.Tensor | None" = None
    y_val: "torch.Tensor | None" = None
    informative: "torch.Tensor | None" = None


class Component(abc.ABC):
    """Common base: ``name`` is the spec name; the attrs fields are the parameters."""

    name: ClassVar[str]
    kind: ClassVar[str]


class Dataset(Component):
    """Serves training and test points with +-1 labels, deterministically given its parameters."""

    kind = "dataset"
    #: whether ``load`` results may be kept in the on-disk data cache (cheap synthetic data: no)
    cacheable: ClassVar[bool] = True

    @abc.abstractmethod
    def load(self, P: int) -> Data:
        """P training points and the test set. The test set must not depend on P."""

    def load_validation(self, P: int, n_validation: int) -> Data:
        """``load(P)`` plus ``n_validation`` validation points (``x_val``, ``y_val``) for early stopping.

        This default asks ``load`` for P + n_validation points and holds out n_validation of them,
        balanced between the labels (a fixed draw), so preprocessing fitted on the training points also
        saw the validation inputs. Datasets that fit maps on the training split override it (image data).
        """
        full = self.load(P + n_validation)
        rng = np.random.default_rng([P, n_validation, 3])
        y = np.asarray(full.y_train)
        pos, neg = (rng.permutation(np.flatnonzero(y == s)) for s in (1, -1))
        n_pos = min(len(pos), max(n_validation - len(neg), n_validation // 2))
        held = np.concatenate([pos[:n_pos], neg[:n_validation - n_pos]])
        keep = np.setdiff1d(np.arange(len(y)), held)

        def pick(a, i):
            return None if a is None else np.asarray(a)[i]

        return attrs.evolve(full, x_train=pick(full.x_train, keep), y_train=y[keep],
                            classes_train=pick(full.classes_train, keep),
                            x_val=pick(full.x_train, held), y_val=y[held])

    def cache_token(self) -> str:
        """What, besides the parameters, identifies the data (e.g. the source files' sizes and dates)."""
        return ""

    def max_train(self) -> int | None:
        """The largest P this dataset can serve (checked when a spec is loaded); None if unbounded."""
        return None

    def for_seed(self, seed: int) -> "Dataset":
        """The dataset that the run of initialisation seed ``seed`` trains on: ``self`` (every seed trains on one
        training set, the default), or a dataset whose training points are drawn for that seed, so that averages
        over seeds also average over training sets. Its test and kernel sets must not depend on the seed. Runs
        whose seeds train on different sets do not share an ensemble."""
        return self


def per_seed_training(dataset: Dataset) -> bool:
    """Whether the runs of different seeds train on different training sets (:meth:`Dataset.for_seed`)."""
    return dataset.for_seed(0) != dataset.for_seed(1)


class Architecture(Component):
    """Builds the un-rescaled net f~_theta: inputs (n, ...) -> outputs (n,).

    Any ``torch.nn.Module`` will do. A module derived from :class:`dlphase.Net` may also offer fast paths, each
    with a default that core falls back on: a batched ensemble class with hand-written forward, backward and
    NTK (``ensemble_class``), closed-form curvature for the Hessian observable (``curvature``), and the
    infinite-width kernels (``infinite_kernels``, also on the architecture itself, below).
    """

    kind = "architecture"

    @abc.abstractmethod
    def build(self, h: int, input_shape: tuple[int, ...], generator: "torch.Generator") -> "torch.nn.Module":
        """A module of width ``h`` (float64, CPU) whose parameters are drawn with ``generator``."""

    def check(self, dataset: "Dataset") -> None:
        """Raise ValueError if this architecture cannot take the dataset's points (checked with the spec)."""

    def alpha(self, alpha_tilde: float, h: int) -> float:
        """alpha of f = alpha (f~ - f~0) at ``alpha_tilde``. The default, alpha_tilde / sqrt(h), suits a net
        whose read-out is NTK-scaled (1 / sqrt(h)): f is then alpha_tilde / h times the sum over the last layer's
        units, so one alpha_tilde means one model across architectures. A net with another read-out overrides
        this to keep that meaning (mean_field, whose read-out is 1 / h, uses alpha = alpha_tilde)."""
        from .model import alpha_of

        return alpha_of(alpha_tilde, h)

    def infinite_kernels(self, x1: "torch.Tensor", x2: "torch.Tensor | None" = None,
                         quadrature: int = 24) -> "dict[str, torch.Tensor] | None":
        """The h -> infinity NNGP and NTK of f~ between the rows of x1 and x2, {"nngp": ..., "ntk": ...}, for
        specs that ask for them before any net exists (the kernel_methods dynamics); None (the default): none is
        known. Nets offer the same through :meth:`dlphase.Net.infinite_kernels`."""
        return None

    def offers(self, name: str) -> bool:
        """Whether this architecture's class overrides the optional method ``name``."""
        return getattr(type(self), name) is not getattr(Architecture, name)


class Loss(Component):
    """A per-sample loss l(m) of the margin m = y f; the training loss is L = mean_mu l(y_mu f_mu)."""

    kind = "loss"
    #: the margin at which l' jumps (1 for the plain hinge), if any: integrators treat crossings there
    kink: ClassVar[float | None] = None

    @abc.abstractmethod
    def __call__(self, margin: "torch.Tensor") -> "torch.Tensor":
        """l evaluated elementwise."""


class Dynamics(Component):
    """A training algorithm: moves the parameters of an :class:`AlphaModel` to minimise L / alpha^2.

    Everything the sweep asks of a dynamics is here. It must implement :meth:`train`; it may declare an
    ``early_stopping`` field (an :class:`dlphase.EarlyStopping` or None) to offer early stopping, and
    override :meth:`train_ensemble` with a batched path (setting ``batched``).
    """

    kind = "dynamics"
    loss: Loss
    #: whether :meth:`train_ensemble` trains its members as one batched computation; the sweep then trains the
    #: runs that share h and P together (``run.ensemble``). False: one run at a time.
    batched: ClassVar[bool] = False
    #: whether :meth:`train` feeds its ``monitor`` (the ``trajectory`` observable needs it)
    records_checkpoints: ClassVar[bool] = True
    #: early stopping on held-out validation points, or None. A dynamics that offers it declares an attrs field of
    #: this name; the run then holds ``n_validation`` points out of the training data (``data.x_val``).
    early_stopping: ClassVar[Any] = None

    def check(self, architecture: "Architecture", dataset: "Dataset") -> None:
        """Raise ValueError if this dynamics cannot train the architecture on the dataset (checked with the spec)."""

    @abc.abstractmethod
    def train(self, model: "AlphaModel", data: TorchData, monitor=None) -> "TrainResult":
        """Train ``model`` in place on ``data`` (f = ``model(x)`` = alpha (f~ - f~0); the objective is
        mean l(y f) / alpha^2) and say why and when it stopped: a :class:`dlphase.TrainResult` with status
        ``converged`` (every y f >= 1), ``early_stopped``, ``budget`` or ``diverged``, the steps and the time t.

        Callbacks: ``monitor`` (:class:`dlphase.monitor.Monitor`, or None) wants ``start(model, data)``
        before the first step and ``observe(model, data, t, f_train, loss)`` at every accepted state (it
        records only when a checkpoint is due). With ``early_stopping``, ``tracker =
        self.early_stopping.watch(model, data, self.loss)``; ``tracker.observe(model, t, steps)`` at every
        accepted state says when to stop, and ``tracker.restore(model, steps, t)`` then gives the steps and t
        of the state the model is left in."""

    def train_ensemble(self, models: "list[AlphaModel]", data: TorchData, monitors=None) -> "list[TrainResult]":
        """Train ``models`` (one architecture and width, each with its own alpha and seed) on ``data``; their
        results in order. This default trains them one by one with :meth:`train`."""
        monitors = list(monitors) if monitors is not None else [None] * len(models)
        return [self.train(m, data, mon) for m, mon in zip(models, monitors)]


@attrs.frozen(kw_only=True)
class Variable:
    """Schema of one output variable of an observable.

    ``dims`` are the observable's own dims (e.g. ``("test",)``); ``over`` lists the grid dims the
    values depend on (``None``: all of h, alpha_tilde, P, seed).
    """

    long_name: str
    units: str = "1"
    dims: tuple[str, ...] = ()
    over: tuple[str, ...] | None = None


class Observable(Component):
    """Measures a trained run; returns named arrays that become variables of the cube."""

    kind = "observable"
    variables: ClassVar[Mapping[str, Variable]] = {}

    def coords(self) -> Mapping[str, Any]:
        """Coordinates of this observable's own dims, where they have values (``time``, say)."""
        return {}

    def check(self, dataset: "Dataset") -> None:
        """Raise ValueError if this observable cannot measure runs on the dataset (checked with the spec)."""

    def check_architecture(self, architecture: "Architecture") -> None:
        """Raise ValueError if this observable cannot measure the architecture's nets (checked with the spec)."""

    def checkpoints(self) -> "np.ndarray | None":
        """The flow times at which the dynamics' monitor records the run (the ``trajectory`` observable), or None;
        one observable of a spec at most sets them."""
        return None

    def needs_snapshots(self) -> bool:
        """Whether it measures the net at every trajectory checkpoint (the monitor then keeps the parameters
        there, in ``RunState.monitor.snapshots``); the spec must then ask for the ``trajectory`` observable."""
        return False

    @abc.abstractmethod
    def measure(self, run: "RunState") -> Mapping[str, Any]:
        """Values for (a subset of) ``variables``: scalars or arrays shaped by each one's ``dims``."""


@attrs.frozen(kw_only=True, eq=False)
class RunState:
    """What an observable sees at the end of a run."""

    model: "AlphaModel"
    data: Data
    tensors: TorchData
    result: "TrainResult"
    loss: Loss
    point: Mapping[str, Any]
    monitor: Any = None  # the run's dlphase.monitor.Monitor, when an observable asked for checkpoints
    #: shared by the observables of one run, for results that several of them use (the NTK Gram matrices)
    cache: dict = attrs.field(factory=dict)


class Analysis(Component):
    """Turns a result cube into a labelled result (xarray in, xarray out), and draws it with holoviews.

    ``requires`` names the cube variables it needs; :meth:`applies` says why a cube does not suit it, and
    ``dlphase report`` runs every analysis that applies. The attrs fields are its options (``--over seed``).
    """

    kind = "analysis"
    #: cube variables the analysis needs
    requires: ClassVar[tuple[str, ...]] = ()

    def applies(self, cube: "xr.Dataset") -> str | None:
        """None when the analysis can run on ``cube``, else why not (one line, naming what is missing)."""
        missing = [v for v in self.requires if v not in cube]
        return f"the cube has no {', '.join(missing)}" if missing else None

    @abc.abstractmethod
    def compute(self, cube: "xr.Dataset") -> "xr.Dataset":
        """The result, with ``long_name`` on every variable; fitted numbers go in variables, not only attrs."""

    def plot(self, result: "xr.Dataset", backend: str = "bokeh"):
        """A holoviews object drawing ``result`` (``backend``: bokeh or matplotlib)."""
        raise NotImplementedError(f"analysis {self.name!r} has no plot")

    def summary(self, result: "xr.Dataset") -> list[str]:
        """Lines of text for a reader (the fitted exponents, what was left out); by default none."""
        return []

