"""Hessians of an energy E(theta) = sum_mu w l(m_mu) of the margins m_mu = y_mu f(x_mu), f = alpha (f~ - f~0),
split as H = H0 + Hp (SCIENCE.md section 4):

    H0 = alpha^2 sum_mu w l''(m_mu) grad f~_mu grad f~_mu^T      (positive semi-definite where l'' >= 0),
    Hp = alpha sum_mu w l'(m_mu) y_mu Hess f~_mu.

For the quadratic-hinge energy U = sum_{Delta > 0} Delta^2 / 2 (w = 1, l(m) = max(0, 1 - m)^2 / 2) these are
H0 = sum_{Delta>0} grad Delta grad Delta^T, of rank <= N_Delta, and Hp = sum_{Delta>0} Delta Hess Delta. For the
run's training loss L = mean_mu l(m_mu), w = 1 / P. H0 comes from the per-sample gradients (J, N_Delta x N),
Hp from Hessian-vector products of sum_mu c_mu f~_mu, all through torch.func, so any architecture works.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar, Literal

import attrs
import torch

import dlphase
from dlphase import Observable, Variable, param
from dlphase.specs import positive


def flat_parameters(net: torch.nn.Module):
    """(theta as one flat tensor, f~(theta_flat, x)) for ``net``, through torch.func.functional_call."""
    from torch.func import functional_call

    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [math.prod(s) for s in shapes]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def f(flat, x):
        parts = torch.split(flat, sizes)
        return functional_call(net, {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}, (x,))

    return theta, f


def per_sample_gradients(f, theta: torch.Tensor, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """J, (n, N): grad_theta f~(x_mu) for every point, ``chunk`` points at a time."""
    from torch.func import grad, vmap

    def single(t, xi):
        return f(t, xi[None])[0]

    rows = [vmap(grad(single), in_dims=(None, 0))(theta, x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return torch.cat(rows) if rows else theta.new_zeros(0, len(theta))


def hessian_of_sum(f, theta: torch.Tensor, x: torch.Tensor, c: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """The dense Hessian of phi(theta) = sum_mu c_mu f~(x_mu), (N, N): Hessian-vector products (forward over
    reverse) on ``chunk`` basis vectors at a time."""
    from torch.func import grad, jvp, vmap

    def phi(t):
        return (f(t, x) * c).sum()

    g = grad(phi)

    def hvp(v):
        return jvp(g, (theta,), (v,))[1]

    n = len(theta)
    out = theta.new_empty(n, n)
    eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
    for i in range(0, n, chunk):
        out[i:i + chunk] = vmap(hvp)(eye[i:i + chunk])
    return (out + out.T) / 2


def loss_derivatives(loss, margins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """l'(m) and l''(m), elementwise, by autograd."""
    m = margins.detach().requires_grad_(True)
    with torch.enable_grad():
        (d1,) = torch.autograd.grad(loss(m).sum(), m, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), m) if d1.requires_grad else (torch.zeros_like(m),)
    return d1.detach(), d2.detach()


def quadratic_hinge(margin: torch.Tensor) -> torch.Tensor:
    """l(m) = max(0, 1 - m)^2 / 2, whose sum over the training set is U."""
    return torch.clamp(1 - margin, min=0) ** 2 / 2


def hessian_parts(model, x: torch.Tensor, y: torch.Tensor, energy: str = "quadratic_hinge", loss=None,
                  dense_hp: bool = True) -> dict[str, torch.Tensor]:
    """H0, Hp and H = H0 + Hp of the energy at the model's current parameters, with J (the per-sample gradients of
    f~ on the points where l'' or l' is non-zero) and the margins. ``energy``: "quadratic_hinge" (U, summed) or
    "loss" (the mean of ``loss``)."""
    net, alpha = model.net, model.alpha
    theta, f = flat_parameters(net)
    with torch.no_grad():
        f0 = model.net0(x)
        margins = y * alpha * (net(x) - f0)
    if energy == "quadratic_hinge":
        l_fn, w = quadratic_hinge, 1.0
    elif energy == "loss":
        if loss is None:
            raise ValueError("energy = 'loss' needs the run's loss")
        l_fn, w = loss, 1.0 / len(y)
    else:
        raise ValueError(f"energy must be quadratic_hinge or loss, not {energy!r}")
    d1, d2 = loss_derivatives(l_fn, margins)
    active = (d1 != 0) | (d2 != 0)
    idx = torch.nonzero(active).flatten()
    j = per_sample_gradients(f, theta, x[idx])
    h0 = (alpha ** 2 * w) * (j.T * d2[idx]) @ j
    out = {"H0": (h0 + h0.T) / 2, "J": j, "margins": margins, "gn_weights": alpha ** 2 * w * d2[idx]}
    if dense_hp:
        c = alpha * w * d1[idx] * y[idx]
        hp = hessian_of_sum(f, theta, x[idx], c) if len(idx) else torch.zeros_like(h0)
        out["Hp"] = hp
        out["H"] = out["H0"] + hp
    return out


