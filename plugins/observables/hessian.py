"""Hessians of an energy E(theta) = sum_mu w l(m_mu) of the margins m_mu = y_mu f(x_mu), f = alpha (f~ - f~0),
split as H = H0 + Hp:

    H0 = alpha^2 sum_mu w l''(m_mu) grad f~_mu grad f~_mu^T      (positive semi-definite where l'' >= 0),
    Hp = alpha sum_mu w l'(m_mu) y_mu Hess f~_mu.

For the quadratic-hinge energy U = sum_{Delta > 0} Delta^2 / 2 (w = 1, l(m) = max(0, 1 - m)^2 / 2) these are
H0 = sum_{Delta>0} grad Delta grad Delta^T, of rank <= N_Delta, and Hp = sum_{Delta>0} Delta Hess Delta. For the
run's training loss L = mean_mu l(m_mu), w = 1 / P. H0 comes from the per-sample gradients (J, N_Delta x N),
Hp from Hessian-vector products of sum_mu c_mu f~_mu, all through torch.func, so any architecture works; a net
with a ``curvature(x)`` method (the fc net: fc_hessian.py) gives J, the dense Hp and the products in closed form.
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
from dlphase.model import rescaled
from dlphase.net import fast_paths


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


def hessian_rows(f, theta: torch.Tensor, x: torch.Tensor, c: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """The first ``rows`` (default all N) rows of the Hessian of phi(theta) = sum_mu c_mu f~(x_mu), (rows, N): the
    gradient g of phi is built once with its graph, and row i is the gradient of g_i (one backward pass each),
    which beats forward-over-reverse products on blocks of basis vectors and the same backward passes batched by
    ``is_grads_batched`` (docs/benchmarks.md)."""
    n = len(theta)
    rows = n if rows is None else rows
    out = theta.new_empty(rows, n)
    t = theta.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad((f(t, x) * c).sum(), t, create_graph=True)
        if not g.requires_grad:  # phi is linear in theta (a linear net): its Hessian is 0
            return out.zero_()
        for i in range(rows):
            (row,) = torch.autograd.grad(g[i], t, retain_graph=i < rows - 1, allow_unused=True)
            out[i] = 0 if row is None else row
    return out


def hessian_of_sum(f, theta: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The dense Hessian of phi(theta) = sum_mu c_mu f~(x_mu), (N, N), by :func:`hessian_rows`, symmetrised."""
    return symmetrize_(hessian_rows(f, theta, x, c))


def symmetrize_(m: torch.Tensor, tile: int = 512) -> torch.Tensor:
    """m <- (m + m^T) / 2 in place, tile by tile: a whole-matrix transpose crosses memory at a stride of N,
    while tiles that fit in cache do not."""
    n = len(m)
    for i in range(0, n, tile):
        for j in range(i, n, tile):
            upper, lower = m[i:i + tile, j:j + tile], m[j:j + tile, i:i + tile]
            mean = (upper + lower.T) / 2
            upper.copy_(mean)
            lower.copy_(mean.T)
    return m


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


def _energy(energy: str, loss, P: int):
    """(l, w) of the energy: U = sum of the quadratic hinge, or the mean of the run's loss."""
    if energy == "quadratic_hinge":
        return quadratic_hinge, 1.0
    if energy == "loss":
        if loss is None:
            raise ValueError("energy = 'loss' needs the run's loss")
        return loss, 1.0 / P
    raise ValueError(f"energy must be quadratic_hinge or loss, not {energy!r}")


def _active_terms(model, x: torch.Tensor, y: torch.Tensor, energy: str, loss) -> dict:
    """What both Hessian forms start from: theta and f~(theta, x), the margins, the points where l' or l'' is
    non-zero (``idx``), and there the weights a = alpha^2 w l'' of H0 and c = alpha w l' y of Hp."""
    net, alpha = model.net, model.alpha
    theta, f = flat_parameters(net)
    with torch.no_grad():
        f0 = model.net0(x)
        margins = y * rescaled(net(x), f0, alpha)
    l_fn, w = _energy(energy, loss, len(y))
    d1, d2 = loss_derivatives(l_fn, margins)
    idx = torch.nonzero((d1 != 0) | (d2 != 0)).flatten()
    return {"theta": theta, "f": f, "margins": margins, "idx": idx, "f0": f0[idx], "l": l_fn, "w": w,
            "a": alpha ** 2 * w * d2[idx], "c": alpha * w * d1[idx] * y[idx]}


