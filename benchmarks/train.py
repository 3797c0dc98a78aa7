"""Training throughput and time to convergence, against one net at a time, a bare matmul and the reference.

fc, L = 2, normalised swish, soft hinge, bundled MNIST parity 10 PCA, P = 1000, float64, 16 members
(seeds 0-15), every torch thread of this machine. For each h it prints
  - member-trial-steps per second of 16 nets one at a time and of the 16 as one ensemble, and the ratio
    (alpha_tilde = 2^20, plain explicit robust steps, so that every trial step costs the same and nobody
    converges inside the timed steps);
  - the GFLOP/s of the ensemble step (2 P (2 d h + 3 h^2 + 3 h) flops per member and trial step:
    forward, then the weight and input gradients) next to torch.bmm on (16, P, h) x (16, h, h)
    timed in the same run, and the fraction of it reached.
With --converge it trains the 16-seed ensemble at h = 100 to convergence for alpha_tilde = 2^-8 and 2^20
(--exponents) with the default gradient_flow (and with --rules, other rules too), and prints for each the
wall time, its ratio to the reference code's time for the same 16 runs (REFERENCE_SECONDS), the gradient
evaluations per member and the fidelity: against runs of the first --fidelity seeds with every tolerance
100 times tighter, each seed's relative RMS distance of f on the test set, the seed-averaged test error, the
seed average <f> and the fluctuations |f - <f>| with bootstrap 95% intervals.
Usage: python benchmarks/train.py [--widths 10,30,100,300] [--converge] [--exponents -8,20] [--rules robust]
                                  [--fidelity 8] [--max-steps N] [--device cpu|cuda]
"""

import argparse
import time

import attrs
import numpy as np
import torch

import dlphase
from dlphase.run import Run


#: the reference code's wall time for the 16 runs (seeds 0-15, one process per run, 2 cores) by alpha_tilde
REFERENCE_SECONDS = {-8: 16 * 112.4, 20: 429.0}


def spec_for(h, alpha_tilde, max_steps, device="cpu", **dynamics_options):
    dynamics = {"name": "gradient_flow", "loss": {"name": "soft_hinge", "beta": 20}, "max_steps": max_steps,
                **dynamics_options}
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
    ap.add_argument("--exponents", default="-8,20", help="alpha_tilde = 2^e of the --converge ensembles")
    ap.add_argument("--rules", default="", help="rules to time besides the default (robust, chebyshev, reference)")
    ap.add_argument("--fidelity", type=int, default=8, help="seeds of the tight runs for the fidelity (0: none)")
    ap.add_argument("--max-steps", type=int, default=10 ** 7, help="trial-step budget of the --converge ensembles")
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
            converge(e, ["auto"] + [r for r in args.rules.split(",") if r], args)


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


def converge(e, rules, args):
    """The 16-seed ensemble at alpha_tilde = 2^e for each rule, with its fidelity against tight runs."""
    at = 2.0 ** e
    spec = spec_for(100, at, args.max_steps, args.device)
    k = args.fidelity
    tight = None
    if k:
        runs, models, data = members(spec)
        wall, _, evals = train_counted(tightened(spec.dynamics), models[:k], data, args.device)
        tight = f_test(runs[:k], data)
        print(f"alpha_tilde = 2^{e}: {k} seeds with 100x tighter tolerances: {wall:.1f} s, {evals:.0f} gradients "
              f"per member", flush=True)
    for rule in rules:
        runs, models, data = members(spec)
        wall, res, evals = train_counted(attrs.evolve(spec.dynamics, rule=rule), models, data, args.device)
        ref = REFERENCE_SECONDS.get(e)
        print(f"16-seed ensemble, h = 100, alpha_tilde = 2^{e}, rule = {rule}: {wall:.1f} s"
              + (f" ({ref / wall:.1f}x the reference's {ref:.0f} s)" if ref else "")
              + f", statuses {sorted({r.status for r in res})}, {evals:.0f} gradients per member, trial steps "
              f"{min(r.steps + r.rejected for r in res)}-{max(r.steps + r.rejected for r in res)}", flush=True)
        if tight is None:
            continue
        f = f_test(runs[:k], data)
        y = data.y_test.cpu().numpy()
        dist = np.sqrt(((f - tight) ** 2).mean(1) / (tight ** 2).mean(1))
        err, err_t = ((f * y) < 0).mean(1), ((tight * y) < 0).mean(1)
        mean_f, mean_t = f.mean(0), tight.mean(0)
        lo, hi = bootstrap(tight, lambda v: v.mean(0))
        fluct = lambda v: np.sqrt(((v - v.mean(0)) ** 2).mean())  # noqa: E731
        flo, fhi = bootstrap(tight, fluct)
        inside = float(((mean_f >= lo) & (mean_f <= hi)).mean())
        print(f"  fidelity on {k} seeds: |f - f_tight| / |f_tight| per seed {dist.min():.3f}-{dist.max():.3f} "
              f"(mean {dist.mean():.3f}); test error {err.mean():.4f} against {err_t.mean():.4f} "
              f"(difference {abs(err.mean() - err_t.mean()):.4f}); <f> inside the tight runs' bootstrap interval "
              f"at {inside:.0%} of test points; fluctuations rms|f - <f>| {fluct(f):.4g} against {fluct(tight):.4g} "
              f"[{flo:.4g}, {fhi:.4g}]", flush=True)

if __name__ == "__main__":
    main()
