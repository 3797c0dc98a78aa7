"""How far one member's run moves when only the arithmetic's rounding changes: alone, inside an ensemble of
``--members`` (the member first, seeds after it), with the other thread count, and once more alone (which
must be bitwise the same). Prints each run's accepted / rejected steps, wall time and the gap of its f on
the test set to the first run, relative to max |f|, beside the integrator's error E (against a run with
max_dgrad and max_dout ``--tighter`` times smaller) so that the gaps read on the scale docs/reproducibility.md
uses.

fc, L = 2, normalised swish, soft hinge (beta = 20), bundled MNIST parity 10 PCA, float64.
Usage: python benchmarks/reproducibility.py [--h 100] [--P 1000] [--alpha-tilde 2^-8] [--seed 0]
                                            [--members 2] [--tighter 10]
"""

import argparse
import time

import attrs
import torch

import dlphase
from dlphase.grid_point import Run


def spec_for(h, P, alpha_tilde, seeds):
    return dlphase.Spec.from_dict({
        "dataset": {"name": "mnist", "pca": 10, "n_test": 1000},
        "architecture": {"name": "fc", "depth": 2, "activation": "swish"},
        "dynamics": {"name": "gradient_flow", "loss": {"name": "soft_hinge", "beta": 20}},
        "grid": {"h": [h], "alpha_tilde": [alpha_tilde], "P": [P], "seed": seeds}})


def train(spec, flow, threads):
    """Train every point of ``spec`` as one ensemble with ``threads`` torch threads; the first member's
    (steps, rejected, f_test) and the wall time."""
    torch.set_num_threads(threads)
    runs = [Run(spec, **p) for p in spec.grid.points()]
    data = runs[0].tensors
    t0 = time.perf_counter()
    results = flow.train_ensemble([r.model for r in runs], data)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        f = runs[0].model(data.x_test)
    return results[0].steps, results[0].rejected, f, wall


def number(text):
    """A float, or a power written base^exponent (2^-8)."""
    base, _, exponent = text.partition("^")
    return float(base) ** float(exponent) if exponent else float(base)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--h", type=int, default=100)
    parser.add_argument("--P", type=int, default=1000)
    parser.add_argument("--alpha-tilde", type=number, default=2.0 ** -8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--tighter", type=float, default=10.0)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    alone = spec_for(args.h, args.P, args.alpha_tilde, [args.seed])
    batch = spec_for(args.h, args.P, args.alpha_tilde, [args.seed + k for k in range(args.members)])
    flow = alone.dynamics
    tight = attrs.evolve(flow, max_dgrad=flow.max_dgrad / args.tighter, max_dout=flow.max_dout / args.tighter)
    cases = [("alone", alone, flow, threads), (f"in an ensemble of {args.members}", batch, flow, threads),
             (f"alone, {other} thread(s)", alone, flow, other), ("alone again", alone, flow, threads),
             (f"alone, tolerances / {args.tighter:g} (E)", alone, tight, threads)]
    print(f"h = {args.h}, P = {args.P}, alpha_tilde = {args.alpha_tilde:g}, seed {args.seed}, {threads} thread(s)")
    ref = None
    for name, spec, dyn, n_threads in cases:
        steps, rejected, f, wall = train(spec, dyn, n_threads)
        if ref is None:
            ref, scale = f, float(f.abs().max())
        gap = float((f - ref).abs().max()) / scale
        same = "bitwise" if torch.equal(f, ref) else f"{gap:.2e}"
        print(f"{name:32s} {steps:7d} accepted {rejected:6d} rejected {wall:8.1f} s   |f - f_alone| / max|f| = {same}")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
