"""Hessian speed: H = H0 + Hp of U = sum_{Delta>0} Delta^2 / 2 for the 10 -> 100 -> 100 -> 1 relu fc net with
biases (N = 11300) on P = 1000 MNIST parity 10 PCA points, at initialisation (every Delta = 1), float64, every
torch thread; timings and ratios from the same run:
  - dense: hessian_parts (the fc net's closed form, fc_hessian.py) plus eigvalsh; against it the generic path
    (one double-backward pass per row of Hp) on its first 256 rows, extrapolated to N rows and checked against
    the closed form's; with --reference also torch.func.hessian of U (at N = 11300, P = 1000 it ran out of this
    machine's 24 GB: the kernel killed it);
  - the 20 largest eigenvalues of H: ARPACK on our closed-form products, against ARPACK on double-backward
    autograd Hessian-vector products, both checked against the dense spectrum;
  - the density of H by stochastic Lanczos quadrature, with the observable's defaults (4 probes x 80 steps) and
    with curvlinops' lanczos_approximate_spectrum's work (1 repeat x ncv = 128 steps, plus ARPACK's estimate of
    both ends of the spectrum at tol 1e-2), on our products and on autograd's.
Issue 6's goals: the dense spectrum in 45 s or less, top-20 in 1.2 s or less at 1e-6, the density in 1.6 s or less.
Usage: python benchmarks/hessian.py [--h 100] [--P 1000] [--reference]
"""

import argparse
import importlib
import time

import torch

from dlphase.plugins.observables import hessian as hs
from dlphase.grid_point import Run
from dlphase.specs import build_spec

importlib.import_module("scipy.sparse.linalg")  # here (0.4 s), so that the first solve below is not charged for it


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def curvlinops_like_slq(matvec, n, like):
    """curvlinops' work for one density: ARPACK for both ends of the spectrum (k = 2, "BE", tol 1e-2), then one
    Lanczos run of 128 steps."""
    hs.extreme_eigenvalues(matvec, n, 2, "BE", like, tol=1e-2)
    return hs.lanczos_quadrature(matvec, n, 128, 1, like)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--h", type=int, default=100)
    ap.add_argument("--P", type=int, default=1000)
    ap.add_argument("--reference", action="store_true", help="also time torch.func.hessian (needs a lot of memory)")
    args = ap.parse_args()
    spec = build_spec({"dataset": {"name": "mnist", "pca": 10, "n_test": 100},
                       "architecture": {"name": "fc", "depth": 2, "activation": "relu", "bias": True},
                       "grid": {"h": [args.h], "alpha_tilde": [1.0], "P": [args.P]}})
    run = Run(spec)
    model, x, y = run.model, run.tensors.x_train, run.tensors.y_train
    n = model.n_params()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N = {n}, P = {args.P}, at initialisation")

    parts, t_build = timed(lambda: hs.hessian_parts(model, x, y))
    eig, t_eig = timed(lambda: torch.linalg.eigvalsh(parts["H"]))
    print(f"dense: build H0 + Hp {t_build:.1f} s (closed form), eigvalsh {t_eig:.1f} s, total {t_build + t_eig:.1f} s")
    terms = hs._active_terms(model, x, y, "quadratic_hinge", None)
    rows = min(256, n)
    xs = x[terms["idx"]]
    generic, t_rows = timed(lambda: hs.hessian_rows(terms["f"], terms["theta"], xs, terms["c"], rows))
    diff = float((generic - parts["Hp"][:rows]).abs().max() / parts["Hp"].abs().max())
    t_generic = t_rows * n / rows
    print(f"  generic Hp (double backward per row): {t_rows:.1f} s for {rows} rows, so {t_generic:.0f} s for "
          f"{n}, {t_generic / t_build:.1f}x our whole build; max |difference| / max |Hp| = {diff:.1e}")
    if args.reference:
        from torch.func import hessian

        theta, f = hs.flat_parameters(model.net)
        with torch.no_grad():
            f0 = model.net0(x)
        ref, t_ref = timed(lambda: hessian(lambda t: hs.quadratic_hinge(y * model.alpha * (f(t, x) - f0)).sum())(theta))
        diff = float((ref - parts["H"]).abs().max() / ref.abs().max())
        print(f"  torch.func.hessian {t_ref:.1f} s; ratio {t_ref / t_build:.2f}x; "
              f"max |H - H_ref| / max |H_ref| = {diff:.1e}")
        del ref

    ops, theta = hs.operators(model, x, y)
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    autograd_hvp = _autograd_hvp(model, x, y)
    for _ in range(5):                                 # warm both up
        ops["H"](v), autograd_hvp(v)
    _, t_mv = timed(lambda: [ops["H"](v) for _ in range(50)])
    _, t_ag_mv = timed(lambda: [autograd_hvp(v) for _ in range(50)])
    print(f"one product H v: ours {t_mv / 50 * 1e3:.1f} ms, autograd double backward {t_ag_mv / 50 * 1e3:.1f} ms "
          f"({t_ag_mv / t_mv:.2f}x)")

    top, t_top = timed(lambda: hs.extreme_eigenvalues(ops["H"], n, 20, "LA", theta, tol=1e-6))
    err = float(((top - eig[-20:]).abs() / eig[-20:].abs()).max())
    print(f"top-20 by Lanczos (ARPACK tol 1e-6) on our products: {t_top:.2f} s, max relative error {err:.1e}")
    top_ag, t_ag = timed(lambda: hs.extreme_eigenvalues(autograd_hvp, n, 20, "LA", theta, tol=1e-6))
    err_ag = float(((top_ag - eig[-20:]).abs() / eig[-20:].abs()).max())
    print(f"  on autograd double-backward products: {t_ag:.2f} s, max relative error {err_ag:.1e}; "
          f"ratio {t_ag / t_top:.2f}x")

    (nodes, weights), t_slq = timed(lambda: hs.lanczos_quadrature(ops["H"], n, 80, 4, theta))
    mean_slq = float((nodes * weights).sum() / 4)
    print(f"SLQ density, 4 probes x 80 steps (the observable's default): {t_slq:.2f} s; its mean {mean_slq:.4g} "
          f"vs tr(H)/N {float(eig.mean()):.4g}")
    _, t_cl = timed(lambda: curvlinops_like_slq(ops["H"], n, theta))
    _, t_cl_ag = timed(lambda: curvlinops_like_slq(autograd_hvp, n, theta))
    print(f"SLQ density, curvlinops' work (ends of the spectrum + 1 x 128 steps): {t_cl:.2f} s on our products, "
          f"{t_cl_ag:.2f} s on autograd's ({t_cl_ag / t_cl:.2f}x)")
    print(f"dense spectrum: {int((eig < 0).sum())} negative, min {float(eig[0]):.3g}, max {float(eig[-1]):.3g}")


def _autograd_hvp(model, x, y):
    """v -> H v by double backward through the whole energy, rebuilt per product (what the issue timed)."""
    params = list(model.net.parameters())
    with torch.no_grad():
        f0 = model.net0(x)

    def hvp(v):
        with torch.enable_grad():
            u = hs.quadratic_hinge(y * model.alpha * (model.net(x) - f0)).sum()
            grads = torch.autograd.grad(u, params, create_graph=True)
            flat = torch.cat([g.reshape(-1) for g in grads])
            hv = torch.autograd.grad(flat @ v, params)
        return torch.cat([g.reshape(-1) for g in hv])

    return hvp


if __name__ == "__main__":
    main()
