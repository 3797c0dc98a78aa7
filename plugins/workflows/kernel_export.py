"""``dlphase kernel``: the kernel set of one grid point and its Gram matrices, as a netCDF file for analysis
elsewhere: inputs ``x_kernel`` (flattened; ``input_shape`` in the attributes), labels ``y_kernel``, the empirical
NTK of f~ at initialisation (and at the end of training with ``trained``), and the infinite-width NTK and
NNGP where the architecture has them (fc)."""

from __future__ import annotations

import datetime

import numpy as np
import torch
import xarray as xr

from dlphase.errors import DataError
from dlphase.net import fast_paths
from dlphase.grid_point import Run
from dlphase.specs import GRID_DIMS, Spec


def kernel_dataset(spec: Spec, trained: bool = False) -> xr.Dataset:
    """The kernel-set Dataset of the spec's single grid point (see the module's docstring)."""
    from dlphase.cube import provenance
    from dlphase.ensemble_net import ntk_of

    run = Run(spec)
    x = run.data.x_kernel
    if x is None or len(x) == 0:
        raise DataError(f"dataset {spec.dataset.name!r} served no kernel points; set dataset.n_kernel (e.g. 500)")
    xk = torch.as_tensor(np.asarray(x), dtype=run.dtype, device=run.device)

    def ntk(net):
        return ntk_of(net, xk).double().cpu().numpy()

    pair = ("kernel_i", "kernel_j")
    variables = {
        "x_kernel": (("kernel_i", "feature"), np.asarray(x, dtype=np.float64).reshape(len(x), -1),
                     {"long_name": "kernel-set inputs, flattened"}),
        "y_kernel": (("kernel_i",), np.asarray(run.data.y_kernel, dtype=np.float64),
                     {"long_name": "kernel-set labels +-1"}),
        "ntk_init": (pair, ntk(run.model.net0), {"long_name": "empirical NTK Theta_0 of f~"}),
    }
    if run.data.classes_kernel is not None:
        variables["class_kernel"] = (("kernel_i",), np.asarray(run.data.classes_kernel),
                                     {"long_name": "original class of each kernel point"})
    with torch.no_grad():
        limit = fast_paths(run.model.net).infinite_kernels(xk.double())
    if limit is not None:
        variables["ntk_infinite"] = (pair, limit["ntk"].cpu().numpy(), {"long_name": "infinite-width NTK of f~"})
        variables["nngp_infinite"] = (pair, limit["nngp"].cpu().numpy(),
                                      {"long_name": "infinite-width NNGP kernel (covariance of f~ at init)"})
    attrs = {}
    if trained:
        ds = run.train()
        variables["ntk_end"] = (pair, ntk(run.model.net), {"long_name": "empirical NTK Theta_end of f~ after training"})
        for key in ("status", "steps", "t"):
            attrs[f"train_{key}"] = str(ds[key].item())
        if "test_error" in ds:
            attrs["train_test_error"] = float(ds["test_error"])
    out = xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()},
                     coords={k: run.point[k] for k in GRID_DIMS})
    out.attrs.update({"title": "dlphase kernel set", "spec_toml": spec.to_toml(),
                      "input_shape": " ".join(str(s) for s in run.data.input_shape),
                      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      **provenance(), **attrs,
                      **{f"data_{k}": str(v) for k, v in run.data.attrs.items()}})
    return out