def spectra(parts: dict[str, torch.Tensor], zero_tol: float) -> dict[str, object]:
    """Eigenvalues (increasing) of H, H0 and Hp, N_minus, the numerical rank of H0 and the near-zero count of H.
    H0's come from the small N_Delta x N_Delta matrix (sqrt(a) J)(sqrt(a) J)^T when its weights a are >= 0."""
    n = parts["H"].shape[0]
    eig_h = torch.linalg.eigvalsh(parts["H"])
    eig_hp = torch.linalg.eigvalsh(parts["Hp"])
    a = parts["gn_weights"]
    if bool((a >= 0).all()):
        js = parts["J"] * a.sqrt()[:, None]
        small = torch.linalg.eigvalsh(js @ js.T).clamp_min(0) if len(js) else js.new_zeros(0)
        eig_h0 = torch.cat([small.new_zeros(n - len(small)), small]) if len(small) <= n else small[-n:]
    else:
        eig_h0 = torch.linalg.eigvalsh(parts["H0"])
    scale = float(eig_h.abs().max()) if n else 0.0
    tol = zero_tol * max(scale, 1e-300)
    return {"H": eig_h, "H0": eig_h0, "Hp": eig_hp,
            "n_minus": int((eig_hp < -tol).sum()), "rank_h0": int((eig_h0 > tol).sum()),
            "n_zero": int((eig_h.abs() <= tol).sum()),
            "n_delta": int((parts["margins"] < 1).sum())}


@attrs.frozen(kw_only=True)
class HessianSpectrum(Observable):
    """The dense spectra of H = H0 + Hp of the quadratic-hinge energy U (or of the training loss) at the end of
    training, and optionally at initialisation: every eigenvalue of H, H0 and Hp (dim hess_eig, increasing,
    NaN past N when the grid mixes widths), N_minus, the numerical rank of H0 and the near-zero count of H."""

    name: ClassVar[str] = "hessian_spectrum"
    variables: ClassVar = {
        f"hess_{what}{suffix}": Variable(long_name=f"{doc}{when}", dims=dims)
        for suffix, when in (("", " at the end"), ("_init", " at initialisation"))
        for what, doc, dims in (
            ("eig_h", "eigenvalues of H = H0 + Hp, increasing", ("hess_eig",)),
            ("eig_h0", "eigenvalues of H0 = sum grad Delta grad Delta^T, increasing", ("hess_eig",)),
            ("eig_hp", "eigenvalues of Hp = sum Delta Hess Delta, increasing", ("hess_eig",)),
            ("n_minus", "N_minus, negative eigenvalues of Hp", ()),
            ("rank_h0", "numerical rank of H0", ()),
            ("n_zero", "eigenvalues of H within zero_tol of 0", ()),
            ("n_delta", "N_Delta, points with Delta = 1 - y f > 0", ()))
    }
    energy: Literal["quadratic_hinge", "loss"] = param(
        default="quadratic_hinge", doc="U = sum_{Delta>0} Delta^2 / 2, or the run's training loss L")
    at_init: bool = param(default=False, doc="also at initialisation (f = 0 there, so every Delta = 1)")
    max_dense: int = param(default=12000, doc="largest N for the dense spectra", validator=positive)
    zero_tol: float = param(default=1e-9, doc="|eigenvalue| <= zero_tol * max |eigenvalue of H| counts as 0",
                            validator=positive)

    def measure(self, run):
        n = run.model.n_params()
        if n > self.max_dense:
            raise dlphase.DataError(f"hessian_spectrum: N = {n} is above max_dense = {self.max_dense}; the Lanczos "
                                    f"path for large nets is not built yet, so lower h or raise max_dense")
        x, y = run.tensors.x_train, run.tensors.y_train
        out = {}
        states = [("", run.model)]
        if self.at_init:
            init = copy.deepcopy(run.model)
            init.predictor = None
            with torch.no_grad():
                for p, p0 in zip(init.net.parameters(), init.net0.parameters()):
                    p.copy_(p0)
            states.append(("_init", init))
        for suffix, model in states:
            parts = hessian_parts(model, x, y, self.energy, run.loss)
            spec = spectra(parts, self.zero_tol)
            for key in ("H", "H0", "Hp"):
                out[f"hess_eig_{key.lower()}{suffix}"] = spec[key].double().cpu().numpy()
            for key in ("n_minus", "rank_h0", "n_zero", "n_delta"):
                out[f"hess_{key}{suffix}"] = spec[key]
        return out


@dlphase.hookimpl
def register_observables(register):
    register(HessianSpectrum)
