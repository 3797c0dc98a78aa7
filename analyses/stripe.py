"""The stripe model's claims as numbers: the compression Lambda = W_par / W_perp grows like P^(1/2) in the
feature regime and stays O(1) in the lazy one; the learning-curve exponents beta of both regimes beside
beta_lazy = d / (3d - 2) and beta_feature = (d + d_perp / 2) / (3d - 2) (for one informative direction also
(2d - 1) / (3d - 2), the sharper prediction of the stripe model's own analysis); and the NTK on compressed inputs
against the feature-regime net."""

from __future__ import annotations

import math
import tomllib
from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.errors import DlphaseError
from dlphase.specs import positive, probability

from .ensemble import too_few, usable
from .stats import common_slope_fit, power_law_fit, power_law_fits


def predicted_betas(d: int, d_par: int) -> tuple[float, float]:
    """(beta_lazy, beta_feature) of the stripe model in d dimensions with d_par informative ones."""
    d_perp = d - d_par
    return d / (3 * d - 2), (d + d_perp / 2) / (3 * d - 2)


def predicted_beta_interface(d: int, d_par: int) -> float:
    """beta_feature = (2d - 1) / (3d - 2) of a flat interface (d_par = 1), where compression also sharpens the
    boundary the kernel has to resolve; NaN for d_par > 1, where (d + d_perp / 2) / (3d - 2) is the prediction."""
    return (2 * d - 1) / (3 * d - 2) if d_par == 1 else math.nan


def _spec_value(cube: xr.Dataset, section: str, key: str):
    """``[section] key`` of the spec the cube was made from, or None where the cube does not say it."""
    try:
        return tomllib.loads(cube.attrs.get("spec_toml", ""))[section][key]
    except (tomllib.TOMLDecodeError, KeyError, TypeError):
        return None


def _compressed_label(result: xr.Dataset) -> str:
    """'inputs compressed', with the Lambda of the compressed-kernel cube where its spec gave one."""
    by = result.attrs.get("compressed_lambda", "")
    return f"inputs compressed by Lambda = {by}" if by else "inputs compressed"


