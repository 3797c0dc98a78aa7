"""The observable ``ntk``: the empirical NTK of f~ on the kernel set, at initialisation and at the end.

Theta(x, x') = grad_theta f~(x) . grad_theta f~(x') over all parameters (the kernel of f is alpha^2
times it). The lazy / feature crossover of the phase diagram is where the change ratio
|Theta_end - Theta_0|_F / |Theta_0|_F crosses 1 (SCIENCE.md section 4). The kernel set (the dataset's
``n_kernel`` points) is fixed by the data seed and disjoint from the training set.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import torch

import dlphase
from dlphase import Observable, Variable, param
from dlphase.ensemble import ensemble_of
from dlphase.specs import positive


def gram(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Theta of ``net`` on x, (n, n), through the architecture's fastest batched kernel."""
    ens = ensemble_of([net])
    return ens.ntk(ens.stack([net]), x)[0]


@attrs.frozen(kw_only=True)
class NTK(Observable):
    """Theta_0 and Theta_end on the kernel set: their change ratio and top eigenvalues, optionally whole."""

    name: ClassVar[str] = "ntk"
    variables: ClassVar = {
        "ntk_change": Variable(long_name="|Theta_end - Theta_0|_F / |Theta_0|_F on the kernel set"),
        "ntk_eig_init": Variable(long_name="top eigenvalues of Theta_0 (f~) on the kernel set", dims=("eig",)),
        "ntk_eig_end": Variable(long_name="top eigenvalues of Theta_end (f~) on the kernel set", dims=("eig",)),
        "ntk_gram_init": Variable(long_name="Theta_0 (f~) on the kernel set", dims=("kernel_i", "kernel_j")),
        "ntk_gram_end": Variable(long_name="Theta_end (f~) on the kernel set", dims=("kernel_i", "kernel_j")),
    }
    top: int = param(default=20, doc="how many of the largest eigenvalues to store", validator=positive)
    store_gram: bool = param(default=False, doc="store the whole Gram matrices (n_kernel^2 numbers each per run)")

    def check(self, dataset) -> None:
        if getattr(dataset, "n_kernel", None) == 0:
            raise ValueError("ntk needs kernel points but dataset.n_kernel = 0; set dataset.n_kernel (e.g. 500)")

    def coords(self):
        return {"eig": np.arange(1, self.top + 1)}

    def measure(self, run):
        x = run.data.x_kernel
        if x is None or len(x) == 0:
            raise dlphase.DataError("ntk needs kernel points but the dataset served none; set dataset.n_kernel")
        p = next(run.model.net.parameters())
        xk = torch.as_tensor(np.asarray(x), dtype=p.dtype, device=p.device)
        with torch.no_grad():
            theta0 = gram(run.model.net0, xk).double()
            theta = gram(run.model.net, xk).double()
        out = {"ntk_change": float(torch.linalg.norm(theta - theta0) / torch.linalg.norm(theta0))}
        for key, k in (("init", theta0), ("end", theta)):
            eig = torch.linalg.eigvalsh(k).flip(0).cpu().numpy()[:self.top]
            out[f"ntk_eig_{key}"] = np.pad(eig, (0, self.top - len(eig)), constant_values=np.nan)
            if self.store_gram:
                out[f"ntk_gram_{key}"] = k.cpu().numpy()
        return out


@dlphase.hookimpl
def register_observables(register):
    register(NTK)
