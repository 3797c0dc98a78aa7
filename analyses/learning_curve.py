"""Learning curves eps(P) ~ P^(-beta): the test error against P (or any other dim) in each
regime, and the fitted exponent beta with its confidence interval."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.specs import probability
from dlphase.errors import DlphaseError

from .ensemble import ensemble_members, jammed_anywhere, too_few, usable
from .stats import power_law_fits


@attrs.frozen(kw_only=True)
class LearningCurve(Analysis):
    """eps against ``x`` (P by default) for every other (h, alpha_tilde), mean over seeds and, with f_test, of the
    ensemble predictor; beta fitted on log-log axes as eps ~ x^(-beta), with its interval. Points where a member
    ended with N_Delta > 0 (jammed: the net is under-parametrised for that P, or stopped on its budget) are left
    out of the fits and listed; points with eps = 0 cannot enter a log fit and are counted apart."""

    name: ClassVar[str] = "learning_curve"
    requires: ClassVar = ("test_error",)
    x: str = param(default="P", doc="the dim the error is fitted against")
    over: str = param(default="seed", doc="the dim averaged over")
    level: float = param(default=0.95, doc="level of the confidence interval of beta", validator=probability)
    keep_jammed: bool = param(default=False, doc="fit points where a member ended with N_Delta > 0 too")

    def applies(self, cube: xr.Dataset) -> str | None:
        return super().applies(cube) or too_few(cube, self.x, 3)

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        for dim in (self.x, self.over):
            if dim not in cube["test_error"].dims:
                raise DlphaseError(f"{dim!r} is not a dim of test_error (dims: {', '.join(cube['test_error'].dims)}); "
                                   f"pick another with --x or --over")
        if self.x == self.over:
            raise DlphaseError(f"x and over are both {self.x!r}; fit against one dim and average over another")
        eps = cube["test_error"].where(usable(cube))
        out = xr.Dataset({"test_error_mean": eps.mean(self.over).assign_attrs(long_name="<eps(f)>, mean over seeds"),
                          "test_error_std": eps.std(self.over, ddof=1).assign_attrs(long_name="spread over seeds")})
        jammed = jammed_anywhere(cube, self.over) if "n_delta" in cube else \
            xr.zeros_like(out["test_error_mean"], dtype=bool)
        out["jammed"] = jammed.broadcast_like(out["test_error_mean"]).assign_attrs(
            long_name="a member ended with N_Delta > 0" + (" (kept in the fits)" if self.keep_jammed else
                                                          " (left out of the fits)"))
        fitted = ~out["jammed"] if not self.keep_jammed else xr.ones_like(out["jammed"])
        if "f_test" in cube and cube.sizes[self.over] > 1:
            out["ensemble_test_error"] = ensemble_members(cube, self.over)["ensemble_test_error"].assign_attrs(
                long_name="eps(<f>), test error of the mean over seeds of f")
        for field in [f for f in ("test_error_mean", "ensemble_test_error") if f in out]:
            tag = "beta" if field == "test_error_mean" else "beta_ensemble"
            da = out[field].where(fitted)
            fits, _ = power_law_fits(da[self.x], da, self.x, self.level)
            what = "<eps(f)>" if tag == "beta" else "eps(<f>)"
            # eps ~ x^(-beta): beta is minus the fitted exponent, and the interval flips
            out[tag] = (-fits["exponent"]).assign_attrs(long_name=f"beta of {what} ~ {self.x}^(-beta)")
            out[f"{tag}_low"] = (-fits["high"]).assign_attrs(
                long_name=f"low end of the {self.level:.0%} interval of {tag}")
            out[f"{tag}_high"] = (-fits["low"]).assign_attrs(
                long_name=f"high end of the {self.level:.0%} interval of {tag}")
            out[f"{tag}_prefactor"] = fits["prefactor"].assign_attrs(
                long_name=f"prefactor A of {what} = A {self.x}^(-beta)")
            out[f"{tag}_n"] = fits["n"].assign_attrs(long_name=f"points in the fit of {tag} (eps > 0, not jammed)")
        out.attrs.update({"analysis": self.name, "x": self.x, "over": self.over, "level": self.level,
                          "keep_jammed": int(self.keep_jammed)})
        return out

    def summary(self, result: xr.Dataset) -> list[str]:
        from .curves import groups

        lines = []
        for tag in [t for t in ("beta", "beta_ensemble") if t in result]:
            for sel, label, beta in groups(result[tag], None):
                lines.append(f"{tag} {label}: {float(beta):.3f} [{float(result[f'{tag}_low'].sel(sel)):.3f}, "
                             f"{float(result[f'{tag}_high'].sel(sel)):.3f}] over {int(result[f'{tag}_n'].sel(sel))} "
                             f"values of {result.attrs['x']}")
        x = result.attrs["x"]
        for sel, label, jammed in groups(result["jammed"], x):
            where = [f"{v:g}" for v in jammed[x].values[jammed.values.astype(bool)]]
            if where:
                verb = "kept" if result.attrs.get("keep_jammed") else "left out"
                lines.append(f"jammed (a member ended with N_Delta > 0), {verb} {label}: {x} = {', '.join(where)}")
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, groups, style

        x = result.attrs["x"]
        items = []
        for i, (sel, label, eps) in enumerate(groups(result["test_error_mean"], x)):
            color = PALETTE[i % len(PALETTE)]
            xs = eps[x].values
            items.append(hv.Scatter((xs, eps.values), x, "test error", label=f"{label}: <eps(f)>").opts(
                color=color, **({"size": 8} if backend == "bokeh" else {"s": 40})))
            beta, a = float(result["beta"].sel(sel)), float(result["beta_prefactor"].sel(sel))
            if np.isfinite(beta):
                grid = np.geomspace(xs.min(), xs.max(), 20)
                items.append(hv.Curve((grid, a * grid ** -beta), x, "test error",
                                      label=f"{label}: beta = {beta:.2f}").opts(**style(backend, color, "dashed")))
            if "ensemble_test_error" in result:
                ens = result["ensemble_test_error"].sel(sel).values
                items.append(hv.Curve((xs, ens), x, "test error", label=f"{label}: eps(<f>)").opts(
                    **style(backend, color, "dotted")))
        return finish(hv.Overlay(items), backend, f"learning curves: eps ~ {x}^(-beta)", x, "test error",
                      logx=True, logy=True)


@dlphase.hookimpl
def register_analyses(register):
    register(LearningCurve)