@attrs.frozen(kw_only=True)
class Stripe(Analysis):
    """Lambda against P with its fitted exponent, beta in the feature and the lazy regime (the smallest and the
    largest alpha_tilde of the cube, or those given) beside the predictions, and optionally the learning curve
    of a cube of kernel runs on compressed inputs (``compressed``)."""

    name: ClassVar[str] = "stripe"
    requires: ClassVar = ("test_error", "lambda_end")
    feature: float | None = param(default=None, doc="alpha_tilde of the feature regime (default: the cube's smallest)")
    lazy: float | None = param(default=None, doc="alpha_tilde of the lazy regime (default: the cube's largest)")
    compressed: str | None = param(default=None, doc="a cube of kernel runs on compressed inputs (dynamics kernel, "
                                                     "svm or ridge with compression), drawn beside the nets")
    d: int | None = param(default=None, doc="input dimension for the predictions (default: the spec's dataset.d)",
                          validator=positive)
    d_par: int = param(default=1, doc="informative dimensions (1: the stripe model)", validator=positive)
    level: float = param(default=0.95, doc="level of the confidence intervals", validator=probability)

    def applies(self, cube: xr.Dataset) -> str | None:
        return super().applies(cube) or too_few(cube, "P", 3)

    def regimes(self, cube: xr.Dataset) -> dict[str, float]:
        alphas = [float(a) for a in cube["alpha_tilde"].values]
        chosen = {"feature": min(alphas) if self.feature is None else self.feature,
                  "lazy": max(alphas) if self.lazy is None else self.lazy}
        for regime, a in chosen.items():
            if not any(math.isclose(a, b, rel_tol=1e-9) for b in alphas):
                raise DlphaseError(f"--{regime} {a:g} is not an alpha_tilde of the cube; it has "
                                   f"{', '.join(f'{b:g}' for b in alphas)}")
        if len(alphas) < 2 or chosen["feature"] == chosen["lazy"]:
            raise DlphaseError("the stripe analysis compares two regimes, and the cube has one alpha_tilde; sweep a "
                               "small and a large alpha_tilde")
        return {r: next(b for b in alphas if math.isclose(a, b, rel_tol=1e-9)) for r, a in chosen.items()}

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        d = self.d or _spec_value(cube, "dataset", "d")
        if d is None:
            raise DlphaseError("the cube does not say the input dimension d (its spec has no dataset.d); give --d")
        if not 0 < self.d_par < d:
            raise DlphaseError(f"d_par = {self.d_par} must be between 1 and d - 1 = {d - 1}")
        regimes = self.regimes(cube)
        alphas = list(regimes.values())

        def by_regime(da: xr.DataArray) -> xr.DataArray:
            return da.sel(alpha_tilde=alphas).rename(alpha_tilde="regime").assign_coords(regime=list(regimes))

        ok = by_regime(usable(cube))
        n = np.sqrt(ok.sum("seed"))
        eps, lam = by_regime(cube["test_error"]).where(ok), by_regime(cube["lambda_end"]).where(ok)
        init = by_regime(cube["lambda_init"]).where(ok).mean("seed") if "lambda_init" in cube else \
            xr.full_like(lam.mean("seed"), np.nan)
        out = xr.Dataset({
            "test_error_mean": eps.mean("seed").assign_attrs(long_name="<eps(f)>, test error, mean over seeds"),
            "test_error_sem": (eps.std("seed", ddof=1) / n).assign_attrs(long_name="standard error of <eps(f)>"),
            "lambda_mean": lam.mean("seed").assign_attrs(long_name="<Lambda> at the end, mean over seeds"),
            "lambda_sem": (lam.std("seed", ddof=1) / n).assign_attrs(long_name="standard error of <Lambda>"),
            "lambda_init_mean": init.assign_attrs(long_name="<Lambda> at initialisation"),
        }).transpose("h", "regime", "P")
        pct = f"{self.level:.0%}"
        independent = _spec_value(cube, "dataset", "training") == "per_seed" and cube.sizes["seed"] > 1
        if independent:
            fits = self.seed_curves_fit(eps.transpose("h", "regime", "P", "seed"))
        else:
            fits, _ = power_law_fits(out["P"].astype(float), out["test_error_mean"], "P", self.level)
        # eps ~ P^(-beta): beta is minus the fitted exponent, and the interval flips
        out["beta"] = (-fits["exponent"]).assign_attrs(long_name="beta of <eps(f)> ~ P^(-beta)")
        out["beta_low"] = (-fits["high"]).assign_attrs(long_name=f"low end of the {pct} interval of beta")
        out["beta_high"] = (-fits["low"]).assign_attrs(long_name=f"high end of the {pct} interval of beta")
        out["beta_prefactor"] = fits["prefactor"].assign_attrs(long_name="A of <eps(f)> = A P^(-beta)")
        fits, _ = power_law_fits(out["P"].astype(float), out["lambda_mean"], "P", self.level)
        out["lambda_exponent"] = fits["exponent"].assign_attrs(
            long_name="exponent of <Lambda> ~ P^exponent (the paper: 1/2 in the feature regime)")
        out["lambda_low"] = fits["low"].assign_attrs(long_name=f"low end of the {pct} interval of the Lambda exponent")
        out["lambda_high"] = fits["high"].assign_attrs(
            long_name=f"high end of the {pct} interval of the Lambda exponent")
        out["lambda_prefactor"] = fits["prefactor"].assign_attrs(long_name="A of <Lambda> = A P^exponent")
        if "lambda_traj" in cube:
            out = out.merge(self.peak_compression(by_regime(cube["lambda_traj"]).where(ok), n))
        out["alpha_tilde_of_regime"] = ("regime", list(regimes.values()), {"long_name": "alpha_tilde of each regime"})
        beta_lazy, beta_feature = predicted_betas(d, self.d_par)
        out["beta_predicted"] = ("regime", [beta_feature if r == "feature" else beta_lazy for r in regimes],
                                 {"long_name": "beta_lazy = d / (3d - 2), beta_feature = (d + d_perp / 2) / (3d - 2)"})
        out["beta_interface"] = ((), predicted_beta_interface(d, self.d_par),
                                 {"long_name": "beta_feature = (2d - 1) / (3d - 2) for one informative direction"})
        if self.compressed:
            compressed = self.compressed_curve(cube)
            out = out.merge(compressed)
            out.attrs["compressed_lambda"] = compressed.attrs["compressed_lambda"]
        if "first_layer_w_end" in cube:
            out = out.merge(stored_weights(cube, h=cube["h"].values[0], alpha_tilde=regimes["feature"],
                                           P=cube["P"].values[-1], seed=cube["seed"].values[0]))
        out.attrs.update({"analysis": self.name, "d": d, "d_par": self.d_par, "level": self.level,
                          "beta_fit": ("one exponent over the seeds' curves, each seed with a training set of its "
                                       "own" if independent else "the mean over seeds")})
        return out

    def seed_curves_fit(self, eps: xr.DataArray) -> dict[str, xr.DataArray]:
        """beta from every seed's curve eps_s(P) = A_s P^(-beta), one exponent with a prefactor per seed, over
        (h, regime) as :func:`power_law_fits` gives them. Valid where the seeds train on independent training sets
        (dataset.training = per_seed): their curves are then independent samples of the learning curve, and the
        fit uses all of their points, not just the means'."""
        fits = {k: np.full((eps.sizes["h"], eps.sizes["regime"]), np.nan)
                for k in ("exponent", "low", "high", "prefactor", "n")}
        P = eps["P"].values.astype(float)
        for h, r in np.ndindex(*fits["n"].shape):
            fit = common_slope_fit([(P, seed.values) for seed in eps.isel(h=h, regime=r).transpose("seed", "P")],
                                   self.level)
            for k in ("exponent", "low", "high", "n"):
                fits[k][h, r] = fit[k]
            with np.errstate(all="ignore"):  # the drawn line: the seeds' prefactors' geometric mean
                fits["prefactor"][h, r] = float(np.exp(np.nanmean(np.log(fit["prefactors"]))))
        coords = {d: eps[d] for d in ("h", "regime")}
        return {k: xr.DataArray(v, dims=("h", "regime"), coords=coords) for k, v in fits.items()}

    def peak_compression(self, traj: xr.DataArray, n: xr.DataArray) -> xr.Dataset:
        """The largest Lambda along each run's trajectory, its mean over seeds and its exponent in P. With the
        hinge losses, the last margins are often fitted by a few neurons that grow across x_perp; Lambda at the
        end then falls from its peak, and the peak is the compression the bulk of the neurons reached."""
        peak = traj.max("time", skipna=True)
        mean = peak.mean("seed").transpose("h", "regime", "P")
        fits, _ = power_law_fits(mean["P"].astype(float), mean, "P", self.level)
        pct = f"{self.level:.0%}"
        return xr.Dataset({
            "lambda_peak_mean": mean.assign_attrs(long_name="<max over time of Lambda>, mean over seeds"),
            "lambda_peak_sem": (peak.std("seed", ddof=1) / n).transpose("h", "regime", "P").assign_attrs(
                long_name="standard error of <max over time of Lambda>"),
            "lambda_peak_exponent": fits["exponent"].assign_attrs(long_name="exponent of <max_t Lambda> ~ P^exponent"),
            "lambda_peak_low": fits["low"].assign_attrs(long_name=f"low end of the {pct} interval of that exponent"),
            "lambda_peak_high": fits["high"].assign_attrs(long_name=f"high end of the {pct} interval of that exponent"),
        })

    def compressed_curve(self, cube: xr.Dataset) -> xr.Dataset:
        """<eps> over P of the compressed-kernel cube (over its seeds, at each of its other points: one curve)."""
        from pathlib import Path

        other = dlphase.open_cube(Path(self.compressed))
        if "test_error" not in other or "P" not in other.dims:
            raise DlphaseError(f"{self.compressed!r} has no test_error over P; give the cube of a kernel sweep")
        eps = other["test_error"].where(usable(other))
        rest = [dim for dim in eps.dims if dim not in ("P", "seed")]
        eps = eps.mean("seed")
        if any(other.sizes[dim] > 1 for dim in rest):
            raise DlphaseError(f"{self.compressed!r} holds several points of {', '.join(rest)}; give one kernel "
                               f"learning curve (one h and one alpha_tilde)")
        eps = eps.squeeze(rest, drop=True)
        fit = power_law_fit(eps["P"].values.astype(float), eps.values, self.level)
        by = _spec_value(other, "dynamics", "compression")
        return xr.Dataset({
            "compressed_test_error": eps.rename(P="P_compressed").assign_attrs(
                long_name="<eps> of the kernel on compressed inputs, mean over seeds"),
            "compressed_beta": ((), -fit["exponent"], {"long_name": "beta of the compressed kernel's learning curve"}),
            "compressed_beta_low": ((), -fit["high"], {"long_name": "low end of its interval"}),
            "compressed_beta_high": ((), -fit["low"], {"long_name": "high end of its interval"}),
        }, attrs={"compressed_lambda": "" if by is None else str(by)})

    def summary(self, result: xr.Dataset) -> list[str]:
        lines = [f"stripe model, d = {result.attrs['d']}, d_par = {result.attrs['d_par']}: predicted beta_lazy = "
                 f"{float(result['beta_predicted'].sel(regime='lazy')):.3f}, beta_feature = "
                 f"{float(result['beta_predicted'].sel(regime='feature')):.3f}"
                 + (f" ((2d - 1) / (3d - 2) = {float(result['beta_interface']):.3f} for one informative direction)"
                    if "beta_interface" in result and np.isfinite(float(result["beta_interface"])) else "")]
        for h in result["h"].values:
            for regime in result["regime"].values:
                r = result.sel(h=h, regime=regime)
                a = float(r["alpha_tilde_of_regime"])
                lines.append(f"h = {h}, {regime} (alpha_tilde = {a:g}): beta = {float(r['beta']):.3f} "
                             f"[{float(r['beta_low']):.3f}, {float(r['beta_high']):.3f}] (predicted "
                             f"{float(r['beta_predicted']):.3f}); Lambda ~ P^{float(r['lambda_exponent']):.3f} "
                             f"[{float(r['lambda_low']):.3f}, {float(r['lambda_high']):.3f}], Lambda from "
                             f"{float(r['lambda_mean'][0]):.3g} to {float(r['lambda_mean'][-1]):.3g}")
                if "lambda_peak_exponent" in r:
                    lines.append(f"    peak over the trajectory: max_t Lambda ~ "
                                 f"P^{float(r['lambda_peak_exponent']):.3f} "
                                 f"[{float(r['lambda_peak_low']):.3f}, {float(r['lambda_peak_high']):.3f}], from "
                                 f"{float(r['lambda_peak_mean'][0]):.3g} to {float(r['lambda_peak_mean'][-1]):.3g}")
        if "beta_fit" in result.attrs:
            lines.append(f"beta fitted on {result.attrs['beta_fit']}")
        if "compressed_beta" in result:
            lines.append(f"kernel on {_compressed_label(result)}: beta = "
                         f"{float(result['compressed_beta']):.3f} "
                         f"[{float(result['compressed_beta_low']):.3f}, {float(result['compressed_beta_high']):.3f}]")
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        import holoviews as hv

        from .curves import PALETTE, finish, stack, style

        marker = {"size": 8} if backend == "bokeh" else {"s": 40}
        eps_items, lam_items = [], []
        for i, h in enumerate(result["h"].values):
            for j, regime in enumerate(result["regime"].values):
                r = result.sel(h=h, regime=regime)
                color = PALETTE[(2 * i + j) % len(PALETTE)]
                label = f"h = {h}, {regime}"
                P = r["P"].values
                eps_items.append(hv.Scatter((P, r["test_error_mean"].values), "P", "test error",
                                            label=f"{label}: beta = {float(r['beta']):.2f}").opts(color=color,
                                                                                                 **marker))
                eps_items.append(hv.Curve((P, r["test_error_mean"].values), "P", "test error").opts(
                    **style(backend, color)))
                lam_items.append(hv.Scatter((P, r["lambda_mean"].values), "P", "Lambda",
                                            label=f"{label}: P^{float(r['lambda_exponent']):.2f}").opts(
                    color=color, **marker))
                lam_items.append(hv.Curve((P, r["lambda_mean"].values), "P", "Lambda").opts(**style(backend, color)))
                if "lambda_peak_mean" in r:
                    peak_label = f"{label}, peak over time: P^{float(r['lambda_peak_exponent']):.2f}"
                    lam_items.append(hv.Curve((P, r["lambda_peak_mean"].values), "P", "Lambda", label=peak_label)
                                     .opts(**style(backend, color, "dashed")))
        if "compressed_test_error" in result:
            c = result["compressed_test_error"]
            eps_items.append(hv.Curve((c["P_compressed"].values, c.values), "P", "test error",
                                      label=f"NTK on {_compressed_label(result)}: beta = "
                                            f"{float(result['compressed_beta']):.2f}")
                             .opts(**style(backend, "black", "dashed")))
        P = result["P"].values.astype(float)
        feature = result["lambda_peak_mean" if "lambda_peak_mean" in result else "lambda_mean"].sel(
            regime="feature").isel(h=0).values
        if np.isfinite(feature[0]) and feature[0] > 0:
            guide = feature[0] * np.sqrt(P / P[0])
            lam_items.append(hv.Curve((P, guide), "P", "Lambda", label="P^(1/2)").opts(**style(backend, "gray",
                                                                                                 "dotted")))
        eps_plot = finish(hv.Overlay(eps_items), backend, "learning curves (stripe model)", "P", "test error",
                          logx=True, logy=True)
        lam_plot = finish(hv.Overlay(lam_items), backend, "compression Lambda = W_par / W_perp", "P", "Lambda",
                          logx=True, logy=True)
        panels = [eps_plot, lam_plot]
        if "scatter_w" in result:
            panels.append(weight_scatter(result, backend))
        return stack(panels, backend)


