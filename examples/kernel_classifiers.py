"""Test errors of the kernel classifiers on MNIST parity 10 PCA, P = 1000: every kernel against every method.

Every kernel (ntk_init, ntk_final, ntk_infinite, laplace and gaussian with the reference's swish fc net,
h = 100; ntk_init and ntk_infinite of the same net with relu) under each kernel method (the kernel flow, svm,
ridge), on the setting of examples/reference_point.toml with 2000 test points. ntk_final trains the net at
alpha_tilde = 1e-2 (feature regime) first; the kernel flow gets 120 s of wall time.
Usage: python examples/kernel_classifiers.py [--n-test 2000]
"""

import argparse
import time
from pathlib import Path

from dlphase.grid_point import Run
from dlphase.specs import load_spec

SPEC = Path(__file__).with_name("reference_point.toml")
CASES = [("swish", "ntk_init"), ("swish", "ntk_final"), ("swish", "ntk_infinite"), ("swish", "laplace"),
         ("swish", "gaussian"), ("relu", "ntk_init"), ("relu", "ntk_infinite")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=2000)
    args = ap.parse_args()
    print(f"{'method':>7} {'net':>6} {'kernel':>13} {'test error':>10} {'status':>10} {'wall s':>7}  message")
    for method in ("kernel", "svm", "ridge"):
        for activation, kernel in CASES:
            overrides = [f"dynamics={{name='{method}', kernel='{kernel}'}}",
                         f"grid.alpha_tilde={1e-2 if kernel == 'ntk_final' else 1e3}",
                         f"architecture.activation='{activation}'", f"dataset.n_test={args.n_test}"]
            if method == "kernel":
                overrides.append("dynamics.max_seconds=120")
            t0 = time.perf_counter()
            ds = Run(load_spec(SPEC, overrides)).train()
            print(f"{method:>7} {activation:>6} {kernel:>13} {float(ds['test_error']):>10.4f} "
                  f"{ds['status'].item():>10} {time.perf_counter() - t0:>7.1f}  {ds['message'].item()}", flush=True)


if __name__ == "__main__":
    main()
