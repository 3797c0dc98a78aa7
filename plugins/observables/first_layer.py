"""The ``first_layer`` observable: how a net's first-layer weights split between the informative input
directions and the others, and the compression of the inputs that this split amounts to.

For a net whose first layer has weight vectors W_i (one per neuron, i = 1..h) on d input coordinates, and
whose neuron i sends its output on with weights of size v_i (|W2_i| for one hidden layer), let U (k x d,
orthonormal rows) span the k = d_par informative directions. The characteristic scales are the weighted
root-mean-square components per direction,

    W_par^2  = sum_i c_i |U W_i|^2 / d_par,        W_perp^2 = sum_i c_i |W_i - U^T U W_i|^2 / d_perp,

with c_i = v_i / sum_j v_j: each neuron pondered by its read-out weight, as in the paper's Fig. 10, so that
neurons that barely reach the output barely count. At initialisation (W_i ~ N(0, I_d)) both are 1 up to
O(h^-1/2). Lambda = W_par / W_perp: a first layer with Lambda > 1 sees (x_par, x_perp / Lambda) as a net
with isotropic weights sees x. The alignment is sum_i c_i |U W_i|^2 / |W_i|^2, the pondered mean of the
squared cosine between a neuron and the informative subspace (d_par / d for isotropic weights, 1 when every
neuron lies in it).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs
import numpy as np
import torch

import dlphase
from dlphase import Observable, Variable, param
from dlphase.net import fast_paths

SCALES = ("w_par", "w_perp", "lambda", "alignment")
_DOCS = {"w_par": "W_par, characteristic scale of the first-layer weights along the informative directions",
         "w_perp": "W_perp, characteristic scale of the first-layer weights across them, per direction",
         "lambda": "Lambda = W_par / W_perp, the compression of the uninformative directions",
         "alignment": "pondered mean squared cosine between first-layer neurons and the informative subspace"}


def scales(w: torch.Tensor, v: torch.Tensor, basis: torch.Tensor, weighting: str = "readout") -> dict[str, float]:
    """W_par, W_perp, Lambda and the alignment of first-layer weights ``w`` (h, d) whose neurons send on with
    weights of size ``v`` (h,), for the informative ``basis`` (k, d); ``weighting``: ``readout`` (c_i ~ v_i) or
    ``uniform`` (c_i = 1/h)."""
    w = w.detach().double()
    basis = basis.double()
    k, d = basis.shape
    c = v.detach().double().abs() if weighting == "readout" else torch.ones(len(w), dtype=torch.float64,
                                                                               device=w.device)
    total = c.sum()
    if not total > 0:
        return dict.fromkeys(SCALES, float("nan"))
    c = c / total
    par2 = (w @ basis.T).square().sum(1)
    perp2 = (w.square().sum(1) - par2).clamp_min(0)
    w_par = float((c * par2).sum() / k) ** 0.5
    w_perp = float((c * perp2).sum() / (d - k)) ** 0.5
    norm2 = par2 + perp2
    cos2 = torch.where(norm2 > 0, par2 / norm2.clamp_min(1e-300), torch.zeros_like(norm2))
    return {"w_par": w_par, "w_perp": w_perp, "lambda": w_par / w_perp if w_perp > 0 else float("inf"),
            "alignment": float((c * cos2).sum())}


def compress(x: torch.Tensor, basis: torch.Tensor, lam: float) -> torch.Tensor:
    """(x_par, x_perp / Lambda): the inputs with their components across the informative ``basis`` divided by
    ``lam``."""
    flat = x.flatten(1)
    b = basis.to(dtype=flat.dtype, device=flat.device)
    par = (flat @ b.T) @ b
    return (par + (flat - par) / lam).reshape(x.shape)


def first_layer_of(net: torch.nn.Module, params=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, v) of ``net`` (see :meth:`dlphase.Net.first_layer`), or a DataError naming the net."""
    got = fast_paths(net).first_layer(params)
    if got is None:
        raise dlphase.DataError(f"{type(net).__name__} has no dense first layer to measure; first_layer measures "
                                f"fc and mean_field nets")
    return got


def basis_of(data, coordinates: tuple[int, ...] | None, like: torch.Tensor) -> torch.Tensor:
    """The informative directions: the given input ``coordinates``, else the dataset's own."""
    d = like.shape[1]
    if coordinates:
        if max(coordinates) >= d:
            raise dlphase.DataError(f"informative coordinate {max(coordinates)} is out of range for inputs of "
                                    f"dimension {d}")
        return torch.eye(d, dtype=like.dtype, device=like.device)[list(coordinates)]
    if data.informative is None:
        raise dlphase.DataError("the dataset declares no informative directions; give them, e.g. "
                                "observables.first_layer.informative = [0]")
    return torch.as_tensor(np.asarray(data.informative), dtype=like.dtype, device=like.device)


