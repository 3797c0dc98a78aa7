"""The double descent: test error against h and N at each alpha_tilde, peaking at
jamming, and the ensemble test error eps(<f>), whose second peak goes away; |f| diverges toward jamming."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param

from .ensemble import check_over, ensemble_members, too_few, usable
from .fluctuations import jamming_point


@attrs.frozen(kw_only=True)
class DoubleDescent(Analysis):
    """Per (h, alpha_tilde, P): the mean and spread over seeds of the test error, eps(<f>) when the cube holds f_test,
    the mean |f| and the fraction of seeds jammed; per (alpha_tilde, P) the jamming width (the widest h where a seed
    ends with N_Delta > 0) and its N."""

    name: ClassVar[str] = "double_descent"
    requires: ClassVar = ("test_error", "n_delta", "n_params")
    over: str = param(default="seed", doc="the dim averaged over")

    def applies(self, cube: xr.Dataset) -> str | None:
        return super().applies(cube) or too_few(cube, "h", 3, "widths h")

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        check_over(cube, self.over, "test_error")
        ok = usable(cube)
        eps = cube["test_error"].where(ok)
        n, h_j, n_j = jamming_point(cube, self.over)
        out = xr.Dataset({
            "n_params": n.assign_attrs(long_name="N, number of parameters"),
            "test_error_mean": eps.mean(self.over).assign_attrs(long_name="<eps(f)>, mean test error over seeds"),
            "test_error_std": eps.std(self.over, ddof=1).assign_attrs(long_name="spread of eps(f) over seeds"),
            "jammed_fraction": (cube["n_delta"] > 0).where(ok).mean(self.over).assign_attrs(
                long_name="fraction of seeds ending with N_Delta > 0"),
            "h_jamming": h_j.assign_attrs(long_name="widest h where a seed ends jammed (N_Delta > 0)"),
            "n_jamming": n_j.assign_attrs(long_name="N at h_jamming"),
        })
        if "f_norm" in cube:
            out["f_norm_mean"] = cube["f_norm"].where(ok).mean(self.over).assign_attrs(
                long_name="|f|, RMS of f on the test set, mean over seeds")
        if "f_test" in cube and cube.sizes[self.over] > 1:
            stats = ensemble_members(cube, self.over)
            out["ensemble_test_error"] = stats["ensemble_test_error"].assign_attrs(
                long_name="eps(<f>), test error of the mean over seeds of f")
        out.attrs.update({"analysis": self.name, "over": self.over})
        return out

    def summary(self, result: xr.Dataset) -> list[str]:
        lines = []
        for sel, label, eps in _curves(result["test_error_mean"]):
            n_j = float(result["n_jamming"].sel(sel))
            peak = eps.idxmax("h") if np.isfinite(eps.values).any() else np.nan
            text = f"{label}: jamming at N = {n_j:g}" if np.isfinite(n_j) else f"{label}: no seed jammed"
            if np.isfinite(peak):
                text += f"; <eps(f)> peaks at h = {int(peak)} ({float(eps.max()):.4f})"
            if "ensemble_test_error" in result:
                ens = result["ensemble_test_error"].sel(sel)
                text += f"; eps(<f>) from {float(ens.max()):.4f} to {float(ens.min()):.4f}"
            lines.append(text)
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, largest_P, stack, style

        result = largest_P(result)
        errors, norms = [], []
        for i, (sel, label, eps) in enumerate(_curves(result["test_error_mean"])):
            color = PALETTE[i % len(PALETTE)]
            n = result["n_params"].sel({k: v for k, v in sel.items() if k in result["n_params"].dims}).values
            order = np.argsort(n)
            errors.append(hv.Curve((n[order], eps.values[order]), "N", "test error", label=f"{label}: <eps(f)>")
                          .opts(**style(backend, color)))
            if "ensemble_test_error" in result:
                ens = result["ensemble_test_error"].sel(sel).values
                errors.append(hv.Curve((n[order], ens[order]), "N", "test error", label=f"{label}: eps(<f>)")
                              .opts(**style(backend, color, "dashed")))
            if "f_norm_mean" in result:
                norm = result["f_norm_mean"].sel(sel).values
                norms.append(hv.Curve((n[order], norm[order]), "N", "|f|", label=label).opts(**style(backend, color)))
            n_j = float(result["n_jamming"].sel(sel))
            if np.isfinite(n_j):
                line = hv.VLine(n_j).opts(color=color, **({"line_dash": "dotted"} if backend == "bokeh"
                                                           else {"linestyle": ":"}))
                errors.append(line)
                norms.append(line)
        panels = [finish(hv.Overlay(errors), backend, "double descent (dotted: jamming)", "N (parameters)",
                         "test error")]
        if norms:
            panels.append(finish(hv.Overlay(norms), backend, "|f| diverges toward jamming", "N (parameters)",
                                 "|f| (RMS over the test set)", logy=True))
        return stack(panels, backend)


def _curves(da: xr.DataArray):
    """(selection, label, curve over h) for each alpha_tilde (and any other dim but h)."""
    from .curves import groups

    return groups(da, "h")


@dlphase.hookimpl
def register_analyses(register):
    register(DoubleDescent)