def stored_weights(cube: xr.Dataset, **point) -> xr.Dataset:
    """The first-layer weight vectors of one run at each moment they were stored (initialisation, the
    trajectory's checkpoints, the end), with the sizes of their outgoing weights: ``first_layer_w_*`` and
    ``first_layer_v_*`` of the ``first_layer`` observable with ``store_weights``."""
    if "first_layer_w_end" not in cube:
        raise DlphaseError("the cube holds no first-layer weights; set observables.first_layer.store_weights = true")
    run = cube.sel(**point)
    moments = [("init", run["first_layer_w_init"], run["first_layer_v_init"])]
    if "first_layer_w_traj" in run:
        for k, t in enumerate(run["time"].values):
            w = run["first_layer_w_traj"].isel(time=k)
            if bool(np.isfinite(w).any()):
                moments.append((f"t = {t:.3g}", w, run["first_layer_v_traj"].isel(time=k)))
    moments.append(("end", run["first_layer_w_end"], run["first_layer_v_end"]))
    label = ", ".join(f"{k} = {v:g}" for k, v in point.items())
    return xr.Dataset({
        "scatter_w": (("moment", "neuron", "input"), np.stack([m[1].values for m in moments]),
                      {"long_name": f"first-layer weight vectors W_i of the run at {label}"}),
        "scatter_v": (("moment", "neuron"), np.stack([m[2].values for m in moments]),
                      {"long_name": "size of each neuron's outgoing weights"})},
        coords={"moment": [m[0] for m in moments]}, attrs={"scatter_run": label})


