"""Training throughput and time to convergence, against one net at a time, a bare matmul and the reference.

fc, L = 2, normalised swish, soft hinge, bundled MNIST parity 10 PCA, P = 1000, float64, 16 members
(seeds 0-15), every torch thread of this machine. For each h it prints
  - member-trial-steps per second of 16 nets one at a time and of the 16 as one ensemble, and the ratio
    (alpha_tilde = 2^20, plain explicit robust steps, so that every trial step costs the same and nobody
    converges inside the timed steps);
  - the GFLOP/s of the ensemble step (2 P (2 d h + 3 h^2 + 3 h) flops per member and trial step:
    forward, then the weight and input gradients) next to torch.bmm on (16, P, h) x (16, h, h)
    timed in the same run, and the fraction of it reached.
With --converge it trains the 16-seed ensemble (--seeds) at h = 100 to convergence for alpha_tilde = 2^-8 and 2^20
(--exponents) with the default gradient_flow (and with --rules, other rules too), and prints for each the
wall time, its ratio to the reference code's time for the same 16 runs (REFERENCE_SECONDS), the gradient
evaluations per member and the fidelity: against runs of the first --fidelity seeds with every tolerance
100 times tighter, each seed's relative RMS distance of f on the test set, the seed-averaged test error, the
seed average <f> and the fluctuations |f - <f>| with bootstrap 95% intervals.
With --relu, --converge also does the same for relu nets at alpha_tilde = 1e-2.
With --cnn it measures the cnn of the paper's image runs (h = 32 channels, depth 2, 5 x 5 kernels, stride 2,
swish, soft hinge, raw MNIST parity, P = 1000, seed 0): the time of one gradient (forward and backward pass
over the P images) against torch.func.vmap of F.conv2d and against its floor, the FLOPs of the convolutions
at the GFLOP/s torch reaches on the same products (the unfolded inputs times the weights) in the same run;
then a default gradient_flow run at alpha_tilde = 1e3 and 1e-2 for --cnn-seconds each, with its trial steps,
gradients per trial step, N_Delta and test error (3500 test points).
Usage: python benchmarks/train.py [--widths 10,30,100,300] [--converge] [--exponents=-8,20] [--rules robust]
                                  [--fidelity 8] [--seeds 16] [--max-steps N] [--relu] [--cnn]
                                  [--cnn-seconds 120,600] [--device cpu|cuda]
"""

import argparse
import time

import attrs
import numpy as np
import torch

import dlphase
from dlphase.ensemble_net import EnsembleNet, ensemble_of
from dlphase.grid_point import Run


#: the reference code's wall time for the 16 runs (seeds 0-15, one process per run, 2 cores) by alpha_tilde
REFERENCE_SECONDS = {-8: 16 * 112.4, 20: 429.0}


def spec_for(h, alpha_tilde, max_steps, device="cpu", activation="swish", seeds=16, **dynamics_options):
    dynamics = {"name": "gradient_flow", "loss": {"name": "soft_hinge", "beta": 20}, "max_steps": max_steps,
                **dynamics_options}
    return dlphase.Spec.from_dict({
        "dataset": {"name": "mnist", "pca": 10, "n_test": 1000},
        "architecture": {"name": "fc", "depth": 2, "activation": activation},
        "dynamics": dynamics,
        "grid": {"h": [h], "alpha_tilde": [alpha_tilde], "P": [1000], "seed": list(range(seeds))},
        "run": {"device": device}})


def members(spec):
    runs = [Run(spec, **p) for p in spec.grid.points()]
    return runs, [r.model for r in runs], runs[0].tensors


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(h, trials, device):
    spec = spec_for(h, 2.0 ** 20, trials, device, rule="robust", implicit=False)
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
    ap.add_argument("--exponents", default="-8,20",
                    help="alpha_tilde = 2^e of the --converge ensembles; write --exponents=-8,20, since a value that "
                         "starts with - needs the =")
    ap.add_argument("--rules", default="", help="rules to time besides the default (robust, chebyshev, reference)")
    ap.add_argument("--fidelity", type=int, default=8, help="seeds of the tight runs for the fidelity (0: none)")
    ap.add_argument("--seeds", type=int, default=16,
                    help="members of the --converge ensembles (seeds 0 to N-1); the reference's times are for 16")
    ap.add_argument("--max-steps", type=int, default=10 ** 7, help="trial-step budget of the --converge ensembles")
    ap.add_argument("--relu", action="store_true", help="with --converge, also relu at alpha_tilde = 1e-2")
    ap.add_argument("--cnn", action="store_true", help="measure the cnn's gradient and its runs")
    ap.add_argument("--cnn-seconds", default="120,600", help="wall budget of the cnn runs at 1e3 and 1e-2")
    args = ap.parse_args()
    if not 0 <= args.fidelity <= args.seeds:
        ap.error(f"--fidelity {args.fidelity} needs 0 to --seeds ({args.seeds}) seeds; lower --fidelity")
    if args.cnn:
        cnn(args)
        return
    P, d = 1000, 10
    widths = [int(w) for w in args.widths.split(",") if w]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, float64, P = {P}")
    if widths:
        print("throughput of 16 members (seeds 0-15):")
        print(f"{'h':>5} {'alone m-steps/s':>16} {'ensemble m-steps/s':>19} {'ratio':>6} "
              f"{'ens GFLOP/s':>12} {'bmm GFLOP/s':>12} {'fraction':>8}")
    for h in widths:
        trials = 300 if h <= 100 else 60
        alone, together = throughput(h, trials, args.device)
        flops = 2 * P * (2 * d * h + 3 * h * h + 3 * h)
        ens = together * flops / 1e9
        mm = matmul_gflops(h, P, args.device)
        print(f"{h:>5} {alone:>16.0f} {together:>19.0f} {together / alone:>5.1f}x {ens:>12.2f} {mm:>12.2f} "
              f"{ens / mm:>8.2f}")
    if args.converge:
        for e in (int(v) for v in args.exponents.split(",") if v):
            converge(f"2^{e}", 2.0 ** e, "swish", ["auto"] + [r for r in args.rules.split(",") if r], args,
                     REFERENCE_SECONDS.get(e))
        if args.relu:
            converge("1e-2", 1e-2, "relu", ["auto"] + [r for r in args.rules.split(",") if r], args)


