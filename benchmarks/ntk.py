"""Empirical NTK speed: the layer-by-layer fc kernel against torch.func's vmap(jacrev) and a per-sample loop.

The Gram matrix of one net on n inputs, every torch thread, timings from the same run:
  - fc 10 -> h -> h -> 1, relu, n = 1000, at h = 100 and 1000, float32 and float64: the fc kernel
    (FCEnsemble.ntk), torch.func's vmap over samples of jacrev then J J^T, and the reference's way, a
    Python loop of per-sample autograd gradients (ntk_by_loop), with the ratios and the largest
    relative difference to the loop's Gram matrix;
  - a cnn (2 layers of 32 channels, 5 x 5, stride 2) on --cnn-n MNIST-sized images: the layer-by-layer
    kernel (CNNEnsemble.ntk) against the generic path (EnsembleNet.ntk, torch.func in chunks), vmap(jacrev)
    and the loop.
Issue 5's goal: 0.015 s or less at h = 100 in float32, and at least 10x vmap(jacrev).
Usage: python benchmarks/ntk.py [--n 1000] [--widths 100,1000] [--cnn-n 500]
"""

import argparse
import time

import torch
from torch.func import functional_call, jacrev, vmap

from dlphase.ensemble_net import EnsembleNet, ensemble_of, ntk_by_loop
from dlphase.plugins.architectures.cnn import CNN
from dlphase.plugins.architectures.fc import FC


#: vmap(jacrev) is skipped where its n x N Jacobian would exceed this (the machine has 24 GB)
MAX_JACOBIAN_GB = 3.0


def timed(fn, repeat=3):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def vmap_jacrev_ntk(net, x):
    """The torch.func recipe: per-sample Jacobians by vmap(jacrev), then J J^T."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, xi):
        return functional_call(net, p, (xi[None],))[0]

    jac = vmap(jacrev(f), (None, 0))(params, x)
    j = torch.cat([v.reshape(len(x), -1) for v in jac.values()], 1)
    return j @ j.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--widths", default="100,1000")
    ap.add_argument("--cnn-n", type=int, default=500, help="images for the cnn comparison")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, one net, n = {args.n}")
    print(f"{'net':>16} {'dtype':>8} {'fc kernel s':>12} {'vmap(jacrev) s':>15} {'ratio':>6} {'loop s':>8} "
          f"{'ratio':>6} {'rel diff':>9}")
    for h in (int(w) for w in args.widths.split(",")):
        for dtype in (torch.float32, torch.float64):
            net = FC(depth=2, activation="relu").build(h, (10,), torch.Generator().manual_seed(0)).to(dtype)
            x = torch.randn(args.n, 10, dtype=dtype, generator=torch.Generator().manual_seed(1))
            ens = ensemble_of([net])
            params = ens.stack([net])
            t_fast, k_fast = timed(lambda: ens.ntk(params, x)[0])
            jac_gb = args.n * sum(p.numel() for p in net.parameters()) * x.element_size() / 1e9
            if jac_gb <= MAX_JACOBIAN_GB:
                t_vj, _ = timed(lambda: vmap_jacrev_ntk(net, x), repeat=1)
                vj = f"{t_vj:>15.3f} {t_vj / t_fast:>5.0f}x"
            else:  # the n x N Jacobian alone would not fit comfortably in memory
                vj = f"{'J: ' + format(jac_gb, '.0f') + ' GB':>15} {'-':>6}"
            t_loop, k_loop = timed(lambda: ntk_by_loop(net, x), repeat=1)
            diff = float((k_fast - k_loop).abs().max() / k_loop.abs().max())
            print(f"{'fc relu h=' + str(h):>16} {str(dtype)[6:]:>8} {t_fast:>12.4f} {vj} "
                  f"{t_loop:>8.3f} {t_loop / t_fast:>5.0f}x {diff:>9.1e}")
    net = CNN(depth=2).build(32, (1, 28, 28), torch.Generator().manual_seed(0))
    x = torch.randn(args.cnn_n, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ens = ensemble_of([net])
    params = ens.stack([net])
    t_fast, k_fast = timed(lambda: ens.ntk(params, x)[0], repeat=1)
    t_gen, _ = timed(lambda: EnsembleNet([net]).ntk(params, x)[0], repeat=1)
    t_vj, _ = timed(lambda: vmap_jacrev_ntk(net, x), repeat=1)
    t_loop, k_loop = timed(lambda: ntk_by_loop(net, x), repeat=1)
    diff = float((k_fast - k_loop).abs().max() / k_loop.abs().max())
    print(f"cnn h = 32, depth 2, 5 x 5 stride 2, {args.cnn_n} images 28 x 28, float64: layer by layer {t_fast:.3f} s; "
          f"generic (vmap of grad, chunked) {t_gen:.3f} s ({t_gen / t_fast:.1f}x); vmap(jacrev) {t_vj:.3f} s "
          f"({t_vj / t_fast:.1f}x); loop {t_loop:.3f} s ({t_loop / t_fast:.1f}x); rel diff to the loop {diff:.1e}")


if __name__ == "__main__":
    main()
