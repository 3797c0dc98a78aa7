"""The phase diagram over (h, alpha_tilde): test error, ensemble test error eps(<f>), jammed region, and
with the ``ntk`` observable the lazy / feature crossover line (NTK change ratio = 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from dlphase.errors import DlphaseError


def _select_P(cube: xr.Dataset, P: int | None) -> xr.Dataset:
    if P is None:
        P = int(cube["P"].max())
    if P not in cube["P"].values:
        raise DlphaseError(f"P = {P} is not in the cube; it holds P = {', '.join(map(str, cube['P'].values))}")
    return cube.sel(P=P)


def phase_diagram(cube: xr.Dataset, P: int | None = None) -> xr.Dataset:
    """Per (h, alpha_tilde) at one P: mean and spread over seeds of the test error, the ensemble
    test error eps(<f>) with <f> the mean over seeds of f_test, and the fraction of seeds jammed
    (ending with N_Delta > 0). Failed runs are left out of every average."""
    missing = [v for v in ("test_error", "n_delta") if v not in cube]
    if missing:
        raise DlphaseError(f"the cube has no {', '.join(missing)}; sweep with observables.names including 'errors'")
    c = _select_P(cube, P)
    ok = c["status"] != "failed"
    err = c["test_error"].where(ok)
    out = xr.Dataset({
        "test_error": err.mean("seed").assign_attrs(long_name="test error, mean over seeds"),
        "test_error_std": err.std("seed").assign_attrs(long_name="test error, std over seeds"),
        "jammed_fraction": (c["n_delta"] > 0).where(ok).mean("seed").assign_attrs(
            long_name="fraction of seeds ending with N_Delta > 0"),
        "n_seeds": ok.sum("seed").assign_attrs(long_name="runs averaged (not failed)"),
    })
    if "f_test" in c and c.sizes["seed"] > 1:
        f_mean = c["f_test"].where(ok).mean("seed")
        y = c["y_test"]
        out["ensemble_test_error"] = (f_mean * y <= 0).where(f_mean.notnull()).mean("test").assign_attrs(
            long_name="ensemble test error eps(<f>), <f> = mean over seeds of f")
    if "ntk_change" in c:
        out["ntk_change"] = np.exp(np.log(c["ntk_change"].where(ok)).mean("seed")).assign_attrs(
            long_name="|Theta_end - Theta_0| / |Theta_0|, geometric mean over seeds")
    out.attrs["P"] = int(c["P"])
    return out


def crossover(pdg: xr.Dataset, level: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The line where the NTK change ratio equals ``level``: for each h, the alpha_tilde at which the
    geometric-mean ratio crosses it (linear in log alpha_tilde and log ratio, first crossing from the
    feature side). Returns (h, alpha_tilde) of the widths where it crosses inside the grid."""
    r = pdg["ntk_change"].sortby("alpha_tilde")
    la = np.log(r["alpha_tilde"].values)
    hs, alphas = [], []
    for h in r["h"].values:
        lr = np.log(r.sel(h=h).values) - np.log(level)
        for i in range(len(la) - 1):
            if np.isfinite(lr[i]) and np.isfinite(lr[i + 1]) and lr[i] > 0 >= lr[i + 1]:
                hs.append(h)
                alphas.append(float(np.exp(la[i] + (la[i + 1] - la[i]) * lr[i] / (lr[i] - lr[i + 1]))))
                break
    return np.asarray(hs), np.asarray(alphas)