def weight_scatter(result: xr.Dataset, backend: str = "bokeh"):
    """The paper's Fig. 10-left from :func:`stored_weights`: the weight vectors (W_i1, W_i2) at each moment,
    the marker's size growing with the neuron's outgoing weights."""
    import holoviews as hv

    from .curves import PALETTE, finish

    items = []
    v_max = max(float(np.nanmax(result["scatter_v"].values)), 1e-300)
    for i, moment in enumerate(result["moment"].values):
        w, v = result["scatter_w"].sel(moment=moment).values, result["scatter_v"].sel(moment=moment).values
        keep = np.isfinite(v)
        size = 3 + 12 * v[keep] / v_max
        data = {"W_i1": w[keep, 0], "W_i2": w[keep, 1], "size": size if backend == "bokeh" else size ** 2}
        opts = {"size": "size"} if backend == "bokeh" else {"s": "size"}
        items.append(hv.Points(data, ["W_i1", "W_i2"], ["size"], label=str(moment)).opts(
            color=PALETTE[i % len(PALETTE)], alpha=0.6, **opts))
    return finish(hv.Overlay(items), backend, f"first-layer weights ({result.attrs.get('scatter_run', '')})",
                  "W_i1 (informative)", "W_i2", logx=False, logy=False)


@dlphase.hookimpl
def register_analyses(register):
    register(Stripe)
