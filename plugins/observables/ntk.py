"""The observables ``ntk`` (the empirical NTK of f~ on the kernel set at initialisation, at the end and
optionally along the flow) and ``ntk_kpca`` (its kernel PCA against the labels, kernel_pca.py).

Theta(x, x') = grad_theta f~(x) . grad_theta f~(x') over all parameters (the kernel of f is alpha^2
times it). The lazy / feature crossover of the phase diagram is where the change ratio
|Theta_end - Theta_0|_F / |Theta_0|_F crosses 1. The kernel set (the dataset's
``n_kernel`` points) is fixed by the data seed and disjoint from the training set.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import numpy as np
import torch

import dlphase
from dlphase import Observable, Variable, param
from dlphase.ensemble_net import ensemble_of, ntk_of
from dlphase.specs import positive

from .kernel_pca import kernel_pca


def gram(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Theta of ``net`` on x, (n, n) (the one name ``grams`` calls, so tests can count the computations)."""
    return ntk_of(net, x)


def kernel_inputs(run) -> torch.Tensor:
    """The kernel-set inputs as a tensor of the run's dtype and device."""
    x = run.data.x_kernel
    if x is None or len(x) == 0:
        raise dlphase.DataError("the NTK observables need kernel points but the dataset served none; "
                                "set dataset.n_kernel")
    p = next(run.model.net.parameters())
    return torch.as_tensor(np.asarray(x), dtype=p.dtype, device=p.device)


def grams(run) -> dict[str, torch.Tensor]:
    """Theta_0 and Theta_end on the kernel set (float64), computed once per run and shared by the observables
    ``ntk`` and ``ntk_kpca`` through ``run.cache``."""
    if "ntk_grams" not in run.cache:
        xk = kernel_inputs(run)
        run.cache["ntk_grams"] = {"init": gram(run.model.net0, xk).double(), "end": gram(run.model.net, xk).double()}
    return run.cache["ntk_grams"]


def top_eigenvalues(k: torch.Tensor, top: int) -> np.ndarray:
    eig = torch.linalg.eigvalsh(k).flip(0).cpu().numpy()[:top]
    return np.pad(eig, (0, top - len(eig)), constant_values=np.nan)


def _check_kernel_points(dataset, name):
    if getattr(dataset, "n_kernel", None) == 0:
        raise ValueError(f"{name} needs kernel points but dataset.n_kernel = 0; set dataset.n_kernel (e.g. 500)")