@attrs.frozen(kw_only=True)
class FirstLayer(Observable):
    """W_par, W_perp, Lambda and the alignment of the first layer at initialisation and at the end, optionally
    at the trajectory's checkpoints, and optionally the weight vectors themselves (for the Fig. 10 scatter)."""

    name: ClassVar[str] = "first_layer"
    variables: ClassVar = {
        **{f"{q}_{when}": Variable(long_name=f"{_DOCS[q]} ({label})")
           for when, label in (("init", "at initialisation"), ("end", "at the end")) for q in SCALES},
        **{f"{q}_traj": Variable(long_name=f"{_DOCS[q]}, along the flow", dims=("time",)) for q in SCALES},
        **{f"first_layer_w_{when}": Variable(long_name=f"first-layer weight vectors W_i ({label})",
                                             dims=("neuron", "input"))
           for when, label in (("init", "at initialisation"), ("end", "at the end"))},
        **{f"first_layer_v_{when}": Variable(long_name=f"size of each first-layer neuron's outgoing weights "
                                                       f"({label})", dims=("neuron",))
           for when, label in (("init", "at initialisation"), ("end", "at the end"))},
        "first_layer_w_traj": Variable(long_name="first-layer weight vectors W_i along the flow",
                                       dims=("time", "neuron", "input")),
        "first_layer_v_traj": Variable(long_name="size of each first-layer neuron's outgoing weights along the flow",
                                       dims=("time", "neuron")),
    }
    informative: tuple[int, ...] | None = param(default=None, doc="input coordinates that are informative (default: "
                                                                  "the directions the dataset declares)")
    weighting: Literal["readout", "uniform"] = param(default="readout", doc="readout: each neuron pondered by its "
                                                                            "outgoing weights (the paper); uniform")
    along_trajectory: bool = param(default=False, doc="also measure at the checkpoints of the trajectory observable")
    store_weights: bool = param(default=False, doc="store the weight vectors W_i and their outgoing weights v_i "
                                                   "(h x d numbers per moment), for the Fig. 10 scatter")

    @informative.validator
    def _check_informative(self, attribute, value):
        if value is not None and (not value or min(value) < 0 or len(set(value)) != len(value)):
            raise ValueError(f"informative must list distinct input coordinates >= 0, got {list(value)}")

    def check_architecture(self, architecture) -> None:
        try:
            net = architecture.build(2, (3,), torch.Generator().manual_seed(0))
            ok = fast_paths(net).first_layer() is not None
        except Exception:  # noqa: BLE001 - an architecture that cannot take flat inputs has no dense first layer
            ok = False
        if not ok:
            raise ValueError(f"architecture {architecture.name!r} has no dense first layer; first_layer measures fc "
                             f"and mean_field")

    def needs_snapshots(self) -> bool:
        return self.along_trajectory

    def measure(self, run):
        net = run.model.net
        w_end, v_end = first_layer_of(net)
        basis = basis_of(run.data, self.informative, w_end)
        out = {}
        for when, (w, v) in (("init", first_layer_of(run.model.net0)), ("end", (w_end, v_end))):
            out.update({f"{q}_{when}": value for q, value in scales(w, v, basis, self.weighting).items()})
            if self.store_weights:
                out[f"first_layer_w_{when}"] = w.detach().double().cpu().numpy()
                out[f"first_layer_v_{when}"] = v.detach().double().cpu().numpy()
        if self.along_trajectory:
            out.update(self.along(run, basis, w_end.shape))
        return out

    def along(self, run, basis: torch.Tensor, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """The scales (and the weights) at every recorded checkpoint, from the parameters the monitor kept."""
        n_times = len(run.monitor.times)
        out = {f"{q}_traj": np.full(n_times, np.nan) for q in SCALES}
        if self.store_weights:
            out["first_layer_w_traj"] = np.full((n_times, *shape), np.nan)
            out["first_layer_v_traj"] = np.full((n_times, shape[0]), np.nan)
        for first, end, params in run.monitor.snapshots:
            w, v = first_layer_of(run.model.net, params)
            for q, value in scales(w, v, basis, self.weighting).items():
                out[f"{q}_traj"][first:end] = value
            if self.store_weights:
                out["first_layer_w_traj"][first:end] = w.detach().double().cpu().numpy()
                out["first_layer_v_traj"][first:end] = v.detach().double().cpu().numpy()
        return out


@dlphase.hookimpl
def register_observables(register):
    register(FirstLayer)
