"""Members x steps per second: the experimental batched ensemble against one run at a time.

Gradient flow, fc L = 2, normalised swish, soft hinge, bundled MNIST parity 10 PCA, P = 300,
h = 8, alpha_tilde in (1e-2, 1, 1e3) x 2 seeds = 6 members, 3000 trial steps each, one thread.
Also reports how many members end on exactly the same step sequence as alone.
Usage: python benchmarks/ensemble.py [h]
"""

import sys
import time

import numpy as np
import torch

import dlphase
from dlphase.run import execute, execute_group


def main(h: int = 8):
    torch.set_num_threads(1)
    raw = {"dataset": {"name": "mnist", "pca": 10, "n_test": 200},
           "architecture": {"name": "fc", "depth": 2, "activation": "swish"},
           "dynamics": {"name": "gradient_flow", "loss": "soft_hinge", "max_steps": 3000},
           "grid": {"h": [h], "alpha_tilde": [1e-2, 1.0, 1e3], "P": [300], "seed": [0, 1]}}
    spec = dlphase.Spec.from_dict(raw)
    points = spec.grid.points()
    execute(spec, points[0])  # warm-up: data loading, first-call costs
    t0 = time.perf_counter()
    alone = [execute(spec, p) for p in points]
    t_alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = execute_group(spec, points)
    t_together = time.perf_counter() - t0
    trials = sum(int(d["steps"]) + int(d["rejected"]) for d in alone)
    same = sum(int(a["steps"]) == int(b["steps"]) and int(a["rejected"]) == int(b["rejected"])
               for a, b in zip(alone, together))
    worst = max(float(np.abs(a["f_test"].values - b["f_test"].values).max() / np.abs(a["f_test"].values).max())
                for a, b in zip(alone, together))
    print(f"h = {h}, {len(points)} members, {trials} member-trial-steps")
    print(f"one at a time: {t_alone:.2f} s  ({trials / t_alone:.0f} member-steps/s)")
    print(f"ensemble:      {t_together:.2f} s  ({trials / t_together:.0f} member-steps/s)")
    print(f"ratio:         {t_alone / t_together:.2f}x")
    print(f"members with the same step sequence as alone: {same} of {len(points)}; "
          f"worst relative f_test difference: {worst:.2g}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
