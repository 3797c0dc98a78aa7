"""The lazy / feature crossover line alpha_tilde*(h): where the NTK change ratio |Theta_end - Theta_0| / |Theta_0|
crosses 1 (or other levels), with intervals over seeds, and its scaling in h. The paper's claim is
alpha* ~ 1 / sqrt(h), that is alpha_tilde* = sqrt(h) alpha* flat in h; near jamming the line bends up."""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.specs import positive, probability

from .ensemble import jammed_anywhere, usable
from .phase_diagram import plane_reason, select_P
from .stats import power_law_fit


def crossing(alphas: np.ndarray, log_ratio: np.ndarray) -> float:
    """The alpha_tilde where log(ratio / level) first falls through 0 coming from the feature side (small
    alpha_tilde), linear in log alpha_tilde between grid points; NaN where it does not cross inside the grid.
    ``alphas`` increasing; ``log_ratio`` = log(ratio / level) at each."""
    la = np.log(alphas)
    for i in range(len(la) - 1):
        a, b = log_ratio[i], log_ratio[i + 1]
        if np.isfinite(a) and np.isfinite(b) and a > 0 >= b:
            return float(np.exp(la[i] + (la[i + 1] - la[i]) * a / (a - b)))
    return math.nan


@attrs.frozen(kw_only=True)
class Crossover(Analysis):
    """alpha_tilde*(h) per level of the NTK change ratio at one P: each seed's crossing over its runs that reached
    N_Delta = 0, their geometric mean over at least ``min_seeds`` seeds and its Student t interval; the power law
    in h over the widths away from jamming, and how far the widths near jamming lie above that law."""

    name: ClassVar[str] = "crossover"
    requires: ClassVar = ("ntk_change", "n_delta")
    P: int | None = param(default=None, doc="which P (default: the largest in the cube)")
    levels: tuple[float, ...] = param(default=(1.0,), doc="levels of the NTK change ratio whose line is drawn",
                                      validator=None)
    min_seeds: int = param(default=3, doc="runs with N_Delta = 0 a point needs to count", validator=positive)
    near_jamming: float = param(default=2.0, doc="widths h <= near_jamming * h_J (h_J: the widest width where a "
                                                 "run at the largest alpha_tilde jammed) are left out of the fit "
                                                 "and reported apart")
    level: float = param(default=0.95, doc="level of the intervals", validator=probability)

    def __attrs_post_init__(self):
        if not self.levels or any(not (v > 0 and math.isfinite(v)) for v in self.levels):
            raise ValueError(f"levels must be finite and > 0, got {list(self.levels)}")
        if self.near_jamming < 1:
            raise ValueError(f"near_jamming = {self.near_jamming} must be >= 1")

    def applies(self, cube: xr.Dataset) -> str | None:
        return super().applies(cube) or plane_reason(cube)

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        c = select_P(cube, self.P).sortby("alpha_tilde")
        P = int(c["P"])
        done = usable(c) & (c["n_delta"] == 0) & (c["ntk_change"] > 0)
        n_done = done.sum("seed").transpose("h", "alpha_tilde")
        log_r = np.log(c["ntk_change"].where(done)).transpose("h", "alpha_tilde", "seed").values
        enough = n_done.values >= self.min_seeds
        count = np.isfinite(log_r).sum(-1)
        mean = np.where(enough, np.nansum(log_r, -1) / np.maximum(count, 1), np.nan)
        log_r = np.where(enough[..., None], log_r, np.nan)                 # points with too few runs do not count
        alphas = c["alpha_tilde"].values.astype(float)
        hs = c["h"].values
        star = np.full((len(self.levels), len(hs)), np.nan)
        low, high = np.full_like(star, np.nan), np.full_like(star, np.nan)
        n_cross = np.zeros(star.shape, dtype=int)
        for k, lev in enumerate(self.levels):
            for j in range(len(hs)):
                # each seed's own crossing, over its runs with N_Delta = 0
                per_seed = np.array([crossing(alphas, log_r[j, :, s] - math.log(lev)) for s in range(log_r.shape[2])])
                logs = np.log(per_seed[np.isfinite(per_seed)])
                n_cross[k, j] = len(logs)
                if len(logs) >= max(self.min_seeds, 2):
                    star[k, j], low[k, j], high[k, j] = self._mean_interval(logs)
        lazy = c.isel(alpha_tilde=-1)
        h_j = float(c["h"].where(jammed_anywhere(lazy)).max())
        near = np.asarray([bool(np.isfinite(h_j) and h <= self.near_jamming * h_j) for h in hs])
        out = xr.Dataset(coords={"level": list(self.levels), "h": hs, "alpha_tilde": alphas})
        out["alpha_star"] = (("level", "h"), star, {"long_name": "alpha_tilde* where the NTK change ratio crosses "
                                                                 "the level: geometric mean over seeds of each "
                                                                 "seed's crossing"})
        out["alpha_star_low"] = (("level", "h"), low, {"long_name": f"low end of its {self.level:.0%} interval "
                                                                    "(Student t over seeds, on log alpha_tilde*)"})
        out["alpha_star_high"] = (("level", "h"), high, {"long_name": f"high end of its {self.level:.0%} interval"})
        out["n_crossings"] = (("level", "h"), n_cross, {"long_name": "seeds whose runs with N_Delta = 0 cross the "
                                                                     "level inside the grid"})
        out["ntk_change"] = (("h", "alpha_tilde"), np.exp(mean), {
            "long_name": f"geometric mean of the NTK change ratio over the runs with N_Delta = 0 (NaN: fewer than "
                         f"{self.min_seeds})"})
        out["n_converged"] = n_done.assign_attrs(long_name="runs that reached N_Delta = 0")
        out["near_jamming"] = (("h",), near, {"long_name": f"h <= {self.near_jamming:g} h_J: left out of the fit"})
        fits = [power_law_fit(hs[~near], star[k, ~near], self.level) for k in range(len(self.levels))]
        for key, doc in (("exponent", "exponent b of alpha_tilde* ~ h^b (the paper: 0)"),
                         ("low", f"low end of the {self.level:.0%} interval of b"),
                         ("high", f"high end of the {self.level:.0%} interval of b"),
                         ("prefactor", "A of alpha_tilde* = A h^b"), ("n", "widths in the fit")):
            out[key] = (("level",), [f[key] for f in fits], {"long_name": doc})
        out["alpha_exponent"] = (("level",), [f["exponent"] - 0.5 for f in fits],
                                 {"long_name": "exponent of alpha* = alpha_tilde* / sqrt(h) (the paper: -1/2)"})
        fitted = np.asarray([[f["prefactor"] * h ** f["exponent"] for h in hs] for f in fits])
        out["bend"] = (("level", "h"), np.where(near[None, :], star / fitted, np.nan),
                       {"long_name": "alpha_tilde* / the fitted law, at the widths near jamming (> 1: bends up)"})
        out.attrs.update({"analysis": self.name, "P": P, "h_jamming": h_j, "min_seeds": self.min_seeds,
                          "near_jamming": self.near_jamming, "ci_level": self.level})
        return out

    def _mean_interval(self, logs: np.ndarray) -> tuple[float, float, float]:
        """exp of the mean of ``logs`` and of its Student t interval (n - 1 degrees of freedom)."""
        import scipy.stats

        m = float(logs.mean())
        half = scipy.stats.t.ppf((1 + self.level) / 2, len(logs) - 1) * float(logs.std(ddof=1)) / math.sqrt(len(logs))
        return math.exp(m), math.exp(m - half), math.exp(m + half)

    def summary(self, result: xr.Dataset) -> list[str]:
        a = result.attrs
        lines = [f"P = {a['P']}: runs that reached N_Delta = 0 only, at least {a['min_seeds']} per point "
                 f"({int((result['n_converged'] >= a['min_seeds']).sum())} of {result['n_converged'].size} points "
                 f"qualify); alpha_tilde*: geometric mean over seeds of each seed's crossing, with its "
                 f"{a['ci_level']:.0%} interval"]
        for lev in result["level"].values:
            r = result.sel(level=lev)
            where = ", ".join(f"h = {h:g}: {float(s):.3g} [{float(lo):.3g}, {float(hi):.3g}]"
                              for h, s, lo, hi in zip(r["h"].values, r["alpha_star"].values,
                                                      r["alpha_star_low"].values, r["alpha_star_high"].values)
                              if np.isfinite(s))
            lines.append(f"NTK change = {lev:g}: alpha_tilde* at " + (where or "no width: the ratio does not cross "
                                                                               "it inside the grid"))
            if np.isfinite(float(r["exponent"])):
                lines.append(f"  alpha_tilde* ~ h^{float(r['exponent']):.3f} [{float(r['low']):.3f}, "
                             f"{float(r['high']):.3f}] over {int(r['n'])} widths (the paper: 0, i.e. alpha* ~ "
                             f"h^-1/2; here alpha* ~ h^{float(r['alpha_exponent']):.3f})")
            bends = [(h, float(b)) for h, b in zip(r["h"].values, r["bend"].values) if np.isfinite(b)]
            if bends:
                lines.append(f"  near jamming (h <= {a['near_jamming']:g} h_J, h_J = {a['h_jamming']:g}): "
                             + ", ".join(f"h = {h:g}: {b:.2f}x the law" for h, b in bends))
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, style

        items = []
        hs = result["h"].values.astype(float)
        for k, lev in enumerate(result["level"].values):
            r = result.sel(level=lev)
            color = PALETTE[k % len(PALETTE)]
            star = r["alpha_star"].values
            keep = np.isfinite(star)
            items.append(hv.Scatter((hs[keep], star[keep]), "h", "alpha_tilde*",
                                    label=f"NTK change = {lev:g}").opts(
                color=color, **({"size": 8} if backend == "bokeh" else {"s": 40})))
            items.append(hv.ErrorBars((hs[keep], star[keep], star[keep] - r["alpha_star_low"].values[keep],
                                       r["alpha_star_high"].values[keep] - star[keep]), "h",
                                      ["alpha_tilde*", "lower", "upper"]).opts(color=color))
            b, a = float(r["exponent"]), float(r["prefactor"])
            if np.isfinite(b):
                grid = np.geomspace(hs.min(), hs.max(), 20)
                items.append(hv.Curve((grid, a * grid ** b), "h", "alpha_tilde*", label=f"h^{b:.2f}").opts(
                    **style(backend, color, "dashed")))
        return finish(hv.Overlay(items), backend, f"lazy / feature crossover (P = {result.attrs['P']})", "h",
                      "alpha_tilde*", logx=True, logy=True)


@dlphase.hookimpl
def register_analyses(register):
    register(Crossover)