@attrs.frozen(kw_only=True)
class NTK(Observable):
    """Theta_0 and Theta_end on the kernel set: their change ratio and top eigenvalues, optionally whole,
    and optionally along the flow at the checkpoints of the ``trajectory`` observable."""

    name: ClassVar[str] = "ntk"
    variables: ClassVar = {
        "ntk_change": Variable(long_name="|Theta_end - Theta_0|_F / |Theta_0|_F on the kernel set"),
        "ntk_eig_init": Variable(long_name="top eigenvalues of Theta_0 (f~) on the kernel set", dims=("eig",)),
        "ntk_eig_end": Variable(long_name="top eigenvalues of Theta_end (f~) on the kernel set", dims=("eig",)),
        "ntk_gram_init": Variable(long_name="Theta_0 (f~) on the kernel set", dims=("kernel_i", "kernel_j")),
        "ntk_gram_end": Variable(long_name="Theta_end (f~) on the kernel set", dims=("kernel_i", "kernel_j")),
        "ntk_change_traj": Variable(long_name="|Theta_t - Theta_0|_F / |Theta_0|_F along the flow", dims=("time",)),
        "ntk_eig_traj": Variable(long_name="top eigenvalues of Theta_t along the flow", dims=("time", "eig")),
    }
    top: int = param(default=20, doc="how many of the largest eigenvalues to store", validator=positive)
    store_gram: bool = param(default=False, doc="store the whole Gram matrices (n_kernel^2 numbers each per run)")
    along_trajectory: bool = param(default=False, doc="also measure Theta at the checkpoints of the trajectory "
                                                      "observable (ntk_change_traj, ntk_eig_traj)")

    def check(self, dataset) -> None:
        _check_kernel_points(dataset, "ntk")

    def needs_snapshots(self) -> bool:
        return self.along_trajectory

    def coords(self):
        return {"eig": np.arange(1, self.top + 1)}

    def measure(self, run):
        g = grams(run)
        theta0, theta = g["init"], g["end"]
        out = {"ntk_change": float(torch.linalg.norm(theta - theta0) / torch.linalg.norm(theta0))}
        for key, k in (("init", theta0), ("end", theta)):
            out[f"ntk_eig_{key}"] = top_eigenvalues(k, self.top)
            if self.store_gram:
                out[f"ntk_gram_{key}"] = k.cpu().numpy()
        if self.along_trajectory:
            out.update(self.along(run, theta0))
        return out

    def along(self, run, theta0: torch.Tensor) -> dict[str, np.ndarray]:
        """Theta_t at every recorded checkpoint, from the parameters the monitor kept, members of one batched
        NTK computation in groups that hold about 2^25 Gram entries."""
        monitor = run.monitor
        n_times = len(monitor.times)
        change = np.full(n_times, np.nan)
        eig = np.full((n_times, self.top), np.nan)
        snaps = monitor.snapshots
        if snaps:
            xk = kernel_inputs(run)
            ens = ensemble_of([run.model.net])
            size = max(1, 2 ** 25 // len(xk) ** 2)
            norm0 = torch.linalg.norm(theta0)
            for i in range(0, len(snaps), size):
                group = snaps[i:i + size]
                params = [torch.stack(vs) for vs in zip(*(s[2] for s in group))]
                with torch.no_grad():
                    thetas = ens.ntk(params, xk).double()
                for (first, end, _), th in zip(group, thetas):
                    change[first:end] = float(torch.linalg.norm(th - theta0) / norm0)
                    eig[first:end] = top_eigenvalues(th, self.top)
        return {"ntk_change_traj": change, "ntk_eig_traj": eig}


@attrs.frozen(kw_only=True)
class NTKKernelPCA(Observable):
    """Kernel PCA of Theta_0 and Theta_end on the kernel set against its labels: the fraction of |y|^2 on the
    top k eigenvectors, each eigenvector's projection and its mutual information with the labels (Fig. 11)."""

    name: ClassVar[str] = "ntk_kpca"
    schema: ClassVar = {
        f"kpca_{what}_{key}": Variable(long_name=f"{doc} ({when})", dims=(dim,), units=units)
        for key, when in (("init", "Theta_0"), ("end", "Theta_end"))
        for what, doc, dim, units in (
            ("fraction", "fraction of |y|^2 on the top k kernel PCA eigenvectors", "kpca_k", "1"),
            ("projection", "(phi_lambda . y)^2 / |y|^2 of each top eigenvector", "kpca_eig", "1"),
            ("mi", "mutual information between an eigenvector's components and the labels", "kpca_eig", "nat"))
    }
    k: tuple[int, ...] = param(default=(1, 2, 5, 10, 20, 50, 100, 200, 500),
                               doc="numbers of top eigenvectors for the fraction of |y|^2", validator=None)
    top: int = param(default=10, doc="eigenvectors whose projection and mutual information are stored",
                     validator=positive)
    neighbors: int = param(default=3, doc="neighbours of the mutual information estimator (the paper's Fig. 11: 5)",
                           validator=positive)
    mi_unit: Literal["nat", "bit"] = param(default="nat", doc="unit of the mutual information (the paper's Fig. 11: "
                                                              "bit)")

    @property
    def variables(self):
        """The schema, with the mutual information in ``mi_unit``."""
        return {key: attrs.evolve(v, units=self.mi_unit) if key.startswith("kpca_mi") else v
                for key, v in self.schema.items()}

    @k.validator
    def _check_k(self, attribute, value):
        if not value or any(v < 1 for v in value) or len(set(value)) != len(value):
            raise ValueError(f"k must list distinct numbers >= 1, got {list(value)}")

    def check(self, dataset) -> None:
        _check_kernel_points(dataset, "ntk_kpca")

    def coords(self):
        return {"kpca_k": np.asarray(self.k), "kpca_eig": np.arange(1, self.top + 1)}

    def measure(self, run):
        g = grams(run)
        y = np.asarray(run.data.y_kernel, dtype=np.float64)
        out = {}
        for key in ("init", "end"):
            res = kernel_pca(g[key].cpu().numpy(), y, self.k, self.top, self.neighbors)
            out[f"kpca_fraction_{key}"] = res["fraction"]
            out[f"kpca_projection_{key}"] = res["projection"]
            out[f"kpca_mi_{key}"] = res["mutual_information"] / (math.log(2) if self.mi_unit == "bit" else 1.0)
        return out


@dlphase.hookimpl
def register_observables(register):
    register(NTK)
    register(NTKKernelPCA)
