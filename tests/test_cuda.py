"""The engine on a GPU: every architecture, dynamics, coefficient rule and observable with run.device = "cuda"
gives the cube the same sweep gives on the CPU.

These tests run only where torch sees a CUDA device (they are skipped elsewhere); benchmarks/gpu.sh runs them
with the engine's benchmark. Both sides compute in float64, so they differ by the order of reductions alone.
The budgets are short, so that the accept/reject decisions of the two sides (which a last-bit difference can
flip) stay the same, and the nets are small, so that the file runs in about a minute.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import dlphase

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FC = {"dataset": {"name": "mnist", "pca": 5, "n_test": 200, "n_kernel": 40},
      "architecture": {"name": "fc", "depth": 2, "activation": "swish"},
      "dynamics": {"name": "gradient_flow", "max_steps": 300},
      "observables": {"names": ["errors"]},
      "grid": {"h": [16], "alpha_tilde": [1e-2, 1e3], "P": [100], "seed": [0, 1]}}


def spec_with(**sections):
    """The fc spec with whole sections replaced."""
    return copy.deepcopy({**FC, **sections})


CASES = {
    # the default flow: robust steps, implicit coefficients, chebyshev steps for the feature-regime members
    "fc-auto": spec_with(observables={"names": ["errors", "ntk", "first_layer", "ntk_kpca", "trajectory"],
                                      "ntk": {"top": 5, "store_gram": True}}),
    "fc-reference": spec_with(dynamics={"name": "gradient_flow", "rule": "reference", "max_steps": 300}),
    # the plain hinge's sliding-mode forces (box QP on NTK blocks) and relu's kinks
    "fc-relu-hinge": spec_with(architecture={"name": "fc", "depth": 2, "activation": "relu"},
                               dynamics={"name": "gradient_flow", "loss": "hinge", "max_steps": 300}),
    "fc-hessian": spec_with(architecture={"name": "fc", "depth": 1, "activation": "tanh"},
                            observables={"names": ["errors", "hessian_spectrum"]},
                            grid={"h": [6], "alpha_tilde": [1.0], "P": [40], "seed": [0]}),
    "cnn": {"dataset": {"name": "mnist", "pca": 0, "n_test": 50, "n_kernel": 20},
            "architecture": {"name": "cnn", "depth": 2, "activation": "swish"},
            "dynamics": {"name": "gradient_flow", "max_steps": 60},
            "observables": {"names": ["errors", "ntk"]},
            "grid": {"h": [4], "alpha_tilde": [1.0, 1e3], "P": [40], "seed": [0]}},
    "mean_field": spec_with(architecture={"name": "mean_field"}),
    "gd": spec_with(dynamics={"name": "gd", "lr": 0.5, "max_steps": 300}),
    "sgd": spec_with(dynamics={"name": "sgd", "lr": 0.1, "batch_size": 20, "max_steps": 300}),
    "kernel": spec_with(dynamics={"name": "kernel", "kernel": "ntk_init", "max_steps": 300}),
}


def spec_on(raw, device):
    """The spec of ``raw`` with run.device = ``device``."""
    raw = copy.deepcopy(raw)
    raw["run"] = {**raw.get("run", {}), "device": device}
    return dlphase.specs.build_spec(raw)


def sweep_on(raw, device, path):
    return dlphase.sweep(spec_on(raw, device), path, progress=False)


@pytest.mark.parametrize("name", list(CASES))
def test_a_sweep_on_the_gpu_matches_the_cpu(name, tmp_path):
    cpu = sweep_on(CASES[name], "cpu", tmp_path / "cpu.nc")
    gpu = sweep_on(CASES[name], "cuda", tmp_path / "gpu.nc")
    assert set(cpu.data_vars) == set(gpu.data_vars)
    for var in cpu.data_vars:
        a, b = cpu[var].values, gpu[var].values
        if a.dtype.kind not in "fiu" or "seconds" in var:   # text, and the wall times
            continue
        scale = np.nanmax(np.abs(a)) if np.isfinite(a).any() else 1.0
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-8 * max(scale, 1.0), equal_nan=True,
                                   err_msg=f"{name}: {var}")


def test_a_trained_runs_parameters_and_data_stay_on_the_gpu():
    """A trained run's parameters and training data live on the device the spec names, not on the CPU."""
    from dlphase.grid_point import Run

    run = Run(spec_on(CASES["fc-auto"], "cuda"), h=16, alpha_tilde=1e-2, P=100, seed=0)
    run.train()
    assert all(p.device.type == "cuda" for p in run.model.parameters())
    assert run.tensors.x_train.device.type == "cuda"
