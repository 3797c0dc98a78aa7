"""The ensemble predictor <f> = mean over seeds of f, its test error eps(<f>) beside the mean and spread of eps(f),
the gap <eps(f)> - eps(<f>) and the fluctuations |f - <f>|, with bootstrap intervals over the seeds
as in the paper."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.errors import DlphaseError
from dlphase.specs import positive, probability

from .stats import bootstrap_weights, interval


def usable(cube: xr.Dataset) -> xr.DataArray:
    """Runs that count: present and not failed (a cube from a jamming search has "" where a width was not tried)."""
    if "status" not in cube:
        return xr.ones_like(cube["test_error"], dtype=bool)
    return (cube["status"] != "failed") & (cube["status"] != "")


def parameters(cube: xr.Dataset, over: str = "seed") -> xr.DataArray:
    """N over the dims it depends on besides ``over`` (the seed, on which it does not depend)."""
    n = cube["n_params"]
    return n.max(over) if over in n.dims else n


def jammed_anywhere(cube: xr.Dataset, over: str = "seed") -> xr.DataArray:
    """Whether any member (along ``over``) of a point ends with N_Delta > 0."""
    return ((cube["n_delta"] > 0) & usable(cube)).any(over)


def too_few(cube: xr.Dataset, dim: str, n: int, what: str | None = None) -> str | None:
    """Why an analysis that fits along ``dim`` cannot run on the cube (fewer than ``n`` values of it), or None."""
    if cube.sizes.get(dim, 1) < n:
        return f"the cube has fewer than {n} {what or f'values of {dim}'}"
    return None


def check_over(cube: xr.Dataset, over: str, variable: str = "f_test") -> None:
    if over not in cube[variable].dims or over == "test":
        dims = [d for d in cube[variable].dims if d != "test"]
        raise DlphaseError(f"cannot average over {over!r}: {variable} has dims {', '.join(dims)}; pick one with --over")


def ensemble_members(cube: xr.Dataset, over: str = "seed") -> dict[str, xr.DataArray]:
    """Per point of the other dims: <f>, eps(<f>), <eps(f)>, its spread, the gap, the RMS over the test set of
    f - <f> averaged over members, and the members counted. Failed runs are left out."""
    check_over(cube, over)
    ok = usable(cube)
    f = cube["f_test"].where(ok)
    y = cube["y_test"]
    eps = cube["test_error"].where(ok)
    mean_f = f.mean(over)
    eps_ens = (mean_f * y <= 0).where(mean_f.notnull()).mean("test")
    eps_mean = eps.mean(over)
    rms = np.sqrt(((f - mean_f) ** 2).mean("test"))
    return {"mean_f": mean_f, "ensemble_test_error": eps_ens, "test_error_mean": eps_mean,
            "test_error_std": eps.std(over, ddof=1), "gap": eps_mean - eps_ens, "fluctuation": rms.mean(over),
            "n_members": ok.sum(over)}


def _bootstrap(cube: xr.Dataset, over: str, n_boot: int, level: float, seed: int) -> dict[str, xr.DataArray]:
    """Percentile intervals of eps(<f>), <eps(f)> and the gap, resampling the members with replacement."""
    ok = usable(cube)
    f = cube["f_test"].where(ok)
    y = cube["y_test"].broadcast_like(f.isel({over: 0}, drop=True))
    eps = cube["test_error"].where(ok)
    rest = [d for d in f.dims if d not in (over, "test")]
    F = f.transpose(*rest, over, "test").values
    Y = y.transpose(*rest, "test").values
    E = eps.broadcast_like(f.isel(test=0, drop=True)).transpose(*rest, over).values
    shape = F.shape[:-2]
    out = {k: np.full(shape + (2,), np.nan) for k in ("ensemble_test_error", "test_error_mean", "gap")}
    for idx in np.ndindex(*shape):
        keep = np.isfinite(E[idx]) & np.isfinite(F[idx]).all(axis=-1)
        m = int(keep.sum())
        if m < 2:
            continue
        w = bootstrap_weights(m, n_boot, seed)
        ens = (((w @ F[idx][keep]) * Y[idx]) <= 0).mean(axis=-1)
        mean = w @ E[idx][keep]
        for key, samples in (("ensemble_test_error", ens), ("test_error_mean", mean), ("gap", mean - ens)):
            out[key][idx] = interval(samples, level)
    coords = {d: f[d] for d in rest}
    return {k: xr.DataArray(v, dims=(*rest, "bound"), coords=coords) for k, v in out.items()}


@attrs.frozen(kw_only=True)
class Ensemble(Analysis):
    """<f> over the seeds (or any dim named by ``over``), eps(<f>) beside the mean and spread of eps(f), and the gap
    <eps(f)> - eps(<f>), per (h, alpha_tilde, P), with bootstrap intervals over the members."""

    name: ClassVar[str] = "ensemble"
    requires: ClassVar = ("f_test", "y_test", "test_error")
    over: str = param(default="seed", doc="the dim averaged over (seed, or any other dim of f_test)")
    n_boot: int = param(default=1000, doc="bootstrap resamples of the members", validator=positive)
    level: float = param(default=0.95, doc="level of the bootstrap intervals", validator=probability)
    boot_seed: int = param(default=0, doc="seed of the bootstrap resampling")

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        stats = ensemble_members(cube, self.over)
        boot = _bootstrap(cube, self.over, self.n_boot, self.level, self.boot_seed)
        names = {
            "mean_f": f"<f>, the ensemble predictor: mean over {self.over} of f on the test points",
            "ensemble_test_error": "eps(<f>), test error of the ensemble predictor",
            "test_error_mean": "<eps(f)>, mean test error of the members",
            "test_error_std": "spread (standard deviation) of eps(f) over the members",
            "gap": "<eps(f)> - eps(<f>)",
            "fluctuation": "RMS over the test set of f - <f>, averaged over the members",
            "n_members": "members averaged (failed runs left out)",
        }
        out = xr.Dataset({k: stats[k].assign_attrs(long_name=doc) for k, doc in names.items()})
        for key, samples in boot.items():
            for i, bound in enumerate(("low", "high")):
                out[f"{key}_{bound}"] = samples.isel(bound=i, drop=True).assign_attrs(
                    long_name=f"{names[key]}: {bound} end of the {self.level:.0%} bootstrap interval")
        out.attrs.update({"analysis": self.name, "over": self.over, "level": self.level, "n_boot": self.n_boot})
        return out

    def summary(self, result: xr.Dataset) -> list[str]:
        best = result["ensemble_test_error"].where(result["n_members"] > 1)
        if not np.isfinite(best.values).any():
            return [f"fewer than 2 members over {self.over} at every point: no ensemble"]
        at = best.argmin(...)
        point = ", ".join(f"{d} = {result[d].values[i]:g}" for d, i in ((d, int(v)) for d, v in at.items()))
        return [f"lowest eps(<f>) = {float(best.isel(at)):.4f} at {point} (<eps(f)> = "
                f"{float(result['test_error_mean'].isel(at)):.4f})"]

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        from .curves import curves_by_alpha

        return curves_by_alpha(result, [("test_error_mean", "<eps(f)>", "solid"),
                                        ("ensemble_test_error", "eps(<f>)", "dashed")],
                               ylabel="test error", title="ensemble test error", backend=backend,
                               bands={"ensemble_test_error": ("ensemble_test_error_low", "ensemble_test_error_high")})


@dlphase.hookimpl
def register_analyses(register):
    register(Ensemble)
