"""Kernel methods as dynamics: the run's predictor becomes f(x) = sum_mu a_mu K(x, x_mu) (+ b).

- ``kernel``: the flow of the same loss in function space, df/dt = -K dL/df with dL/df_mu = l'(y_mu f_mu) y_mu / P
  (i.e. da/dt = -dL/df, a starting at 0). This is the flow a net follows in the lazy limit with K = Theta_0,
  in the same units of time as ``gradient_flow`` (which minimises L / alpha^2 with f = alpha (f~ - f~0)),
  and it comes close to a kernel SVM at long times (the reference's kernel method). Adaptive Euler steps by
  the reference's rule; it stops when every y f >= 1.
- ``svm``: scikit-learn's SVC on the precomputed kernel (parameter C); f is its decision function.
- ``ridge``: scikit-learn's KernelRidge on the precomputed kernel, regressing the labels +-1.

The kernel (kernels.py) is ``ntk_init``, ``ntk_final`` (the run's net is first trained by ``net_dynamics``),
``ntk_infinite``, ``laplace`` or ``gaussian``. For svm and ridge the status ``converged`` says the solver
finished; the ``converged`` variable of ``errors`` says whether every margin y f >= 1.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar, Literal

import attrs
import numpy as np
import torch

import dlphase
from dlphase import Dynamics, Loss, TrainResult, param
from dlphase.specs import positive

from .batched import loss_coefficients
from .integrator.controller import reference
from ..observables.first_layer import compress, first_layer_of, scales
from .kernels import KernelFunction, KernelName, KernelPredictor
from ..losses import MSE, Hinge, SoftHinge
from .stopping import common_rules, stops


def _optional_positive(instance, attribute, value):
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


class CompressedKernel:
    """K((x_par, x_perp / Lambda), (x'_par, x'_perp / Lambda)): a kernel of the inputs compressed by ``lam``
    across the informative ``basis``."""

    def __init__(self, inner: KernelFunction, basis: torch.Tensor, lam: float):
        self.inner, self.basis, self.lam = inner, basis, lam

    def __call__(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(compress(x1, self.basis, self.lam),
                          None if x2 is None else compress(x2, self.basis, self.lam))


@attrs.frozen(kw_only=True)
class KernelMethod(Dynamics):
    """The kernel and, for ``ntk_final``, how the net is trained first."""

    records_checkpoints: ClassVar[bool] = False

    kernel: KernelName = param(default="ntk_init", doc="ntk_init, ntk_final, ntk_infinite, laplace or gaussian")
    bandwidth: float | None = param(default=None, doc="sigma of laplace and gaussian (default: the median "
                                                      "distance between training points)",
                                    validator=_optional_positive)
    quadrature: int = param(default=24, doc="ntk_infinite for swish and tanh: Gauss-Legendre nodes per half-line",
                            validator=positive)
    net_dynamics: Dynamics | None = param(default=None, doc="ntk_final and compression = 'trained': how the net is "
                                                            "trained first (default: gradient_flow, soft hinge)")
    compression: float | Literal["trained"] | None = param(
        default=None, doc="apply the kernel to (x_par, x_perp / Lambda), the inputs compressed across the dataset's "
                          "informative directions: Lambda given, or 'trained': the first_layer Lambda of this grid "
                          "point's net trained by net_dynamics (fc, mean_field)")

    def __attrs_post_init__(self):
        if self.net_dynamics is not None and self.kernel != "ntk_final" and self.compression != "trained":
            raise ValueError(f"net_dynamics trains the net for kernel = 'ntk_final' or compression = 'trained', not "
                             f"for kernel {self.kernel!r}; drop it")
        if isinstance(self.compression, (int, float)) and not (self.compression > 0
                                                                and math.isfinite(self.compression)):
            raise ValueError(f"compression = {self.compression!r} must be a finite Lambda > 0, or 'trained'")
        if self.compression == "trained" and self.kernel == "ntk_final":
            raise ValueError("compression = 'trained' trains the net to measure Lambda, and ntk_final would then be "
                             "the trained net's NTK on compressed inputs; use ntk_init or ntk_infinite")
        if self.bandwidth is not None and self.kernel not in ("laplace", "gaussian"):
            raise ValueError(f"bandwidth is a parameter of the laplace and gaussian kernels, not {self.kernel!r}; "
                             f"drop it")
        if isinstance(self.net_dynamics, KernelMethod):
            raise ValueError("net_dynamics must train the net (gradient_flow, gd, sgd), not a kernel method")

    def check(self, architecture, dataset):
        if self.kernel == "ntk_infinite" and not architecture.offers("infinite_kernels"):
            raise ValueError(f"kernel = 'ntk_infinite' needs an architecture with an infinite-width kernel (fc), "
                             f"not {architecture.name!r}; use ntk_init or ntk_final")

    def prepare(self, model, data) -> tuple[KernelFunction, str]:
        """Train the net first if the kernel or the compression needs it; the kernel function and a note on the
        net's training and the compression."""
        note = ""
        if self.kernel == "ntk_final" or self.compression == "trained":
            from .gradient_flow import GradientFlow

            trainer = self.net_dynamics or GradientFlow(loss=SoftHinge())
            res = trainer.train(model, data)
            note = f"net trained by {trainer.name}: {res.status}, {res.steps} steps, t = {res.t:.4g}; "
            if res.status in ("diverged", "failed"):
                raise dlphase.DataError(f"the net for {self.kernel if self.kernel == 'ntk_final' else 'Lambda'} "
                                        f"{res.status}: {res.message}")
        if self.compression is None:
            return KernelFunction(self.kernel, model, data.x_train, self.bandwidth, self.quadrature), note
        if data.informative is None:
            raise dlphase.DataError("compression needs the dataset's informative directions, and this dataset "
                                    "declares none (the stripe model does)")
        basis = data.informative
        if self.compression == "trained":
            lam = scales(*first_layer_of(model.net), basis)["lambda"]
            if not (math.isfinite(lam) and lam > 0):
                raise dlphase.DataError(f"the trained net's Lambda = {lam} cannot compress the inputs")
        else:
            lam = float(self.compression)
        note += f"inputs compressed by Lambda = {lam:.6g}; "
        inner = KernelFunction(self.kernel, model, compress(data.x_train, basis, lam), self.bandwidth,
                               self.quadrature)
        return CompressedKernel(inner, basis, lam), note

    def fit(self, k_train: torch.Tensor, y: torch.Tensor, started: float) -> tuple[torch.Tensor, float, TrainResult]:
        """Coefficients a (P,), intercept b and the result, from K on the training set."""
        raise NotImplementedError

    def train(self, model, data, monitor=None):
        started = time.perf_counter()
        kernel, note = self.prepare(model, data)
        k_train = kernel(data.x_train)
        a, b, result = self.fit(k_train, data.y_train, started)
        model.predictor = KernelPredictor(kernel, data.x_train, a, b, k_train=k_train)
        result.message = (note + result.message).strip("; ")
        result.wall_seconds = time.perf_counter() - started
        return result


