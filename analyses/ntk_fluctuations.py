"""Fluctuations of the NTK over initialisations: |Theta - <Theta>|_F / |<Theta>|_F over seeds against the number
of parameters N, at initialisation and at the end of training, in each regime. The claim is ~ N^(-1/4): the
relative fluctuations of Theta fall like h^(-1/2) at fixed depth."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.errors import DlphaseError
from dlphase.specs import probability

from .ensemble import too_few, usable
from .stats import common_slope_fit, power_law_fits

MOMENTS = {"init": "Theta_0", "end": "Theta_end"}


def relative_fluctuation(grams: np.ndarray) -> tuple[float, int]:
    """(mean over members of |Theta_s - <Theta>|_F / |<Theta>|_F, members) of ``grams`` (members, n, n); the
    members with NaN entries are left out; NaN under 2 members. The mean over s of the squared distance is
    (m - 1) / m times the variance, so the distances are scaled by sqrt(m / (m - 1)) to be unbiased in square."""
    keep = np.isfinite(grams).all(axis=(1, 2))
    g = grams[keep]
    m = len(g)
    if m < 2:
        return np.nan, m
    mean = g.mean(axis=0)
    dist = np.sqrt(((g - mean) ** 2).sum(axis=(1, 2))) * np.sqrt(m / (m - 1))
    return float(dist.mean() / np.linalg.norm(mean)), m


@attrs.frozen(kw_only=True)
class NTKFluctuations(Analysis):
    """|Theta - <Theta>|_F / |<Theta>|_F over seeds at each (h, alpha_tilde, P), for Theta_0 and Theta_end (the
    ``ntk`` observable with ``store_gram``), and its power law in N per alpha_tilde and pooled over alpha_tilde.
    Theta_0 does not depend on alpha_tilde, so its fluctuation is taken at the cube's first alpha_tilde only (NaN
    at the others). At the end, runs that ended with N_Delta > 0 (jammed or on their budget) are left out."""

    name: ClassVar[str] = "ntk_fluctuations"
    requires: ClassVar = ("ntk_gram_init", "ntk_gram_end", "n_params")
    over: str = param(default="seed", doc="the dim the fluctuations are taken over")
    level: float = param(default=0.95, doc="level of the confidence intervals", validator=probability)

    def applies(self, cube: xr.Dataset) -> str | None:
        return super().applies(cube) or too_few(cube, "h", 3, "widths")

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        if cube.sizes.get(self.over, 1) < 2:
            raise DlphaseError(f"fluctuations over {self.over!r} need at least 2 of them; the cube has "
                               f"{cube.sizes.get(self.over, 1)}")
        ok = usable(cube)
        converged = ok & (cube["n_delta"] == 0) if "n_delta" in cube else ok
        rest = [d for d in ("h", "alpha_tilde", "P") if d in cube.dims and d != self.over]
        out = xr.Dataset()
        for moment, keep in (("init", ok), ("end", converged)):
            g = cube[f"ntk_gram_{moment}"].where(keep)
            if moment == "init" and "alpha_tilde" in rest:
                # Theta_0 of a seed is the same at every alpha_tilde: one curve, not copies of it in the fits
                g = g.where(g["alpha_tilde"] == g["alpha_tilde"][0])
            g = g.transpose(*rest, self.over, "kernel_i", "kernel_j")
            values = np.full([g.sizes[d] for d in rest], np.nan)
            members = np.zeros(values.shape, dtype=int)
            for idx in np.ndindex(*values.shape):
                values[idx], members[idx] = relative_fluctuation(g.values[idx])
            coords = {d: g[d] for d in rest}
            out[f"fluctuation_{moment}"] = xr.DataArray(values, dims=rest, coords=coords, attrs={
                "long_name": f"|{MOMENTS[moment]} - <{MOMENTS[moment]}>|_F / |<{MOMENTS[moment]}>|_F, mean over "
                             f"{self.over}"})
            out[f"members_{moment}"] = xr.DataArray(members, dims=rest, coords=coords, attrs={
                "long_name": f"members in the fluctuation of {MOMENTS[moment]}"})
        n = cube["n_params"]
        n = n.max(self.over) if self.over in n.dims else n
        out["n_params"] = n.broadcast_like(out["fluctuation_end"]).assign_attrs(long_name="N, number of parameters")
        for moment in MOMENTS:
            fits, curves = power_law_fits(out["n_params"], out[f"fluctuation_{moment}"], "h", self.level)
            for key, doc in (("exponent", "exponent b of the fluctuation ~ N^b (the claim: -1/4)"),
                             ("low", f"low end of the {self.level:.0%} interval of b"),
                             ("high", f"high end of the {self.level:.0%} interval of b"),
                             ("prefactor", "A of A N^b"), ("n", "widths in the fit")):
                out[f"{moment}_{key}"] = fits[key].assign_attrs(long_name=f"{MOMENTS[moment]}: {doc}")
            pooled = common_slope_fit(curves, self.level)
            for key in ("exponent", "low", "high", "n", "curves"):
                out[f"{moment}_pooled_{key}"] = xr.DataArray(pooled[key], attrs={
                    "long_name": f"{MOMENTS[moment]}: one exponent for every curve (own prefactors): {key}"})
        out.attrs.update({"analysis": self.name, "over": self.over, "level": self.level})
        return out

    def summary(self, result: xr.Dataset) -> list[str]:
        from .curves import groups

        lines = []
        for moment, what in MOMENTS.items():
            b, lo, hi = (float(result[f"{moment}_pooled_{k}"]) for k in ("exponent", "low", "high"))
            lines.append(f"{what}: |Theta - <Theta>| / |<Theta>| ~ N^{b:.3f} [{lo:.3f}, {hi:.3f}] over "
                         f"{int(result[f'{moment}_pooled_n'])} points in {int(result[f'{moment}_pooled_curves'])} "
                         f"curves (the claim: -1/4)")
            for sel, label, exp in groups(result[f"{moment}_exponent"], None):
                if not np.isfinite(float(exp)):
                    continue
                lines.append(f"  {label}: {float(exp):.3f} [{float(result[f'{moment}_low'].sel(sel)):.3f}, "
                             f"{float(result[f'{moment}_high'].sel(sel)):.3f}] over "
                             f"{int(result[f'{moment}_n'].sel(sel))} widths")
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, groups, style

        items = []
        i = 0
        for moment, what in MOMENTS.items():
            for sel, label, fl in groups(result[f"fluctuation_{moment}"], "h"):
                color = PALETTE[i % len(PALETTE)]
                i += 1
                n = result["n_params"].sel(sel).values
                keep = np.isfinite(fl.values)
                items.append(hv.Scatter((n[keep], fl.values[keep]), "N", "relative fluctuation",
                                        label=f"{what}, {label}").opts(
                    color=color, **({"size": 8} if backend == "bokeh" else {"s": 40})))
                b, a = float(result[f"{moment}_exponent"].sel(sel)), float(result[f"{moment}_prefactor"].sel(sel))
                if np.isfinite(b):
                    grid = np.geomspace(n[keep].min(), n[keep].max(), 20)
                    items.append(hv.Curve((grid, a * grid ** b), "N", "relative fluctuation",
                                          label=f"N^{b:.2f}").opts(**style(backend, color,
                                                                          "solid" if moment == "init" else "dashed")))
        return finish(hv.Overlay(items), backend, "NTK fluctuations over initialisations", "N",
                      "|Theta - <Theta>|_F / |<Theta>|_F", logx=True, logy=True)


@dlphase.hookimpl
def register_analyses(register):
    register(NTKFluctuations)
