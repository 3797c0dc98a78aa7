"""Training throughput: the batched ensemble path against one net at a time, and against a bare matmul.

fc, L = 2, normalised swish, soft hinge, bundled MNIST parity 10 PCA, P = 1000, float64, 16 members
(seeds 0-15, alpha_tilde = 2^20 so that nobody converges inside the timed trial steps), every torch
thread of this machine. For each h it prints
  - member-trial-steps per second of 16 nets one at a time and of the 16 as one ensemble, and the ratio;
  - the GFLOP/s of the ensemble step (2 P (2 d h + 3 h^2 + 3 h) flops per member and trial step:
    forward, then the weight and input gradients) next to torch.bmm on (16, P, h) x (16, h, h)
    timed in the same run, and the fraction of it reached.
The throughput runs use the plain explicit step (implicit = false), whose cost per trial step is fixed.
With --converge it also trains a whole 16-seed ensemble to convergence at h = 100 for alpha_tilde = 2^-8
and 2^20 (--exponents), with the robust rule's implicit coefficients on and off (--implicit), and prints
the wall times (long on 2 cores: many minutes); --max-steps caps their trial steps, to compare the settings
by the flow time they reach; --kernel-refresh sets gradient_flow.kernel_refresh (default: the spec's).
Usage: python benchmarks/train.py [--converge] [--exponents -8,20] [--implicit both|true|false] [--max-steps N]
                                  [--kernel-refresh F]
                                  [--widths 10,30,100,300] [--device cpu|cuda]
"""

import argparse
import time

import torch

import dlphase
from dlphase.run import Run


def spec_for(h, alpha_tilde, max_steps, device="cpu", implicit=False, kernel_refresh=None):
    dynamics = {"name": "gradient_flow", "loss": {"name": "soft_hinge", "beta": 20}, "max_steps": max_steps,
                "implicit": implicit}
    if kernel_refresh is not None:
        dynamics["kernel_refresh"] = kernel_refresh
    return dlphase.Spec.from_dict({
        "dataset": {"name": "mnist", "pca": 10, "n_test": 1000},
        "architecture": {"name": "fc", "depth": 2, "activation": "swish"},
        "dynamics": dynamics,
        "grid": {"h": [h], "alpha_tilde": [alpha_tilde], "P": [1000], "seed": list(range(16))},
        "run": {"device": device}})


def members(spec):
    runs = [Run(spec, **p) for p in spec.grid.points()]
    return runs, [r.model for r in runs], runs[0].tensors


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(h, trials, device):
    spec = spec_for(h, 2.0 ** 20, trials, device)
    flow = spec.dynamics
    runs, models, data = members(spec)
    flow.train(Run(spec, **spec.grid.points()[0]).model, data)  # warm-up: one net
    sync(device)
    t0 = time.perf_counter()
    alone = [flow.train(m, data) for m in models]
    sync(device)
    t_alone = time.perf_counter() - t0
    runs, models, data = members(spec)
    t0 = time.perf_counter()
    together = flow.train_ensemble(models, data)
    sync(device)
    t_together = time.perf_counter() - t0
    n_alone = sum(r.steps + r.rejected for r in alone)
    n_together = sum(r.steps + r.rejected for r in together)
    return n_alone / t_alone, n_together / t_together


def matmul_gflops(h, P, device, repeat=20):
    a = torch.randn(16, P, h, dtype=torch.float64, device=device)
    b = torch.randn(16, h, h, dtype=torch.float64, device=device)
    torch.bmm(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        torch.bmm(a, b)
    sync(device)
    return 2 * 16 * P * h * h * repeat / (time.perf_counter() - t0) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="10,30,100,300")
    ap.add_argument("--converge", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--exponents", default="-8,20", help="alpha_tilde = 2^e of the --converge ensembles")
    ap.add_argument("--implicit", default="both", choices=["both", "true", "false"])
    ap.add_argument("--max-steps", type=int, default=10 ** 7, help="trial-step budget of the --converge ensembles")
    ap.add_argument("--kernel-refresh", type=float, default=None, help="gradient_flow.kernel_refresh of those")
    args = ap.parse_args()
    P, d = 1000, 10
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, float64, "
          f"16 members, P = {P}")
    print(f"{'h':>5} {'alone m-steps/s':>16} {'ensemble m-steps/s':>19} {'ratio':>6} "
          f"{'ens GFLOP/s':>12} {'bmm GFLOP/s':>12} {'fraction':>8}")
    for h in (int(w) for w in args.widths.split(",") if w):
        trials = 300 if h <= 100 else 60
        alone, together = throughput(h, trials, args.device)
        flops = 2 * P * (2 * d * h + 3 * h * h + 3 * h)
        ens = together * flops / 1e9
        mm = matmul_gflops(h, P, args.device)
        print(f"{h:>5} {alone:>16.0f} {together:>19.0f} {together / alone:>5.1f}x {ens:>12.2f} {mm:>12.2f} "
              f"{ens / mm:>8.2f}")
    if args.converge:
        for e in (int(v) for v in args.exponents.split(",")):
            for implicit in ([True, False] if args.implicit == "both" else [args.implicit == "true"]):
                spec = spec_for(100, 2.0 ** e, args.max_steps, args.device, implicit, args.kernel_refresh)
                runs, models, data = members(spec)
                t0 = time.perf_counter()
                res = spec.dynamics.train_ensemble(models, data)
                wall = time.perf_counter() - t0
                print(f"16-seed ensemble, h = 100, alpha_tilde = 2^{e}, implicit = {implicit}: {wall:.1f} s, "
                      f"statuses {sorted({r.status for r in res})}, trial steps per member "
                      f"{min(r.steps + r.rejected for r in res)}-{max(r.steps + r.rejected for r in res)}, flow time "
                      f"{min(r.t for r in res):.4g}-{max(r.t for r in res):.4g}", flush=True)


if __name__ == "__main__":
    main()