@attrs.frozen(kw_only=True)
class KernelFlow(KernelMethod):
    """f = K a trained by the loss's flow in function space (the lazy net's flow with K = Theta_0)."""

    name: ClassVar[str] = "kernel"
    steps_name: ClassVar[str] = "trial steps"
    loss: Loss = param(default=attrs.Factory(SoftHinge), doc="the loss l(y f): a name or {name = ..., ...}")
    max_steps: int = param(default=1_000_000, doc="budget on trial steps", validator=positive)
    max_time: float = param(default=math.inf, doc="flow-time budget", validator=positive)
    max_seconds: float = param(default=math.inf, doc="wall-time budget, in seconds", validator=positive)
    max_dgrad: float = param(default=1e-4, doc="accept a step only if |g'-g|^2/(|g||g'|) < max_dgrad",
                             validator=positive)
    max_dout: float = param(default=0.1, doc="accept a step only if no f(x_mu) moves by max_dout or more",
                            validator=positive)
    dt: float = param(default=1.0, doc="initial time step", validator=positive)
    grow: float = param(default=1.1, doc="dt *= grow after an easy step (both tests below half their limits)",
                        validator=positive)
    shrink: float = param(default=10.0, doc="dt /= shrink after a rejected step", validator=positive)

    def fit(self, k_train, y, started):
        a = torch.zeros(len(y), dtype=k_train.dtype, device=k_train.device)
        f = torch.zeros_like(a)
        one = torch.ones(1, dtype=a.dtype, device=a.device)

        def velocity(f):
            """dL/df = l'(y f) y / P (da/dt = -dL/df), as every engine computes it (alpha = 1)."""
            return loss_coefficients(self.loss, (y * f)[None], y, one)[0][0]

        g = velocity(f)
        t, dt, steps, trials = 0.0, self.dt, 0, 0
        while True:
            rules = common_rules(self, torch.isfinite(f).all()[None], (y * f)[None], trials, t,
                                 time.perf_counter() - started, [None])
            stopped = stops(rules)
            if stopped:
                _, status, message = stopped[0]
                break
            if not bool(g.any()):
                status, message = "converged", "the loss's gradient vanished"
                break
            trials += 1
            f_new = f - dt * (k_train @ g)
            g_new = velocity(f_new)
            dout = float((f_new - f).abs().max())
            dgrad = float((g_new - g).square().sum() / (g.norm() * g_new.norm()).clamp_min(1e-300))
            ok = dgrad < self.max_dgrad and dout < self.max_dout
            easy = ok and dgrad < self.max_dgrad / 2 and dout < self.max_dout / 2
            if ok:
                a = a - dt * g
                f, g, t, steps = f_new, g_new, t + dt, steps + 1
            dt = reference(dt, ok, easy, self.grow, self.shrink)
        return a, 0.0, TrainResult(status=status, message=message, steps=steps, rejected=trials - steps, t=t)