def log_edges(values) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, the outer cells as wide as their neighbours."""
    v = np.sort(np.asarray(values, dtype=float))
    if len(v) == 1:
        return np.array([v[0] / np.sqrt(2), v[0] * np.sqrt(2)])
    lv = np.log(v)
    mid = (lv[1:] + lv[:-1]) / 2
    return np.exp(np.concatenate([[2 * lv[0] - mid[0]], mid, [2 * lv[-1] - mid[-1]]]))


def phase_diagram_plot(cube: xr.Dataset, P: int | None = None, backend: str = "bokeh", line: xr.Dataset | None = None):
    """A holoviews layout: one log-log heatmap per error measure, the jammed cells marked, and the jamming line
    h*(alpha_tilde) from ``line`` (a file of dlphase jamming), or from the cube itself when it is one."""
    import holoviews as hv

    from dlphase.jamming import jamming_curve

    if line is None and "h_star" in cube:
        line = cube

    pdg = phase_diagram(cube, P).sortby(["h", "alpha_tilde"])
    hx, ay = pdg["h"].values, pdg["alpha_tilde"].values
    xe, ye = log_edges(hx), log_edges(ay)
    fields = [("test_error", "test error <eps(f)>")]
    if "ensemble_test_error" in pdg:
        fields.append(("ensemble_test_error", "ensemble test error eps(<f>)"))
    vmax = float(max(np.nanmax(pdg[f].values) if np.isfinite(pdg[f].values).any() else 0.5 for f, _ in fields))
    jam = pdg["jammed_fraction"]
    jx, jy = np.meshgrid(hx, ay, indexing="ij")
    jammed = jam.values > 0
    points = hv.Points((jx[jammed], jy[jammed], jam.values[jammed]), kdims=["h", "alpha_tilde"],
                       vdims=["jammed fraction"], label="jammed (N_Delta > 0)")
    panels = []
    for field, title in fields:
        z = pdg[field].transpose("alpha_tilde", "h").values
        mesh = hv.QuadMesh((xe, ye, z), kdims=["h", "alpha_tilde"], vdims=[hv.Dimension(field, label=title)])
        common = dict(logx=True, logy=True, colorbar=True, cmap="viridis", clim=(0, vmax),
                      title=f"{title}, P = {pdg.attrs['P']}" + (" (x: jammed)" if jammed.any() else ""), xlabel="h", ylabel="alpha_tilde")
        if backend == "bokeh":
            mesh = mesh.opts(width=480, height=400, tools=["hover"], **common)
            pts = points.opts(color="red", marker="x", size=12, line_width=2, show_legend=False)
        else:
            mesh = mesh.opts(fig_inches=5, **common)
            pts = points.opts(color="red", marker="X", s=60, show_legend=False)
        overlay = mesh * pts if jammed.any() else mesh
        if "ntk_change" in pdg:  # the lazy / feature crossover: ratio 1 solid, 0.1 and 10 dashed
            for level, dash in ((1.0, "solid"), (0.1, "dashed"), (10.0, "dashed")):
                lh, la = crossover(pdg, level)
                if len(lh) > 1:
                    line = hv.Curve((lh, la), "h", "alpha_tilde", label=f"NTK change = {level:g}")
                    style = {"line_dash": dash} if backend == "bokeh" else {"linestyle": "--" if dash == "dashed" else "-"}
                    overlay = overlay * line.opts(color="white", **style)
        if line is not None:
            lh, la = jamming_curve(line, pdg.attrs["P"])
            if len(lh):
                curve = hv.Curve((lh, la), "h", "alpha_tilde", label="jamming line h*")
                style = {"line_width": 3} if backend == "bokeh" else {"linewidth": 2.5}
                overlay = overlay * curve.opts(color="red", **style)
        panels.append(overlay)
    layout = hv.Layout(panels).cols(2)
    return layout.opts(hspace=0.9, sublabel_format="") if backend == "matplotlib" else layout


def save_phase_diagram(cube: xr.Dataset, path: str | Path, P: int | None = None,
                       line: xr.Dataset | None = None) -> None:
    """Write the phase diagram as self-contained HTML (bokeh) or PNG (matplotlib), by suffix."""
    import holoviews as hv

    path = Path(path)
    backend = "matplotlib" if path.suffix.lower() == ".png" else "bokeh"
    _load_backend(backend)
    layout = phase_diagram_plot(cube, P, backend=backend, line=line)
    if backend == "bokeh":
        from bokeh.resources import INLINE

        hv.save(layout, path, backend=backend, resources=INLINE, title="dlphase phase diagram")
    else:
        hv.save(layout, path, backend=backend, dpi=120)


def _load_backend(backend: str) -> None:
    import holoviews as hv

    if backend == "matplotlib":
        import matplotlib

        matplotlib.use("Agg")
    if backend not in hv.Store.renderers:
        hv.extension(backend, logo=False)
    hv.Store.set_current_backend(backend)