def _curvature(model, x: torch.Tensor, terms: dict):
    """The net's closed-form curvature on the active points (fc_hessian.py), or None for a net without one;
    built once per ``terms`` and kept there, as the Lanczos path needs it for both J and the products."""
    if "closed" not in terms:
        terms["closed"] = fast_paths(model.net).curvature(x[terms["idx"]])
    return terms["closed"]


def _jacobian(model, x: torch.Tensor, terms: dict):
    """J, the per-sample gradients of f~ on the active points (closed form where the net has one), and the
    net's closed-form curvature or None."""
    closed = _curvature(model, x, terms)
    j = closed.jacobian() if closed is not None else per_sample_gradients(terms["f"], terms["theta"], x[terms["idx"]])
    return j, closed


def h0_eigenvalues(j: torch.Tensor, a: torch.Tensor, n: int) -> torch.Tensor | None:
    """All n eigenvalues of H0 = J^T diag(a) J (increasing) from the small matrix (sqrt(a) J)(sqrt(a) J)^T and
    n - rank zeros, exact where Lanczos cannot be (a zero eigenvalue of multiplicity n - N_Delta); None
    unless every a >= 0."""
    if not bool((a >= 0).all()):
        return None
    js = j * a.sqrt()[:, None]
    small = torch.linalg.eigvalsh(js @ js.T).clamp_min(0) if len(js) else js.new_zeros(0)
    return torch.cat([small.new_zeros(n - len(small)), small]) if len(small) <= n else small[-n:]


def hessian_parts(model, x: torch.Tensor, y: torch.Tensor, energy: str = "quadratic_hinge",
                  loss=None, terms: dict | None = None) -> dict[str, torch.Tensor]:
    """H0, Hp and H = H0 + Hp of the energy at the model's current parameters, with J (the per-sample gradients of
    f~ on the points where l'' or l' is non-zero) and the margins. ``energy``: "quadratic_hinge" (U, summed) or
    "loss" (the mean of ``loss``). ``terms``: :func:`_active_terms` of the same arguments, if already computed."""
    terms = terms or _active_terms(model, x, y, energy, loss)
    theta, f, idx, a = terms["theta"], terms["f"], terms["idx"], terms["a"]
    j, closed = _jacobian(model, x, terms)
    h0 = symmetrize_((j.T * a) @ j)
    if not len(idx):
        hp = torch.zeros_like(h0)
    elif closed is not None:
        hp = closed.hessian_of_sum(terms["c"])
    else:
        hp = hessian_of_sum(f, theta, x[idx], terms["c"])
    return {"H0": h0, "Hp": hp, "H": h0 + hp, "J": j, "margins": terms["margins"], "gn_weights": a}


def operators(model, x: torch.Tensor, y: torch.Tensor, energy: str = "quadratic_hinge", loss=None,
              terms: dict | None = None):
    """Matrix-free H0, Hp and H of the energy (see :func:`hessian_parts`) as functions v -> M v on flat tensors:
    H0 v = alpha^2 w J^T (l'' (J v)) by a forward-mode and a reverse-mode product, Hp v and H v by double-backward
    Hessian-vector products (of sum_mu c_mu f~_mu and of the energy restricted to the points where l' or l'' is
    non-zero); nothing of size N x N or N_Delta x N is formed. A net with ``curvature(x)`` gives all three in
    closed form instead (fc_hessian.py). Returns ({"H0", "Hp", "H"}, theta). ``terms``: as for
    :func:`hessian_parts`."""
    from torch.func import jvp, vjp

    terms = terms or _active_terms(model, x, y, energy, loss)
    theta, f, idx, a, c = terms["theta"], terms["f"], terms["idx"], terms["a"], terms["c"]
    closed = _curvature(model, x, terms)
    if closed is not None:
        return {"H0": closed.products(a, 0), "Hp": closed.products(0, c), "H": closed.products(a, c)}, theta
    xs, alpha, w, l_fn, f0 = x[idx], model.alpha, terms["w"], terms["l"], terms["f0"]

    def f_sel(t):
        return f(t, xs)

    _, pullback = vjp(f_sel, theta)

    def h0(v):
        jv = jvp(f_sel, (theta,), (v,))[1]
        return pullback(a * jv)[0]

    def hvp_of(scalar):
        """v -> Hess(scalar) v by double backward (reverse over reverse: here about twice as fast as
        torch.func's forward over reverse), the first gradient built once and kept."""
        t = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(scalar(t), t, create_graph=True)

        def hvp(v):
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(g, t, v, retain_graph=True)
            return hv

        return hvp

    hp = hvp_of(lambda t: (f(t, xs) * c).sum())
    h = hvp_of(lambda t: w * l_fn(y[idx] * rescaled(f(t, xs), f0, alpha)).sum())
    return {"H0": h0, "Hp": hp, "H": h}, theta