@attrs.frozen(kw_only=True)
class SVM(KernelMethod):
    """A soft-margin SVM on the precomputed kernel (scikit-learn's SVC); f is its decision function."""

    name: ClassVar[str] = "svm"
    loss: Loss = param(default=attrs.Factory(Hinge),
                       doc="the loss recorded as train_loss (the SVM minimises the hinge)")
    C: float = param(default=1e4, doc="inverse regularisation of the soft-margin SVM (large C: hard margin)",
                     validator=positive)

    def fit(self, k_train, y, started):
        from sklearn.svm import SVC

        svc = SVC(C=self.C, kernel="precomputed", tol=1e-6, max_iter=-1)
        svc.fit(k_train.cpu().numpy().astype(np.float64), y.cpu().numpy())
        a = np.zeros(len(y))
        a[svc.support_] = svc.dual_coef_[0]
        # sklearn orders the classes (-1, +1), so its decision function is positive for +1
        a_t = torch.as_tensor(a, dtype=k_train.dtype, device=k_train.device)
        return a_t, float(svc.intercept_[0]), TrainResult(
            status="converged", message=f"SVC: {len(svc.support_)} support vectors")


@attrs.frozen(kw_only=True)
class Ridge(KernelMethod):
    """Kernel ridge regression of the labels +-1 on the precomputed kernel (scikit-learn's KernelRidge)."""

    name: ClassVar[str] = "ridge"
    loss: Loss = param(default=attrs.Factory(MSE), doc="the loss recorded as train_loss (ridge minimises the mse)")
    ridge: float = param(default=1e-6, doc="added to the diagonal of K (scikit-learn's alpha)", validator=positive)

    def fit(self, k_train, y, started):
        from sklearn.kernel_ridge import KernelRidge

        kr = KernelRidge(alpha=self.ridge, kernel="precomputed")
        kr.fit(k_train.cpu().numpy().astype(np.float64), y.cpu().numpy())
        a = torch.as_tensor(np.ravel(kr.dual_coef_), dtype=k_train.dtype, device=k_train.device)
        return a, 0.0, TrainResult(status="converged", message="KernelRidge solved")


@dlphase.hookimpl
def register_dynamics(register):
    register(KernelFlow)
    register(SVM)
    register(Ridge)
