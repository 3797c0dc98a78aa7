"""Fluctuation scaling past jamming: the RMS over the test set of f - <f>,
averaged over seeds, ~ N^(-1/4), and the gap <eps(f)> - eps(<f>) ~ N^(-1/2), fitted as power laws of N with
confidence intervals, jammed points and points near jamming left out (and said so)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.specs import probability

from .ensemble import ensemble_members, jammed_anywhere, parameters
from .stats import common_slope_fit, power_law_fits

QUANTITIES = {"fluctuation": "RMS over the test set of f - <f>, mean over seeds",
              "gap": "<eps(f)> - eps(<f>)"}


def jamming_point(cube: xr.Dataset, over: str = "seed") -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """(N per width, h_J, N_J): per point of the dims other than h and ``over``, h_J is the largest h where any
    member ends with N_Delta > 0 (NaN when none does; from a jamming search, the first all-converged width minus
    one if it is larger) and N_J its N."""
    n = parameters(cube, over)
    h_j = cube["h"].where(jammed_anywhere(cube, over)).max("h")
    if "h_unjammed" in cube:
        h_j = np.fmax(h_j, cube["h_unjammed"] - 1)
    n_j = n.where(cube["h"] == h_j).max("h") if "h" in n.dims else xr.full_like(h_j, np.nan, dtype=float)
    return n, h_j, n_j


@attrs.frozen(kw_only=True)
class FluctuationScaling(Analysis):
    """Power-law fits against N of the fluctuations |f - <f>| and of the gap <eps(f)> - eps(<f>), per alpha_tilde
    and with one exponent shared by all alpha_tilde, over the over-parametrised runs: jammed points and
    points with N < near_jamming * N_J (N_J: N at the widest width where a seed jammed) are left out."""

    name: ClassVar[str] = "fluctuation_scaling"
    requires: ClassVar = ("f_test", "y_test", "test_error", "n_delta", "n_params")
    over: str = param(default="seed", doc="the dim averaged over")
    near_jamming: float = param(default=2.0, doc="leave out N < near_jamming * N_J (N_J: N at the widest width "
                                                  "where a seed jammed)")
    level: float = param(default=0.95, doc="level of the confidence intervals of the exponents",
                         validator=probability)

    def __attrs_post_init__(self):
        if self.near_jamming < 1:
            raise ValueError(f"near_jamming = {self.near_jamming} must be >= 1")

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        stats = ensemble_members(cube, self.over)
        n, _, n_j = jamming_point(cube, self.over)
        jammed = jammed_anywhere(cube, self.over)
        near = (n < self.near_jamming * n_j) & ~jammed
        few = stats["n_members"] < 2
        reason = xr.where(jammed, "jammed", xr.where(near, f"near jamming (N < {self.near_jamming:g} N_J)",
                                                     xr.where(few, "fewer than 2 members", "")))
        out = xr.Dataset({
            "n_params": n.broadcast_like(reason).assign_attrs(long_name="N, number of parameters"),
            "fluctuation": stats["fluctuation"].assign_attrs(long_name=QUANTITIES["fluctuation"]),
            "gap": stats["gap"].assign_attrs(long_name=QUANTITIES["gap"]),
            "left_out": reason.astype(object).assign_attrs(long_name="why a point is not in the fits ('' if it is)"),
            "n_jamming": n_j.assign_attrs(long_name="N_J, N at the widest width where a member jammed"),
        })
        for q in QUANTITIES:
            used = out[q].where(reason == "")
            out[f"{q}_used"] = (used > 0).assign_attrs(long_name=f"points in the fit of {q} (> 0, not left out)")
            fits, curves = power_law_fits(out["n_params"], used, "h", self.level)
            for k, v in fits.items():
                doc = {"exponent": f"fitted exponent b of {q} ~ N^b",
                       "low": f"{q}: low end of the {self.level:.0%} interval of b",
                       "high": f"{q}: high end of the {self.level:.0%} interval of b",
                       "prefactor": f"{q}: fitted prefactor A of A N^b", "n": f"{q}: points in the fit"}[k]
                out[f"{q}_{k}"] = v.assign_attrs(long_name=doc)
            pooled = common_slope_fit(curves, self.level)
            for k in ("exponent", "low", "high", "n", "curves"):
                out[f"{q}_pooled_{k}"] = xr.DataArray(pooled[k], attrs={
                    "long_name": f"{q}: one exponent for every curve (own prefactors): {k}"})
        out.attrs.update({"analysis": self.name, "over": self.over, "level": self.level,
                          "near_jamming": self.near_jamming})
        return out

    def summary(self, result: xr.Dataset) -> list[str]:
        lines = []
        for q, expected in (("fluctuation", "-1/4"), ("gap", "-1/2")):
            b, lo, hi = (float(result[f"{q}_pooled_{k}"]) for k in ("exponent", "low", "high"))
            lines.append(f"{q}: N^{b:.3f}, {result.attrs['level']:.0%} interval [{lo:.3f}, {hi:.3f}] over "
                         f"{int(result[f'{q}_pooled_n'])} points in {int(result[f'{q}_pooled_curves'])} curves "
                         f"(the paper: {expected})")
            exp = result[f"{q}_exponent"]
            for sel, label, _ in _each(exp):
                lines.append(f"  {label}: {float(exp.sel(sel)):.3f} [{float(result[f'{q}_low'].sel(sel)):.3f}, "
                             f"{float(result[f'{q}_high'].sel(sel)):.3f}], {int(result[f'{q}_n'].sel(sel))} points")
        left = result["left_out"]
        counts = {r: int((left == r).sum()) for r in np.unique(left.values.astype(str)) if r}
        if counts:
            lines.append("left out: " + ", ".join(f"{n} {r}" for r, n in counts.items()))
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, largest_P, stack, style

        result = largest_P(result)
        panels = []
        for q, title in (("fluctuation", "|f - <f>| against N"), ("gap", "<eps(f)> - eps(<f>) against N")):
            items = []
            for i, (sel, label, _) in enumerate(_each(result[f"{q}_exponent"])):
                color = PALETTE[i % len(PALETTE)]
                r = result.sel(sel)
                x, y, used = r["n_params"].values, r[q].values, r[f"{q}_used"].values.astype(bool)
                ok = np.isfinite(y) & (y > 0)
                items.append(hv.Scatter((x[ok & used], y[ok & used]), "N", q, label=f"{label} (fitted)").opts(
                    color=color, size=8) if backend == "bokeh" else
                    hv.Scatter((x[ok & used], y[ok & used]), "N", q, label=f"{label} (fitted)").opts(color=color, s=40))
                if (ok & ~used).any():
                    items.append(hv.Scatter((x[ok & ~used], y[ok & ~used]), "N", q, label=f"{label} (left out)").opts(
                        color=color, alpha=0.35, **({"size": 6} if backend == "bokeh" else {"s": 20})))
                b, a = float(r[f"{q}_exponent"]), float(r[f"{q}_prefactor"])
                if np.isfinite(b) and used.any():
                    xs = np.geomspace(x[used].min(), x[used].max(), 20)
                    items.append(hv.Curve((xs, a * xs ** b), "N", q, label=f"{label}: N^{b:.2f}").opts(
                        **style(backend, color, "dashed")))
            panels.append(finish(hv.Overlay(items), backend, title, "N (parameters)", q, logx=True, logy=True))
        return stack(panels, backend)


def _each(da: xr.DataArray):
    """(selection, label, value) for every point of ``da``'s dims."""
    from .curves import groups

    return groups(da, None)


@dlphase.hookimpl
def register_analyses(register):
    register(FluctuationScaling)