def extreme_eigenvalues(matvec, n: int, k: int, which: str, like: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """The k largest ("LA") or smallest ("SA") eigenvalues of a symmetric operator, by ARPACK's Lanczos
    (scipy's eigsh on a LinearOperator), increasing."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh
    from threadpoolctl import threadpool_limits

    def mv(v):
        t = torch.as_tensor(np.asarray(v).reshape(-1), dtype=like.dtype, device=like.device)
        with torch.no_grad():
            return matvec(t).double().cpu().numpy()

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    # ARPACK's own BLAS calls are small: on one thread, its idle threads do not compete with torch's products
    # (2 cores: 2.4 s -> 1.2 s for the benchmark's top-20)
    with threadpool_limits(1, user_api="blas"):
        vals = eigsh(op, k=min(k, n - 1), which=which, tol=tol, return_eigenvectors=False,
                     v0=np.random.default_rng(0).standard_normal(n))
    return torch.as_tensor(np.sort(vals))


def lanczos_quadrature(matvec, n: int, steps: int, probes: int, like: torch.Tensor, seed: int = 0):
    """Stochastic Lanczos quadrature: for each Rademacher probe v, ``steps`` Lanczos steps (full
    reorthogonalisation) give nodes theta_k (eigenvalues of the tridiagonal matrix) and weights tau_k (squared
    first components of its eigenvectors), so that the spectral density is about (1/probes) sum tau_k
    delta(lambda - theta_k). The probes advance together: one block product per step where ``matvec`` takes
    blocks (its ``blocks`` attribute), else one product per probe. Returns (nodes, weights), each (probes, steps)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    m = min(steps, n)
    probe = [(torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(like.dtype) / math.sqrt(n) for _ in range(probes)]
    basis = like.new_zeros(probes, m, n)
    basis[:, 0] = torch.stack(probe).to(like.device)
    alphas = torch.zeros(probes, m, dtype=torch.float64)
    betas = torch.zeros(probes, m, dtype=torch.float64)
    length = torch.full((probes,), m)                  # a probe whose Krylov space closes early stops there
    blocks = getattr(matvec, "blocks", False)
    for j in range(m):
        live = [p for p in range(probes) if length[p] > j]
        if not live:
            break
        if len(live) == probes:
            live = slice(None)                         # views, not copies, while every probe runs
        v = basis[live, j]
        with torch.no_grad():
            w = matvec(v) if blocks else torch.stack([matvec(row) for row in v])
        q = basis[live, :j + 1]
        alpha = (w * v).sum(-1)
        w = w - alpha[:, None] * v - (betas[live, j - 1].to(w)[:, None] * basis[live, j - 1] if j else 0)
        before = torch.linalg.norm(w, dim=-1)
        for _ in range(2):        # full reorthogonalisation; a second pass where the first cancelled much (DGKS)
            w = w - ((q @ w[:, :, None]).mT @ q)[:, 0]
            beta = torch.linalg.norm(w, dim=-1)
            if bool((beta > 0.7 * before).all()):
                break
            before = beta
        for row, p in enumerate(range(probes) if live == slice(None) else live):
            alphas[p, j] = float(alpha[row])
            if j == m - 1 or float(beta[row]) < 1e-12 * max(1.0, abs(float(alpha[row]))):
                length[p] = j + 1
            else:
                betas[p, j] = float(beta[row])
                basis[p, j + 1] = w[row] / beta[row]
    nodes = torch.zeros(probes, m, dtype=torch.float64)
    weights = torch.zeros(probes, m, dtype=torch.float64)
    for p in range(probes):
        k = int(length[p])
        t = torch.diag(alphas[p, :k]) + torch.diag(betas[p, :k - 1], 1) + torch.diag(betas[p, :k - 1], -1)
        theta, vecs = torch.linalg.eigh(t)
        nodes[p, :k], weights[p, :k] = theta, vecs[0] ** 2
    return nodes, weights


def slq_density(nodes, weights, grid, sigma: float):
    """The spectral density of an SLQ result on ``grid``, each node broadened by a Gaussian of width sigma."""
    import numpy as np

    nodes, weights, grid = (np.asarray(a, dtype=np.float64) for a in (nodes, weights, grid))
    z = (grid[:, None, None] - nodes[None]) / sigma
    return (weights[None] * np.exp(-z ** 2 / 2)).sum((1, 2)) / (len(nodes) * sigma * math.sqrt(2 * math.pi))


def spectra(parts: dict[str, torch.Tensor], zero_tol: float) -> dict[str, object]:
    """Eigenvalues (increasing) of H, H0 and Hp, N_minus, the numerical rank of H0 and the near-zero count of H.
    H0's come from the small N_Delta x N_Delta matrix (sqrt(a) J)(sqrt(a) J)^T when its weights a are >= 0."""
    n = parts["H"].shape[0]
    eig_h = torch.linalg.eigvalsh(parts["H"])
    eig_hp = torch.linalg.eigvalsh(parts["Hp"])
    eig_h0 = h0_eigenvalues(parts["J"], parts["gn_weights"], n)
    if eig_h0 is None:
        eig_h0 = torch.linalg.eigvalsh(parts["H0"])
    scale = float(eig_h.abs().max()) if n else 0.0
    tol = zero_tol * max(scale, 1e-300)
    return {"H": eig_h, "H0": eig_h0, "Hp": eig_hp,
            "n_minus": int((eig_hp < -tol).sum()), "rank_h0": int((eig_h0 > tol).sum()),
            "n_zero": int((eig_h.abs() <= tol).sum()),
            "n_delta": int((parts["margins"] < 1).sum())}


@attrs.frozen(kw_only=True)
class HessianSpectrum(Observable):
    """The spectra of H = H0 + Hp of the quadratic-hinge energy U (or of the training loss) at the end of training,
    and optionally at initialisation. Up to ``max_dense`` parameters: every eigenvalue of H, H0 and Hp (dim
    hess_eig, increasing, NaN past N when the grid mixes widths), N_minus, the numerical rank of H0 and the
    near-zero count of H. Above: the k largest and smallest eigenvalues of each by Lanczos on matrix-free
    products, and a stochastic Lanczos quadrature of each density (``slq_density`` broadens it)."""

    name: ClassVar[str] = "hessian_spectrum"
    variables: ClassVar = {
        f"hess_{what}{suffix}": Variable(long_name=f"{doc}{when}", dims=dims)
        for suffix, when in (("", " at the end"), ("_init", " at initialisation"))
        for what, doc, dims in (
            ("eig_h", "eigenvalues of H = H0 + Hp, increasing (N <= max_dense)", ("hess_eig",)),
            ("eig_h0", "eigenvalues of H0 = sum grad Delta grad Delta^T, increasing (N <= max_dense)", ("hess_eig",)),
            ("eig_hp", "eigenvalues of Hp = sum Delta Hess Delta, increasing (N <= max_dense)", ("hess_eig",)),
            ("n_minus", "N_minus, negative eigenvalues of Hp (N <= max_dense)", ()),
            ("rank_h0", "numerical rank of H0 (N <= max_dense)", ()),
            ("n_zero", "eigenvalues of H within zero_tol of 0 (N <= max_dense)", ()),
            ("n_delta", "N_Delta, points with Delta = 1 - y f > 0", ()),
            ("energy", "the energy whose Hessian this is: U = sum_{Delta>0} Delta^2 / 2, or L", ()),
            *((f"{end}_{m.lower()}", f"the {k} {word} eigenvalues of {m} by Lanczos, increasing (N > max_dense)",
               ("hess_k",)) for end, word, k in (("top", "largest", "k"), ("bottom", "smallest", "k"))
              for m in ("H", "H0", "Hp")),
            *((f"slq_{part}_{m.lower()}", f"stochastic Lanczos quadrature {part} of {m} (N > max_dense)",
               ("slq_probe", "slq_node")) for part in ("nodes", "weights") for m in ("H", "H0", "Hp")))
    }
    energy: Literal["quadratic_hinge", "loss"] = param(
        default="quadratic_hinge", doc="U = sum_{Delta>0} Delta^2 / 2, or the run's training loss L")
    at_init: bool = param(default=False, doc="also at initialisation (f = 0 there, so every Delta = 1)")
    max_dense: int = param(default=12000, doc="largest N for the dense spectra", validator=positive)
    zero_tol: float = param(default=1e-9, doc="|eigenvalue| <= zero_tol * max |eigenvalue of H| counts as 0",
                            validator=positive)
    k: int = param(default=20, doc="N > max_dense: how many of the largest and of the smallest eigenvalues",
                   validator=positive)
    slq_probes: int = param(default=4, doc="N > max_dense: random probes of the Lanczos density", validator=positive)
    slq_steps: int = param(default=80, doc="N > max_dense: Lanczos steps per probe (nodes of the density)",
                           validator=positive)

    def measure(self, run):
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
            terms = _active_terms(model, x, y, self.energy, run.loss)
            energy = float(terms["w"] * terms["l"](terms["margins"]).sum())
            if len(terms["idx"]) == 0:
                values = self.zero(model, terms)
            elif model.n_params() <= self.max_dense:
                values = self.dense(model, x, y, run.loss, terms)
            else:
                values = self.lanczos(model, x, y, run.loss, terms)
            out.update({f"hess_{key}{suffix}": v for key, v in {**values, "energy": energy}.items()})
        return out

    def zero(self, model, terms) -> dict:
        """Where no point has l' or l'' non-zero (a converged run, for U) H = H0 = Hp = 0: the values without
        forming anything (a converged wide net of a jamming scan would otherwise cost a full eigensolve)."""
        n = model.n_params()
        n_delta = int((terms["margins"] < 1).sum())
        if n <= self.max_dense:
            zeros = torch.zeros(n, dtype=torch.float64).numpy()
            return {"eig_h": zeros, "eig_h0": zeros, "eig_hp": zeros, "n_minus": 0, "rank_h0": 0, "n_zero": n,
                    "n_delta": n_delta}
        out = {"n_delta": n_delta}
        weights = torch.zeros(self.slq_probes, self.slq_steps, dtype=torch.float64)
        weights[:, 0] = 1.0
        for name in ("h", "h0", "hp"):
            out[f"top_{name}"] = out[f"bottom_{name}"] = torch.zeros(self.k, dtype=torch.float64).numpy()
            out[f"slq_nodes_{name}"] = torch.zeros_like(weights).numpy()
            out[f"slq_weights_{name}"] = weights.numpy()
        return out

    def dense(self, model, x, y, loss, terms=None) -> dict:
        spec = spectra(hessian_parts(model, x, y, self.energy, loss, terms), self.zero_tol)
        out = {f"eig_{key.lower()}": spec[key].double().cpu().numpy() for key in ("H", "H0", "Hp")}
        out.update({key: spec[key] for key in ("n_minus", "rank_h0", "n_zero", "n_delta")})
        return out

    def lanczos(self, model, x, y, loss, terms=None) -> dict:
        terms = terms or _active_terms(model, x, y, self.energy, loss)
        ops, theta = operators(model, x, y, self.energy, loss, terms)
        n = len(theta)
        out = {"n_delta": int((terms["margins"] < 1).sum())}
        # H0's extremes exactly from the small matrix: its zero eigenvalue is (N - N_Delta)-fold, which a
        # single-vector Lanczos cannot resolve
        eig_h0 = h0_eigenvalues(_jacobian(model, x, terms)[0], terms["a"], n)
        for key, op in ops.items():
            name = key.lower()
            if key == "H0" and eig_h0 is not None:
                k = min(self.k, n - 1)
                out["top_h0"], out["bottom_h0"] = eig_h0[-k:].double().cpu().numpy(), eig_h0[:k].double().cpu().numpy()
            else:
                out[f"top_{name}"] = extreme_eigenvalues(op, n, self.k, "LA", theta).numpy()
                out[f"bottom_{name}"] = extreme_eigenvalues(op, n, self.k, "SA", theta).numpy()
            nodes, weights = lanczos_quadrature(op, n, self.slq_steps, self.slq_probes, theta)
            out[f"slq_nodes_{name}"], out[f"slq_weights_{name}"] = nodes.numpy(), weights.numpy()
        return out


@dlphase.hookimpl
def register_observables(register):
    register(HessianSpectrum)
