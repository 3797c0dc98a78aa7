"""The jamming transition in the (P, N) plane: N*(P) from the jamming widths at several P and its power law (linear
for random labels, sub-linear for structured data), the jump of N_Delta / N at h* against the final loss, and the
bound N* <= P / C_0 with C_0 = N_minus / N measured from the Hessian at h*."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.specs import probability

from .ensemble import parameters, too_few, usable
from .stats import common_slope_fit, power_law_fits

#: the plot of N_Delta / N against the final loss shows runs up to this ratio
TOP = 1.5


def jamming_widths(cube: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """(h*, h_next) over (alpha_tilde, P): the largest width where every seed ends with N_Delta > 0 and the next
    width tried above it; the line's own where the cube is a jamming search (``h_star``), else read off the
    widths of a sweep (NaN where no width jammed everywhere, or none above it was tried)."""
    if "h_star" in cube:
        return cube["h_star"], cube["h_next"]
    ok = usable(cube)
    tried = ok.any("seed")
    everywhere = ((cube["n_delta"] > 0) | ~ok).all("seed") & tried
    h = cube["h"].broadcast_like(tried)
    h_star = h.where(everywhere).max("h")
    h_next = h.where(tried & (h > h_star)).min("h")
    return h_star, h_next


def at_width(da: xr.DataArray, cube: xr.Dataset, width: xr.DataArray) -> xr.DataArray:
    """``da`` (over h and more) at the width ``width`` gives per point of its dims (NaN where that is NaN)."""
    return da.where(cube["h"] == width).max("h")


def descent_directions(eig: xr.DataArray, tol: float) -> xr.DataArray:
    """How many eigenvalues of H (``eig``, dim hess_eig) lie below -tol max |eigenvalue|: 0 at a minimum of U; NaN
    where there is no spectrum."""
    scale = np.abs(eig).max("hess_eig")
    return (eig < -tol * scale).sum("hess_eig").where(scale.notnull())


@attrs.frozen(kw_only=True)
class JammingPlane(Analysis):
    """Per (alpha_tilde, P): N* between N(h*) and N(h_next), N_Delta / N at h*, C_0 = N_minus / N at h* (where the
    cube holds the Hessian there) and the bound P / C_0; per alpha_tilde the power law N* ~ P^b (with the fits
    through both ends of the bracket, which bound what the widths tried allow) and C_0 over every P and seed.
    Every run's N_Delta / N beside its final loss and U is kept for the plot."""

    name: ClassVar[str] = "jamming_plane"
    requires: ClassVar = ("n_delta", "n_params")
    level: float = param(default=0.95, doc="level of the confidence intervals of the exponents",
                         validator=probability)
    minimum_tol: float = param(default=1e-6, doc="an eigenvalue of H below -minimum_tol max |eigenvalue| is a "
                                                 "descent direction: that run did not reach a minimum of U")

    def applies(self, cube: xr.Dataset) -> str | None:
        return super().applies(cube) or too_few(cube, "P", 3, "training-set sizes P") or too_few(
            cube, "h", 2, "widths h")

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        ok = usable(cube)
        h_star, h_next = jamming_widths(cube)
        n = parameters(cube)
        n_low, n_high = at_width(n, cube, h_star), at_width(n, cube, h_next)
        out = xr.Dataset({
            "h_star": h_star.assign_attrs(long_name="h*: largest width where every seed ends with N_Delta > 0"),
            "h_next": h_next.assign_attrs(long_name="the next width tried above h*"),
            "n_star_low": n_low.assign_attrs(long_name="N at h* (N* lies above)"),
            "n_star_high": n_high.assign_attrs(long_name="N at h_next (N* lies at or below)"),
            "n_star": np.sqrt(n_low * n_high).assign_attrs(
                long_name="N*: geometric mean of N at h* and at h_next"),
        })
        ratio = (cube["n_delta"] / n).where(ok)
        out["n_delta_over_n"] = ratio.assign_attrs(long_name="N_Delta / N of every run at the end")
        if "train_loss" in cube:
            out["final_loss"] = cube["train_loss"].where(ok).assign_attrs(long_name="training loss at the end")
        if "hess_energy" in cube and "h" in cube["hess_energy"].dims:
            out["final_energy"] = cube["hess_energy"].where(ok).assign_attrs(
                long_name="U (the Hessian's energy) at the end")
        star_ratio = at_width(ratio, cube, h_star)
        out["n_delta_over_n_star"] = star_ratio.assign_attrs(long_name="N_Delta / N at h*, per seed")
        out["jump"] = star_ratio.mean("seed").assign_attrs(
            long_name="N_Delta / N at h*, mean over seeds (hypostatic: strictly between 0 and 1)")

        P = out["P"].astype(float)
        names = {"n_star": "N*", "n_star_low": "N(h*)", "n_star_high": "N(h_next)"}
        curves = {}
        for key, what in names.items():
            fits, curves[key] = power_law_fits(P, out[key], "P", self.level)
            tag = "" if key == "n_star" else key.replace("n_star", "")
            for k, doc in (("exponent", f"exponent b of {what} ~ P^b (1: linear, as for random labels)"),
                           ("low", f"low end of the {self.level:.0%} interval of b"),
                           ("high", f"high end of the {self.level:.0%} interval of b"),
                           ("prefactor", f"A of {what} = A P^b"), ("n", "values of P in the fit")):
                if tag and k not in ("exponent", "prefactor"):
                    continue
                out[f"{k}{tag}"] = fits[k].assign_attrs(long_name=doc)
        pooled = common_slope_fit(curves["n_star"], self.level)
        for k in ("exponent", "low", "high", "n", "curves"):
            out[f"pooled_{k}"] = xr.DataArray(pooled[k], attrs={
                "long_name": f"one exponent of N* ~ P^b for every alpha_tilde (own prefactors): {k}"})

        if "hess_n_minus" in cube:
            n_minus = cube["hess_n_minus"]
            n_delta_h = cube["hess_n_delta"] if "hess_n_delta" in cube else cube["n_delta"]
            if "h" in n_minus.dims:  # a sweep: the Hessian of every run, read at h*
                n_minus = at_width(n_minus.where(ok), cube, h_star)
                n_delta_h = at_width(n_delta_h.where(ok), cube, h_star)
            c0 = (n_minus / n_low).where(n_minus.notnull())
            out["c0_per_seed"] = c0.assign_attrs(long_name="C_0 = N_minus / N at h* (N_minus: negative "
                                                           "eigenvalues of Hp)")
            out["c0"] = c0.mean("seed").assign_attrs(long_name="C_0 at h*, mean over seeds")
            out["c0_pooled"] = c0.mean(["P", "seed"]).assign_attrs(long_name="C_0 at h*, mean over P and seeds")
            out["bound"] = (P / out["c0_pooled"]).assign_attrs(long_name="P / C_0: the bound on N*")
            out["bound_ratio"] = (out["n_star"] / out["bound"]).assign_attrs(
                long_name="N* C_0 / P: at most 1 where the bound N* <= P / C_0 holds")
            out["stable"] = (n_delta_h >= n_minus).where(n_minus.notnull()).assign_attrs(
                long_name="N_Delta >= N_minus at h* (a stable minimum needs it): 1 or 0, NaN without a spectrum")
        if "hess_eig_h" in cube:
            eig = cube["hess_eig_h"]
            if "h" in eig.dims:
                eig = at_width(eig.where(ok), cube, h_star)
            out["descent_directions"] = descent_directions(eig, self.minimum_tol).assign_attrs(
                long_name=f"eigenvalues of H at h* below -{self.minimum_tol:g} max |eigenvalue|: 0 at a minimum of U")
        out.attrs.update({"analysis": self.name, "level": self.level})
        return out

    def summary(self, result: xr.Dataset) -> list[str]:
        from .curves import groups

        lines = []
        for sel, label, b in groups(result["exponent"], None):
            lo, hi = float(result["low"].sel(sel)), float(result["high"].sel(sel))
            b = float(b)
            if not np.isfinite(b):
                lines.append(f"{label}: N*(P) has fewer than 3 values of P with a bracketed transition")
                continue
            kind = "linear" if lo <= 1 <= hi else ("sub-linear" if hi < 1 else "super-linear")
            lines.append(f"{label}: N* ~ P^{b:.3f} [{lo:.3f}, {hi:.3f}] over {int(result['n'].sel(sel))} P: {kind} "
                         f"(through N(h*): {float(result['exponent_low'].sel(sel)):.3f}, through N(h_next): "
                         f"{float(result['exponent_high'].sel(sel)):.3f})")
            jump = result["jump"].sel(sel).values
            if np.isfinite(jump).any():
                lines.append(f"  N_Delta / N at h*: {np.nanmin(jump):.3f} to {np.nanmax(jump):.3f} over P "
                             f"(hypostatic jamming: below 1)")
            if "c0" in result:
                c0 = float(result["c0_pooled"].sel(sel))
                ratio = result["bound_ratio"].sel(sel).values
                held = int((ratio <= 1).sum())
                stable = result["stable"].sel(sel).values
                lines.append(f"  C_0 = N_minus / N at h* = {c0:.3f} (per P: "
                             f"{', '.join(f'{v:.3f}' for v in result['c0'].sel(sel).values)}); N* <= P / C_0 holds "
                             f"at {held} of {int(np.isfinite(ratio).sum())} P; N_Delta >= N_minus at "
                             f"{int(np.nansum(stable))} of {int(np.isfinite(stable).sum())} runs")
            if "descent_directions" in result:
                d = result["descent_directions"].sel(sel).values
                n_min, n_all = int((d == 0).sum()), int(np.isfinite(d).sum())
                text = f"  runs at h* that reached a minimum of U (no eigenvalue of H < 0): {n_min} of {n_all}"
                if n_min < n_all:
                    text += (f"; the others still descend along up to {int(np.nanmax(d))} directions (their budget "
                             f"ended first), so N_Delta >= N_minus need not hold there")
                lines.append(text)
        if np.isfinite(float(result["pooled_exponent"])) and int(result["pooled_curves"]) > 1:
            lines.append(f"every alpha_tilde: N* ~ P^{float(result['pooled_exponent']):.3f} "
                         f"[{float(result['pooled_low']):.3f}, {float(result['pooled_high']):.3f}]")
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, groups, stack, style

        bokeh = backend == "bokeh"
        plane, jump = [], []
        for i, (sel, label, _) in enumerate(groups(result["exponent"], None)):
            color = PALETTE[i % len(PALETTE)]
            r = result.sel(sel)
            P = r["P"].values.astype(float)
            for key, what, dash in (("n_star_low", "N(h*)", "dotted"), ("n_star_high", "N(h_next)", "dotted")):
                plane.append(hv.Curve((P, r[key].values), "P", "N", label=f"{label}: {what}").opts(
                    **style(backend, color, dash, 1.0)))
            plane.append(hv.Scatter((P, r["n_star"].values), "P", "N", label=f"{label}: N*").opts(
                color=color, **({"size": 8} if bokeh else {"s": 40})))
            b, a = float(r["exponent"]), float(r["prefactor"])
            if np.isfinite(b):
                plane.append(hv.Curve((P, a * P ** b), "P", "N", label=f"{label}: N* ~ P^{b:.2f}").opts(
                    **style(backend, color, "dashed")))
            if "bound" in r and np.isfinite(r["bound"].values).any():
                plane.append(hv.Curve((P, r["bound"].values), "P", "N",
                                      label=f"{label}: P / C_0, C_0 = {float(r['c0_pooled']):.2f}").opts(
                    **style(backend, color, "dotted", 2.5)))
        # N_Delta / N against the final loss, coloured by width (fixed N), as the paper's Fig. 8B; the axis stops at
        # TOP, where the jump from 0 to below 1 is visible (deep in the jammed phase N_Delta / N grows past P / N)
        loss = "final_energy" if "final_energy" in result else ("final_loss" if "final_loss" in result else None)
        if loss is not None:
            table = result[[loss, "n_delta_over_n"]].to_dataframe().reset_index().dropna(subset=[loss,
                                                                                             "n_delta_over_n"])
            table = table[(table[loss] > 0) & (table["n_delta_over_n"] <= TOP)]
            if len(table):
                opts = {"color": "h", "cmap": "viridis", "colorbar": True, "logz": True}
                jump.append(hv.Scatter(table, loss, ["n_delta_over_n", "h"]).opts(
                    **opts, **({"size": 6, "tools": ["hover"]} if bokeh else {"s": 20})))
        panels = [finish(hv.Overlay(plane), backend, "jamming in the (P, N) plane: jammed below N*", "P",
                         "N (parameters)", logx=True, logy=True)]
        if jump:
            what = "U at the end" if loss == "final_energy" else "training loss at the end"
            panels.append(finish(hv.Overlay(jump), backend, f"N_Delta / N jumps at jamming (runs up to {TOP:g})",
                                 what, "N_Delta / N", logx=True))
        return stack(panels, backend)


@dlphase.hookimpl
def register_analyses(register):
    register(JammingPlane)
