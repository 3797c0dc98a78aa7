"""The phase diagram over (h, alpha_tilde): test error, ensemble test error eps(<f>), jammed region, and
with the ``ntk`` observable the lazy / feature crossover line (NTK change ratio = 1)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import xarray as xr

import dlphase
from dlphase import Analysis, param
from dlphase.errors import DlphaseError

from .ensemble import ensemble_members, usable


def select_P(cube: xr.Dataset, P: int | None) -> xr.Dataset:
    """The cube at ``P`` (default: its largest), or an error that lists the P it holds."""
    if P is None:
        P = int(cube["P"].max())
    if P not in cube["P"].values:
        raise DlphaseError(f"P = {P} is not in the cube; it holds P = {', '.join(map(str, cube['P'].values))}")
    return cube.sel(P=P)


def phase_diagram(cube: xr.Dataset, P: int | None = None, line: xr.Dataset | None = None) -> xr.Dataset:
    """Per (h, alpha_tilde) at one P: mean and spread over seeds of the test error, the ensemble
    test error eps(<f>) with <f> the mean over seeds of f_test, and the fraction of seeds jammed
    (ending with N_Delta > 0); the geometric-mean NTK change where the cube has it; and the jamming line
    (``jamming_h`` over ``line_alpha_tilde``) from ``line``, or from the cube when it is a jamming search.
    Failed runs are left out of every average."""
    missing = [v for v in ("test_error", "n_delta") if v not in cube]
    if missing:
        raise DlphaseError(f"the cube has no {', '.join(missing)}; sweep with observables.names including 'errors'")
    c = select_P(cube, P)
    ok = usable(c)
    err = c["test_error"].where(ok)
    out = xr.Dataset({
        "test_error": err.mean("seed").assign_attrs(long_name="test error, mean over seeds"),
        "test_error_std": err.std("seed").assign_attrs(long_name="test error, std over seeds"),
        "jammed_fraction": (c["n_delta"] > 0).where(ok).mean("seed").assign_attrs(
            long_name="fraction of seeds ending with N_Delta > 0"),
        "n_seeds": ok.sum("seed").assign_attrs(long_name="runs averaged (not failed)"),
    })
    if "f_test" in c and c.sizes["seed"] > 1:
        out["ensemble_test_error"] = ensemble_members(c)["ensemble_test_error"].assign_attrs(
            long_name="ensemble test error eps(<f>), <f> = mean over seeds of f")
    if "ntk_change" in c:
        out["ntk_change"] = np.exp(np.log(c["ntk_change"].where(ok)).mean("seed")).assign_attrs(
            long_name="|Theta_end - Theta_0| / |Theta_0|, geometric mean over seeds")
    out.attrs["P"] = int(c["P"])
    line = line if line is not None else (cube if "h_star" in cube else None)
    if line is not None:
        from .jamming_line import jamming_curve

        lh, la = jamming_curve(line, int(c["P"]) if int(c["P"]) in line["P"].values else None)
        out["jamming_h"] = xr.DataArray(lh, dims="line_alpha_tilde", coords={"line_alpha_tilde": la},
                                        attrs={"long_name": "jamming line: geometric mean of h* and the next width"})
    return out


def plane_reason(cube: xr.Dataset) -> str | None:
    """Why the cube spans no (h, alpha_tilde) plane, or None."""
    if cube.sizes.get("h", 1) < 2 or cube.sizes.get("alpha_tilde", 1) < 2:
        return "the cube needs at least 2 widths and 2 values of alpha_tilde"
    return None


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


def log_ticks(edges) -> list[tuple[float, str]]:
    """Tick marks for a log axis over ``edges``: powers of 10, or of 2 where the range holds fewer than 3 of 10."""
    lo, hi = float(np.min(edges)) * (1 - 1e-9), float(np.max(edges)) * (1 + 1e-9)
    for base in (10.0, 2.0):
        ticks = [base ** k for k in range(int(np.floor(np.log(lo) / np.log(base))),
                                          int(np.ceil(np.log(hi) / np.log(base))) + 1) if lo <= base ** k <= hi]
        if len(ticks) >= 3:
            break
    return [(t, f"{t:g}") for t in ticks]


def phase_diagram_plot(cube: xr.Dataset, P: int | None = None, backend: str = "bokeh", line: xr.Dataset | None = None):
    """A holoviews layout: one log-log heatmap per error measure, the jammed cells marked, the jamming line
    h*(alpha_tilde) from ``line`` (a file of dlphase jamming) or from the cube itself when it is one, and the
    lazy / feature crossover."""
    return draw_phase_diagram(phase_diagram(cube, P, line), backend)


def draw_phase_diagram(pdg: xr.Dataset, backend: str = "bokeh"):
    """Draw the result of :func:`phase_diagram`."""
    import holoviews as hv

    pdg = pdg.sortby(["h", "alpha_tilde"])
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
                      title=f"{title}, P = {pdg.attrs['P']}" + (" (x: jammed)" if jammed.any() else ""),
                      xlabel="h", ylabel="alpha_tilde")
        if backend == "bokeh":
            mesh = mesh.opts(width=480, height=400, tools=["hover"], **common)
            pts = points.opts(color="red", marker="x", size=12, line_width=2, show_legend=False)
        else:
            # matplotlib labels the minor ticks of a log axis spanning less than a decade, and they overlap
            mesh = mesh.opts(fig_inches=5, xticks=log_ticks(xe), yticks=log_ticks(ye), **common)
            pts = points.opts(color="red", marker="X", s=60, show_legend=False)
        overlay = mesh * pts if jammed.any() else mesh
        if "ntk_change" in pdg:  # the lazy / feature crossover: ratio 1 solid, 0.1 and 10 dashed
            for level, dash in ((1.0, "solid"), (0.1, "dashed"), (10.0, "dashed")):
                lh, la = crossover(pdg, level)
                if len(lh) > 1:
                    line = hv.Curve((lh, la), "h", "alpha_tilde", label=f"NTK change = {level:g}")
                    style = {"line_dash": dash} if backend == "bokeh" else \
                        {"linestyle": "--" if dash == "dashed" else "-"}
                    overlay = overlay * line.opts(color="white", **style)
        if "jamming_h" in pdg:
            lh, la = pdg["jamming_h"].values, pdg["line_alpha_tilde"].values
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
    from .html import save_figure

    path = Path(path)
    backend = "matplotlib" if path.suffix.lower() == ".png" else "bokeh"
    _load_backend(backend)
    layout = phase_diagram_plot(cube, P, backend=backend, line=line)
    save_figure(layout, path, "dlphase phase diagram")


def _load_backend(backend: str) -> None:
    import holoviews as hv

    if backend == "matplotlib":
        import matplotlib

        matplotlib.use("Agg")
    if backend not in hv.Store.renderers:
        hv.extension(backend, logo=False)
    hv.Store.set_current_backend(backend)


@attrs.frozen(kw_only=True)
class PhaseDiagram(Analysis):
    """The phase diagram over (h, alpha_tilde) at one P: <eps(f)>, eps(<f>), the jammed cells, the jamming line
    (from a jamming search, or ``jamming``) and the lazy / feature crossover (with the ntk observable)."""

    name: ClassVar[str] = "phase_diagram"
    requires: ClassVar = ("test_error", "n_delta")
    P: int | None = param(default=None, doc="which P (default: the largest in the cube)")
    jamming: str | None = param(default=None, doc="a LINE.nc of dlphase jamming whose line to draw")

    def applies(self, cube: xr.Dataset) -> str | None:
        # a file of dlphase jamming is drawn for its line, even along a single alpha_tilde
        return super().applies(cube) or (None if "h_star" in cube else plane_reason(cube))

    def compute(self, cube: xr.Dataset) -> xr.Dataset:
        from .jamming_line import open_line

        out = phase_diagram(cube, self.P, open_line(self.jamming) if self.jamming is not None else None)
        out.attrs["analysis"] = self.name
        return out

    def summary(self, result: xr.Dataset) -> list[str]:
        lines = []
        for field in ("test_error", "ensemble_test_error"):
            if field in result and np.isfinite(result[field].values).any():
                best = result[field].argmin(...)
                at = {d: float(result[d].values[int(i)]) for d, i in best.items()}
                lines.append(f"lowest {field} = {float(result[field].isel(best)):.4f} at h = {at['h']:g}, "
                             f"alpha_tilde = {at['alpha_tilde']:g}")
        if "jamming_h" in result:
            lines.append("jamming line: " + ", ".join(f"alpha_tilde = {a:g}: h* ~ {h:.1f}" for h, a in zip(
                result["jamming_h"].values, result["line_alpha_tilde"].values)))
        if "ntk_change" in result:
            hs, alphas = crossover(result)
            lines.append("lazy / feature crossover (NTK change = 1): " + (", ".join(
                f"h = {h:g}: alpha_tilde = {a:.3g}" for h, a in zip(hs, alphas)) or "not inside the grid"))
        return lines

    def plot(self, result: xr.Dataset, backend: str = "bokeh"):
        return draw_phase_diagram(result, backend)


@dlphase.hookimpl
def register_analyses(register):
    register(PhaseDiagram)

