"""Near the jamming transition: from the over-parametrised side the norm of the predictor diverges as
|f| ~ (N / N* - 1)^(-gamma); on the jammed side the spectrum of the Hessian H of U acquires a scale lambda ~ sqrt(U),
the size to which Hp = sum Delta Hess Delta lifts the zero modes of H0: read as ||Hp|| and as the median lifted
eigenvalue."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.specs import probability

from .ensemble import jammed_anywhere, parameters, too_few, usable
from .jamming_plane import at_width, descent_directions
from .stats import common_slope_fit, power_law_fit, power_law_fit2

SPECTRUM = ("hess_eig_h", "hess_rank_h0", "hess_energy")


def zero_mode_scale(eig_h: np.ndarray, rank_h0: float, zero_tol: float = 1e-9) -> float:
    """lambda of one run: the median |eigenvalue| of H over the directions H0 leaves flat (its N - rank(H0)
    eigenvalues of smallest modulus) that Hp = sum Delta Hess Delta lifts, whose size is set by Delta ~ sqrt(U);
    the ones within zero_tol max |eigenvalue| of 0, which Hp leaves flat too, do not count. NaN when H0 has full
    rank or nothing is lifted."""
    e = np.abs(eig_h[np.isfinite(eig_h)])
    if not np.isfinite(rank_h0) or not len(e):
        return math.nan
    k = len(e) - int(rank_h0)
    lifted = np.sort(e)[:max(k, 0)]
    lifted = lifted[lifted > zero_tol * e.max()]
    return float(np.median(lifted)) if len(lifted) else math.nan


@attrs.frozen(kw_only=True)
class Divergence(Analysis):
    """Per seed (``per_seed``) or for the mean over seeds, at each (alpha_tilde, P): the widest width where it jammed
    (h_J) and the first width above where it converged (h_C), N* between their N, and |f| at the converged widths
    against N / N* - 1, with one exponent gamma over the seeds' curves up to ``max_distance``. Where the cube holds
    dense Hessian spectra: each jammed run's scale lambda (median |eigenvalue| of H over H0's flat directions)
    against its U, and lambda ~ U^b over the runs at a minimum of U; where they hold Hp's spectrum, ||Hp|| ~ U^b
    over every jammed run, and ||Hp|| ~ U^b N_Delta^c."""

    name: ClassVar[str] = "divergence"
    requires: ClassVar = ("f_norm", "n_delta", "n_params")
    over: str = param(default="seed", doc="the dim averaged over")
    n_star: Literal["mid", "jammed"] = param(
        default="mid", doc="N*: mid (geometric mean of N at h_J and at h_C) or jammed (N at h_J); the true N* lies "
                           "between, and the summary gives gamma for both")
    max_distance: float = param(default=3.0, doc="fit |f| over the converged widths with N / N* - 1 <= max_distance")
    level: float = param(default=0.95, doc="level of the confidence intervals", validator=probability)
    minimum_tol: float = param(default=1e-6, doc="an eigenvalue of H below -minimum_tol max |eigenvalue| is a "
                                                 "descent direction: that run did not reach a minimum of U")
    per_seed: bool = param(default=True, doc="each seed's own transition (its widest jammed and first converged "
                                             "width) and its own |f|, one exponent for the seeds; else N* from every "
                                             "seed together and the mean |f| over seeds")
    zero_tol: float = param(default=1e-9, doc="eigenvalues of H within zero_tol max |eigenvalue| of 0 are flat, "
                                              "not lifted by Hp: they do not count in lambda")
    minima_only: bool = param(default=True, doc="fit lambda over the jammed runs that reached a minimum of U only "
                                                "(elsewhere Hp's negative directions are not lifted zero modes)")

    def __attrs_post_init__(self):
        if not (self.max_distance > 0 and math.isfinite(self.max_distance)):
            raise ValueError(f"max_distance = {self.max_distance} must be finite and > 0")

    def applies(self, cube: xr.Dataset) -> str | None:
        return super().applies(cube) or too_few(cube, "h", 4, "widths h")

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        ok = usable(cube)
        n = parameters(cube)
        done = (cube["n_delta"] == 0) & ok
        if self.per_seed:     # each initialisation has its own transition
            jammed, converged, f = (cube["n_delta"] > 0) & ok, done, cube["f_norm"].where(ok)
            who, whose = "the seed", "the seed's"
        else:
            jammed, converged = jammed_anywhere(cube, self.over), (done | ~ok).all(self.over) & ok.any(self.over)
            f = cube["f_norm"].where(ok).mean(self.over)
            who, whose = "a seed", "every seed"
        h = cube["h"].broadcast_like(converged)
        h_j = h.where(jammed).max("h")
        h_c = h.where(converged & (h > h_j)).min("h")
        n_j, n_c = at_width(n, cube, h_j), at_width(n, cube, h_c)
        stars = {"mid": np.sqrt(n_j * n_c), "jammed": n_j}
        f = f.where(converged & (h >= h_c))
        out = xr.Dataset({
            "h_jammed": h_j.assign_attrs(long_name=f"h_J: widest width where {who} ends with N_Delta > 0"),
            "h_converged": h_c.assign_attrs(long_name=f"h_C: first width above h_J where {whose} runs converge"),
            "n_jammed": n_j.assign_attrs(long_name="N at h_J"),
            "n_converged": n_c.assign_attrs(long_name="N at h_C"),
            "n_star": stars[self.n_star].assign_attrs(long_name=f"N* ({self.n_star})"),
            "n_params": n.broadcast_like(f).assign_attrs(long_name="N, number of parameters"),
            "f_norm": f.assign_attrs(long_name="|f| (RMS over the test set) at the widths >= h_C where " +
                                               ("the seed converged" if self.per_seed else
                                                "every seed converged, mean over seeds")),
        })
        rest = [d for d in f.dims if d not in ("h", self.over)]
        for choice, star in stars.items():
            distance = (out["n_params"] / star - 1).where(f.notnull())
            used = f.where(distance <= self.max_distance)
            fits = self._fits(distance, used, rest)
            if choice == self.n_star:
                out["distance"] = distance.assign_attrs(long_name="N / N* - 1")
                out["used"] = used.notnull().assign_attrs(long_name=f"in the fit (N / N* - 1 <= {self.max_distance})")
                out["prefactor"] = fits.pop("prefactor").assign_attrs(long_name="A of |f| = A (N / N* - 1)^-gamma")
                for name, value in fits.items():
                    out[name] = value
                pooled = common_slope_fit(_curves(distance, used), self.level)
                # b of |f| ~ (N / N* - 1)^b is -gamma: the interval's ends swap
                for name, value in (("gamma", -pooled["exponent"]), ("gamma_low", -pooled["high"]),
                                    ("gamma_high", -pooled["low"]), ("n", pooled["n"]), ("curves", pooled["curves"])):
                    out[f"pooled_{name}"] = xr.DataArray(value, attrs={
                        "long_name": f"one gamma for every curve (own prefactors): {name}"})
            out[f"gamma_at_{choice}"] = fits["gamma"].assign_attrs(long_name=f"gamma with N* = {choice}")

        if all(v in cube for v in SPECTRUM) and "h" in cube["hess_eig_h"].dims:
            self._spectrum_scale(cube, ok, out)
        if "hess_eig_hp" in cube and "hess_energy" in cube and "h" in cube["hess_eig_hp"].dims:
            self._hp_scale(cube, ok, out)
        out.attrs.update({"analysis": self.name, "over": self.over, "n_star_choice": self.n_star,
                          "max_distance": self.max_distance, "level": self.level, "minima_only": int(self.minima_only),
                          "per_seed": int(self.per_seed)})
        return out

    def _fits(self, distance: xr.DataArray, used: xr.DataArray, rest: list[str]) -> dict[str, xr.DataArray]:
        """gamma with its interval at each point of ``rest`` (alpha_tilde, P): one exponent over the seeds' curves
        (each its own N* and prefactor) per seed, else the fit of the mean over seeds; and every curve's
        prefactor."""
        shape = [used.sizes[d] for d in rest]
        values = {k: np.full(shape, np.nan) for k in ("gamma", "gamma_low", "gamma_high", "n")}
        curve_dims = rest + ([self.over] if self.per_seed else [])
        prefactor = xr.full_like(used.isel(h=0, drop=True), np.nan).transpose(*curve_dims)
        for idx in np.ndindex(*shape):
            sel = dict(zip(rest, idx))
            x, y = distance.isel(sel), used.isel(sel)
            pairs = _curves(x, y)
            fit = common_slope_fit(pairs, self.level)
            values["gamma"][idx], values["gamma_low"][idx], values["gamma_high"][idx] = (
                -fit["exponent"], -fit["high"], -fit["low"])
            values["n"][idx] = fit["n"]
            a = np.asarray(fit["prefactors"], dtype=float).reshape(prefactor.isel(sel).shape)
            prefactor[sel] = a
        coords = {d: used[d] for d in rest}
        docs = {"gamma": "gamma of |f| ~ (N / N* - 1)^-gamma" + (" (one exponent for the seeds, each with its own N*)"
                                                                 if self.per_seed else ""),
                "gamma_low": f"low end of the {self.level:.0%} interval of gamma",
                "gamma_high": f"high end of the {self.level:.0%} interval of gamma", "n": "points in the fit"}
        out = {k: xr.DataArray(v, dims=rest, coords=coords, attrs={"long_name": docs[k]}) for k, v in values.items()}
        out["prefactor"] = prefactor
        return out

    def _spectrum_scale(self, cube: xr.Dataset, ok: xr.DataArray, out: xr.Dataset) -> None:
        """lambda of every jammed run with a dense spectrum, and lambda ~ U^b per point of the other dims."""
        grid = [d for d in cube["hess_rank_h0"].dims]
        eig = cube["hess_eig_h"].transpose(*grid, "hess_eig").values
        rank = cube["hess_rank_h0"].transpose(*grid).values
        # the hypostatic side: jammed with fewer unsatisfied points than parameters (deeper, N_Delta >= N, the
        # directions H0 leaves flat are the net's near-symmetries)
        n = cube["n_params"].broadcast_like(cube["n_delta"])
        jammed = ((cube["n_delta"] > 0) & (cube["n_delta"] < n) & ok).transpose(*grid)
        lam = np.full(rank.shape, np.nan)
        for idx in np.ndindex(*rank.shape):
            e = eig[idx][np.isfinite(eig[idx])]
            if jammed.values[idx] and len(e):
                lam[idx] = zero_mode_scale(e, rank[idx], self.zero_tol)
        coords = {d: cube[d] for d in grid}
        out["lambda_scale"] = xr.DataArray(lam, dims=grid, coords=coords, attrs={
            "long_name": "lambda: median |eigenvalue| of H over the N - rank(H0) of smallest modulus that Hp lifts "
                         "(jammed runs with N_Delta < N)"})
        descent = descent_directions(cube["hess_eig_h"], self.minimum_tol).where(jammed).transpose(*grid)
        out["descent_directions"] = descent.assign_attrs(
            long_name=f"eigenvalues of H below -{self.minimum_tol:g} max |eigenvalue| (jammed runs): 0 at a minimum "
                      "of U")
        fitted = out["lambda_scale"].notnull() & ((out["descent_directions"] == 0) | (not self.minima_only))
        out["lambda_used"] = fitted.assign_attrs(long_name="jammed runs in the fit of lambda against U")
        out["energy"] = cube["hess_energy"].where(out["lambda_scale"].notnull()).assign_attrs(
            long_name="U at the end (jammed runs)")
        self._u_law(out, "lambda", "lambda", out["energy"].where(fitted), out["lambda_scale"].where(fitted), cube)

    def _hp_scale(self, cube: xr.Dataset, ok: xr.DataArray, out: xr.Dataset) -> None:
        """||Hp|| (largest |eigenvalue| of Hp) of every jammed run, and ||Hp|| ~ U^b per point of the other dims.
        Hp = sum_mu Delta_mu Hess Delta_mu: a sum of N_Delta terms with weights Delta_mu and little coherence between
        their curvatures has a spectral scale ~ sqrt(sum Delta^2) = sqrt(2 U), whatever N_Delta is; it is the scale
        by which Hp moves H's spectrum off H0's (and lifts H0's flat directions). Every jammed run counts: Hp is set
        by the Delta's and needs no minimum of U."""
        grid = list(cube["hess_eig_hp"].dims[:-1])
        eig = np.abs(cube["hess_eig_hp"].transpose(*grid, "hess_eig").values)
        jammed = ((cube["n_delta"] > 0) & ok).transpose(*grid).values
        u = cube["hess_energy"].transpose(*grid).values
        norm = np.full(jammed.shape, np.nan)
        for idx in np.ndindex(*jammed.shape):
            e = eig[idx][np.isfinite(eig[idx])]
            if jammed[idx] and len(e) and u[idx] > 0:
                norm[idx] = e.max()
        coords = {d: cube[d] for d in grid}
        out["hp_norm"] = xr.DataArray(norm, dims=grid, coords=coords, attrs={
            "long_name": "||Hp||: largest |eigenvalue| of Hp = sum Delta Hess Delta (jammed runs)"})
        out["hp_energy"] = xr.DataArray(np.where(np.isfinite(norm), u, np.nan), dims=grid, coords=coords,
                                        attrs={"long_name": "U at the end (jammed runs with a spectrum of Hp)"})
        self._u_law(out, "hp", "||Hp||", out["hp_energy"], out["hp_norm"], cube)
        # with N_Delta beside U: incoherent terms give ||Hp|| ~ sqrt(U) at any N_Delta (c = 0), coherent ones
        # ||Hp|| ~ sum |Delta| ~ sqrt(U N_Delta) (c = 1/2)
        n_delta = cube["n_delta"].transpose(*grid)
        rest = [d for d in grid if d not in ("h", self.over)]
        docs = {"": "c of ||Hp|| ~ U^b N_Delta^c (incoherent terms: 0, coherent: 1/2)",
                "_low": f"low end of the {self.level:.0%} interval of c",
                "_high": f"high end of the {self.level:.0%} interval of c"}
        c = {end: np.full([cube.sizes[d] for d in rest], np.nan) for end in docs}
        for idx in np.ndindex(*c[""].shape):
            sel = dict(zip(rest, idx))
            fit = power_law_fit2(out["hp_energy"].isel(sel).values, n_delta.isel(sel).values,
                                 out["hp_norm"].isel(sel).values, self.level)
            for end in docs:
                c[end][idx] = fit[f"b2{end}"]
        for end, doc in docs.items():
            out[f"hp_n_delta_exponent{end}"] = xr.DataArray(c[end], dims=rest, coords={d: cube[d] for d in rest},
                                                            attrs={"long_name": doc})

    def _u_law(self, out: xr.Dataset, prefix: str, what: str, energy: xr.DataArray, scale: xr.DataArray,
               cube: xr.Dataset) -> None:
        """``what`` ~ U^b fitted over h and the seeds at each point of the other dims, stored as prefix_exponent,
        _low, _high, _prefactor and _n; points where either is NaN are left out."""
        rest = [d for d in scale.dims if d not in ("h", self.over)]
        energy = energy.transpose(*scale.dims)
        fits = {k: np.full([cube.sizes[d] for d in rest], np.nan) for k in ("exponent", "low", "high", "prefactor",
                                                                           "n")}
        for idx in np.ndindex(*fits["n"].shape):
            sel = dict(zip(rest, idx))
            fit = power_law_fit(energy.isel(sel).values, scale.isel(sel).values, self.level)
            for k in fits:
                fits[k][idx] = fit[k]
        for k, doc in (("exponent", f"exponent b of {what} ~ U^b (the claim: 1/2)"),
                       ("low", f"low end of the {self.level:.0%} interval of b"),
                       ("high", f"high end of the {self.level:.0%} interval of b"),
                       ("prefactor", f"A of {what} = A U^b"), ("n", "jammed runs in the fit")):
            out[f"{prefix}_{k}"] = xr.DataArray(fits[k], dims=rest, coords={d: cube[d] for d in rest},
                                                attrs={"long_name": doc})

    def summary(self, result: xr.Dataset) -> list[str]:
        from .curves import groups

        lines = []
        for sel, label, gamma in groups(result["gamma"], None):
            r = result.sel(sel)
            n_j, n_c = r["n_jammed"].values.ravel(), r["n_converged"].values.ravel()
            per = bool(result.attrs.get("per_seed", 0))
            if not np.isfinite(float(gamma)):
                why = ("no seed jammed" if not np.isfinite(n_j).any() else
                       f"no width above h_J where {'the seed' if per else 'every seed'} converged"
                       if not np.isfinite(n_c).any() else
                       f"fewer than 3 converged widths within N / N* - 1 <= {result.attrs['max_distance']:g}")
                lines.append(f"{label}: no divergence fit ({why})")
            else:
                brackets = ", ".join(f"({a:.0f}, {b:.0f}]" for a, b in zip(n_j, n_c) if np.isfinite(a + b))
                lines.append(f"{label}: |f| ~ (N / N* - 1)^-gamma, gamma = {float(gamma):.3f} "
                             f"[{float(r['gamma_low']):.3f}, {float(r['gamma_high']):.3f}] over {int(r['n'])} points"
                             + (f" of {int(np.isfinite(n_c).sum())} seeds, each with its own N* in " if per else
                                "; N* in ") + f"{brackets}; gamma with N* = N(h_J): "
                             f"{float(r['gamma_at_jammed']):.3f}, with the geometric mean: "
                             f"{float(r['gamma_at_mid']):.3f}")
            if "lambda_exponent" in result:
                b = float(r["lambda_exponent"])
                if np.isfinite(b):
                    lines.append(f"  jammed side: lambda ~ U^{b:.3f} [{float(r['lambda_low']):.3f}, "
                                 f"{float(r['lambda_high']):.3f}] over {int(r['lambda_n'])} runs (the claim: 1/2)")
                else:
                    lines.append("  jammed side: fewer than 3 runs for the fit of lambda against U")
                d, lam = r["descent_directions"].values, r["lambda_scale"].values
                lines.append(f"  jammed runs with N_Delta < N and a dense spectrum: {int(np.isfinite(d).sum())}; with "
                             f"flat directions that Hp lifts: {int(np.isfinite(lam).sum())}; of these at a minimum "
                             f"of U (no eigenvalue of H < 0): {int((np.isfinite(lam) & (d == 0)).sum())}"
                             + ("" if result.attrs["minima_only"] else " (all are fitted: --no-minima-only)"))
            if "hp_exponent" in result:
                b = float(r["hp_exponent"])
                lines.append(f"  jammed side: ||Hp|| ~ U^{b:.3f} [{float(r['hp_low']):.3f}, {float(r['hp_high']):.3f}] "
                             f"over {int(r['hp_n'])} runs (the claim: 1/2)" if np.isfinite(b) else
                             "  jammed side: fewer than 3 runs for the fit of ||Hp|| against U")
                c = float(r["hp_n_delta_exponent"])
                if np.isfinite(c):
                    lines.append(f"  ||Hp|| ~ U^b N_Delta^c: c = {c:.3f} [{float(r['hp_n_delta_exponent_low']):.3f}, "
                                 f"{float(r['hp_n_delta_exponent_high']):.3f}] (0: Hp's terms add incoherently, "
                                 f"its scale is sqrt(U) at any N_Delta; 1/2: coherently)")
        if np.isfinite(float(result["pooled_gamma"])) and result["gamma"].size > 1:
            lines.append(f"every curve: gamma = {float(result['pooled_gamma']):.3f} "
                         f"[{float(result['pooled_gamma_low']):.3f}, {float(result['pooled_gamma_high']):.3f}]")
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, groups, stack, style

        bokeh = backend == "bokeh"
        size = {"size": 8} if bokeh else {"s": 40}
        faint = {"size": 6, "alpha": 0.35} if bokeh else {"s": 20, "alpha": 0.35}
        norms, scales, hps = [], [], []
        for i, (sel, label, _) in enumerate(groups(result["gamma"], None)):
            color = PALETTE[i % len(PALETTE)]
            r = result.sel(sel)
            g = float(r["gamma"])
            # one curve per seed where each seed has its own N*, else the mean over seeds
            for k, (one, who, _) in enumerate(groups(r["prefactor"], None)):
                c = r.sel(one)
                x, y, used = c["distance"].values, c["f_norm"].values, c["used"].values.astype(bool)
                keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
                name = label + (f", {who}" if who else "")
                norms.append(hv.Scatter((x[keep & used], y[keep & used]), "N / N* - 1", "|f|", label=name)
                             .opts(color=color, **size))
                if (keep & ~used).any():
                    norms.append(hv.Scatter((x[keep & ~used], y[keep & ~used]), "N / N* - 1", "|f|",
                                            label=f"{name} (not fitted)").opts(color=color, **faint))
                a = float(c["prefactor"])
                if np.isfinite(g) and np.isfinite(a) and (keep & used).any():
                    xs = np.geomspace(x[keep & used].min(), x[keep & used].max(), 20)
                    norms.append(hv.Curve((xs, a * xs ** -g), "N / N* - 1", "|f|",
                                          label=f"gamma = {g:.2f}" if k == 0 else f"{name}: fit")
                                 .opts(**style(backend, color, "dashed")))
            if "lambda_scale" in r:
                u, lam = r["energy"].values.ravel(), r["lambda_scale"].values.ravel()
                fit_in = r["lambda_used"].values.ravel().astype(bool)
                keep = np.isfinite(u) & np.isfinite(lam) & (u > 0) & (lam > 0)
                if keep.any():
                    for part, what, opts in ((keep & fit_in, "", size), (keep & ~fit_in, " (not at a minimum)", faint)):
                        if part.any():
                            scales.append(hv.Scatter((u[part], lam[part]), "U", "lambda", label=label + what)
                                          .opts(color=color, **opts))
                    b, a = float(r["lambda_exponent"]), float(r["lambda_prefactor"])
                    us = np.geomspace(u[keep].min(), u[keep].max(), 20)
                    if np.isfinite(b):
                        scales.append(hv.Curve((us, a * us ** b), "U", "lambda", label=f"U^{b:.2f}")
                                      .opts(**style(backend, color, "dashed")))
                    top = np.argmax(u[keep])
                    scales.append(hv.Curve((us, lam[keep][top] * (us / u[keep][top]) ** 0.5), "U", "lambda",
                                           label="U^1/2").opts(**style(backend, "#7f7f7f", "dotted")))
            if "hp_norm" in r:
                u, hp = r["hp_energy"].values.ravel(), r["hp_norm"].values.ravel()
                keep = np.isfinite(u) & np.isfinite(hp) & (u > 0) & (hp > 0)
                if keep.any():
                    hps.append(hv.Scatter((u[keep], hp[keep]), "U", "||Hp||", label=label).opts(color=color, **size))
                    b, a = float(r["hp_exponent"]), float(r["hp_prefactor"])
                    us = np.geomspace(u[keep].min(), u[keep].max(), 20)
                    if np.isfinite(b):
                        hps.append(hv.Curve((us, a * us ** b), "U", "||Hp||", label=f"U^{b:.2f}")
                                   .opts(**style(backend, color, "dashed")))
                        hps.append(hv.Curve((us, a * np.sqrt(us) * np.exp((b - 0.5) * np.log(us).mean())), "U",
                                            "||Hp||", label="U^1/2").opts(**style(backend, "#7f7f7f", "dotted")))
        panels = [finish(hv.Overlay(norms), backend, "|f| diverges toward jamming from above", "N / N* - 1",
                         "|f| (RMS over the test set)", logx=True, logy=True)]
        if scales:
            panels.append(finish(hv.Overlay(scales), backend, "jammed side: the scale of H's flat directions",
                                 "U at the end", "lambda", logx=True, logy=True))
        if hps:
            panels.append(finish(hv.Overlay(hps), backend, "jammed side: the scale of Hp = sum Delta Hess Delta",
                                 "U at the end", "||Hp|| (largest |eigenvalue|)", logx=True, logy=True))
        return stack(panels, backend)


def _curves(x: xr.DataArray, y: xr.DataArray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) along h for every point of y's other dims, in C order."""
    rest = [d for d in y.dims if d != "h"]
    x = x.broadcast_like(y).transpose(*rest, "h")
    y = y.transpose(*rest, "h")
    return [(x.values[idx], y.values[idx]) for idx in np.ndindex(*[y.sizes[d] for d in rest])]


@dlphase.hookimpl
def register_analyses(register):
    register(Divergence)
