"""`dlphase kernel`: the kernel set and its Gram matrices in a netCDF file, checked against the run's own nets."""

import numpy as np
import torch
import xarray as xr

from dlphase.ensemble_net import ntk_by_loop
from dlphase.grid_point import Run
from dlphase.specs import load_spec
from tests.conftest import TINY_SPEC, run_cli, write
from tests.test_cli_errors import assert_clean_error

ONE_POINT = ["--set", "grid.h=[16]", "--set", "grid.alpha_tilde=[1.0]", "--set", "grid.seed=[1]",
             "--set", "dataset.n_kernel=30"]


def test_kernel_export(tmp_path):
    spec_path = write(tmp_path / "tiny.toml", TINY_SPEC)
    out = tmp_path / "K.nc"
    res = run_cli("kernel", spec_path, "-o", out, *ONE_POINT, "--trained")
    assert res.returncode == 0, res.stderr
    assert "30 kernel points, ntk_init, ntk_end, ntk_infinite, nngp_infinite" in res.stdout
    with xr.open_dataset(out) as ds:
        ds = ds.load()
    run = Run(load_spec(spec_path, [a for a in ONE_POINT if a != "--set"]))
    xk = torch.as_tensor(run.data.x_kernel)
    np.testing.assert_array_equal(ds["x_kernel"].values, run.data.x_kernel.reshape(30, -1))
    np.testing.assert_array_equal(ds["y_kernel"].values, run.data.y_kernel)
    np.testing.assert_allclose(ds["ntk_init"].values, ntk_by_loop(run.model.net0, xk).numpy(), rtol=1e-10)
    limit = run.spec.architecture.infinite_kernels(xk)
    np.testing.assert_allclose(ds["ntk_infinite"].values, limit["ntk"].numpy(), rtol=1e-12)
    run.train()
    np.testing.assert_allclose(ds["ntk_end"].values, ntk_by_loop(run.model.net, xk).numpy(), rtol=1e-10)
    assert ds.attrs["train_status"] in ("converged", "budget") and "spec_toml" in ds.attrs
    assert float(ds["h"]) == 16 and ds["ntk_init"].dims == ("kernel_i", "kernel_j")


def test_kernel_export_errors(tmp_path):
    spec_path = write(tmp_path / "tiny.toml", TINY_SPEC)
    out = tmp_path / "K.nc"
    assert_clean_error(run_cli("kernel", spec_path, "-o", out), "dlphase kernel takes one point")
    assert_clean_error(run_cli("kernel", spec_path, "-o", out, *ONE_POINT[:-2], "--set", "dataset.n_kernel=0"),
                       "served no kernel points; set dataset.n_kernel")
    assert_clean_error(run_cli("kernel", spec_path, "-o", tmp_path / "K.txt", *ONE_POINT), "must end in .nc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]