def tightened(flow, factor=100.0):
    """``flow`` with every tolerance ``factor`` times smaller."""
    return attrs.evolve(flow, max_dgrad=flow.max_dgrad / factor, max_dout=flow.max_dout / factor,
                        max_error=flow.max_error / factor)


def train_counted(flow, models, data, device):
    """Train the ensemble; (wall seconds, results, gradient evaluations per member)."""
    cls = type(models[0].net).ensemble_class
    forward, calls = cls.forward, [0]

    def counted(self, params, x, grad=False):
        calls[0] += len(params[0]) if grad else 0
        return forward(self, params, x, grad)

    cls.forward = counted
    try:
        sync(device)
        t0 = time.perf_counter()
        res = flow.train_ensemble(models, data)
        sync(device)
        return time.perf_counter() - t0, res, calls[0] / len(models)
    finally:
        cls.forward = forward


def f_test(runs, data):
    with torch.no_grad():
        return torch.stack([r.model(data.x_test) for r in runs]).cpu().numpy()


def bootstrap(values, statistic, n=2000, seed=0):
    """The 95% interval of ``statistic`` over seeds (axis 0) by resampling the seeds."""
    rng = np.random.default_rng(seed)
    stats = [statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    return np.percentile(stats, [2.5, 97.5], axis=0)


def converge(label, at, activation, rules, args, ref=None):
    """The --seeds ensemble at alpha_tilde = ``at`` for each rule, then its fidelity against tight runs; ``ref``:
    the reference code's seconds for 16 seeds. The rules run first, so that their times print before the slow tight
    runs start."""
    e = f"{label} ({activation})"
    spec = spec_for(100, at, args.max_steps, args.device, activation, args.seeds)
    ref = ref if args.seeds == 16 else None
    k = args.fidelity
    ends = {}
    for rule in rules:
        runs, models, data = members(spec)
        wall, res, evals = train_counted(attrs.evolve(spec.dynamics, rule=rule), models, data, args.device)
        print(f"{args.seeds}-seed ensemble, h = 100, alpha_tilde = {e}, rule = {rule}: {wall:.1f} s"
              + (f" ({ref / wall:.1f}x the reference's {ref:.0f} s)" if ref else "")
              + f", statuses {sorted({r.status for r in res})}, {evals:.0f} gradients per member, trial steps "
              f"{min(r.steps + r.rejected for r in res)}-{max(r.steps + r.rejected for r in res)}", flush=True)
        if k:
            ends[rule] = f_test(runs[:k], data)
    if not k:
        return
    runs, models, data = members(spec)
    wall, _, evals = train_counted(tightened(spec.dynamics), models[:k], data, args.device)
    tight = f_test(runs[:k], data)
    print(f"alpha_tilde = {e}: {k} seeds with 100x tighter tolerances: {wall:.1f} s, {evals:.0f} gradients "
          f"per member", flush=True)
    y = data.y_test.cpu().numpy()
    lo, hi = bootstrap(tight, lambda v: v.mean(0))
    fluct = lambda v: np.sqrt(((v - v.mean(0)) ** 2).mean())  # noqa: E731
    flo, fhi = bootstrap(tight, fluct)
    err_t = ((tight * y) <= 0).mean(1)
    for rule, f in ends.items():
        dist = np.sqrt(((f - tight) ** 2).mean(1) / (tight ** 2).mean(1))
        err = ((f * y) <= 0).mean(1)
        inside = float(((f.mean(0) >= lo) & (f.mean(0) <= hi)).mean())
        print(f"  rule = {rule}, fidelity on {k} seeds: |f - f_tight| / |f_tight| per seed "
              f"{dist.min():.3f}-{dist.max():.3f} (mean {dist.mean():.3f}); test error {err.mean():.4f} against "
              f"{err_t.mean():.4f} (difference {abs(err.mean() - err_t.mean()):.4f}); <f> inside the tight runs' "
              f"bootstrap interval at {inside:.0%} of test points; fluctuations rms|f - <f>| {fluct(f):.4g} against "
              f"{fluct(tight):.4g} [{flo:.4g}, {fhi:.4g}]", flush=True)


def cnn_spec(alpha_tilde, seconds, device, n_test=3500):
    return dlphase.Spec.from_dict({
        "dataset": {"name": "mnist", "pca": 0, "n_test": n_test},
        "architecture": {"name": "cnn", "depth": 2, "activation": "swish"},
        "dynamics": {"name": "gradient_flow", "loss": {"name": "soft_hinge", "beta": 20}, "max_seconds": seconds},
        "grid": {"h": [32], "alpha_tilde": [alpha_tilde], "P": [1000], "seed": [0]},
        "run": {"device": device}})


def timed(f, repeat=3):
    """Seconds per call of ``f`` after one warm-up call."""
    f()
    t0 = time.perf_counter()
    for _ in range(repeat):
        f()
    return (time.perf_counter() - t0) / repeat


def cnn(args):
    """The cnn's gradient against its floor, and its runs in the lazy and the feature regime."""
    spec = cnn_spec(1e3, 1.0, args.device)
    runs, models, data = members(spec)
    x = data.x_train
    net = ensemble_of([models[0].net])
    params = net.stack([models[0].net])
    c = torch.randn(1, len(x), dtype=x.dtype, device=x.device)

    def gradient(ens):
        out, ctx = ens.forward(params, x, grad=True)
        ens.backward(params, ctx, c)
        sync(args.device)

    t_grad = timed(lambda: gradient(net))
    t_vmap = timed(lambda: gradient(EnsembleNet([models[0].net])))
    # the convolutions as products of unfolded inputs (n P_out, C k^2) with weights (C k^2, h): forward, the
    # weight gradient, and the input gradient of every layer but the first
    arch, h, k = spec.architecture, 32, spec.architecture.kernel_size
    shape, flops, widest = tuple(x.shape[1:]), 0.0, None
    for i in range(arch.depth):
        c_in, size = shape[0], shape[1:]
        out = tuple((s_ + 2 * arch.padding - k) // arch.layer_strides()[i] + 1 for s_ in size)
        rows, inner = len(x) * out[0] * out[1], c_in * k * k
        flops += 2 * rows * inner * h * (2 if i == 0 else 3)
        widest = (rows, inner) if widest is None or rows * inner > widest[0] * widest[1] else widest
        shape = (h,) + out
    a = torch.randn(*widest, dtype=x.dtype, device=x.device)
    b = torch.randn(widest[1], h, dtype=x.dtype, device=x.device)
    gflops = 2 * widest[0] * widest[1] * h / timed(lambda: (a @ b, sync(args.device)), repeat=5) / 1e9
    floor = flops / gflops / 1e9
    print(f"cnn h = {h}, depth {arch.depth}, {k} x {k} strides {list(arch.layer_strides())}, P = {len(x)}: "
          f"one gradient "
          f"{t_grad:.3f} s; its convolutions' {flops / 1e9:.2f} GFLOP at the {gflops:.1f} GFLOP/s of a "
          f"({widest[0]} x {widest[1]}) @ ({widest[1]} x {h}) product take {floor:.3f} s: {t_grad / floor:.1f}x the "
          f"floor (torch.func.vmap of F.conv2d: {t_vmap:.3f} s, {t_vmap / t_grad:.1f}x the hand-written pass)",
          flush=True)
    for alpha_tilde, seconds in zip((1e3, 1e-2), (float(v) for v in args.cnn_seconds.split(","))):
        spec = cnn_spec(alpha_tilde, seconds, args.device)
        runs, models, data = members(spec)
        wall, res, evals = train_counted(spec.dynamics, models, data, args.device)
        r = res[0]
        with torch.no_grad():
            f_train, f = runs[0].model(data.x_train), runs[0].model(data.x_test)
        n_delta = int((f_train * data.y_train < 1).sum())
        error = float((f * data.y_test <= 0).double().mean())
        trials = r.steps + r.rejected
        print(f"cnn alpha_tilde = {alpha_tilde:g}, {seconds:g} s budget: {r.status} after {wall:.0f} s, "
              f"{trials} trial steps ({wall / max(trials, 1):.2f} s and {evals / max(trials, 1):.1f} gradients "
              f"each), flow time {r.t:.3g}, N_Delta {n_delta}, test error {error:.4f}", flush=True)


if __name__ == "__main__":
    main()
