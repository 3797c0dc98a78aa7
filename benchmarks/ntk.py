"""Empirical NTK speed: the layer-by-layer fc kernel against torch.func Jacobians and a per-sample loop.

fc, L = 2, normalised swish, d = 10 inputs (as MNIST 10 PCA), float64, every torch thread. For each h,
the Gram matrix of n kernel points for M members: the fc kernel (EnsembleNet.ntk of FCEnsemble), the
generic torch.func path (EnsembleNet.ntk: jacrev, chunked), and for one member the reference's way, a
Python loop of per-sample autograd gradients. Prints seconds and ratios measured in the same run, and
the largest relative difference between the fast and generic Gram matrices.
Usage: python benchmarks/ntk.py [--widths 30,100,300] [--n 500] [--members 4]
"""

import argparse
import time

import torch

from dlphase.ensemble import EnsembleNet, ensemble_of, ntk_by_loop
from dlphase.plugins.fc import FC


def timed(fn, repeat=1):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t0) / repeat, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", default="30,100,300")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--members", type=int, default=4)
    args = ap.parse_args()
    x = torch.randn(args.n, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, n = {args.n}, "
          f"M = {args.members}")
    print(f"{'h':>5} {'fc kernel s':>12} {'torch.func s':>13} {'ratio':>7} {'loop s (1 net)':>15} "
          f"{'ratio per net':>14} {'max rel diff':>13}")
    for h in (int(w) for w in args.widths.split(",")):
        nets = [FC(depth=2).build(h, (10,), torch.Generator().manual_seed(s)) for s in range(args.members)]
        fast, generic = ensemble_of(nets), EnsembleNet(nets)
        params = fast.stack(nets)
        t_fast, k_fast = timed(lambda: fast.ntk(params, x), repeat=3)
        t_gen, k_gen = timed(lambda: generic.ntk(params, x))
        t_loop, _ = timed(lambda: ntk_by_loop(nets[0], x))
        diff = float(((k_fast - k_gen).abs().max() / k_gen.abs().max()))
        print(f"{h:>5} {t_fast:>12.4f} {t_gen:>13.3f} {t_gen / t_fast:>6.0f}x {t_loop:>15.3f} "
              f"{t_loop / (t_fast / args.members):>13.0f}x {diff:>13.1e}")


if __name__ == "__main__":
    main()
