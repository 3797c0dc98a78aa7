"""Drawing helpers the analyses share: one coloured curve per alpha_tilde (or per value of the other dims), one
dash style per quantity, optional bands and fitted lines, log axes where the physics is a power law."""

from __future__ import annotations

import itertools

import numpy as np
import xarray as xr

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def style(backend: str, color: str, dash: str = "solid", width: float = 2.0) -> dict:
    """Line options for either backend (dash: solid, dashed or dotted)."""
    if backend == "bokeh":
        return {"color": color, "line_dash": dash, "line_width": width}
    return {"color": color, "linestyle": {"solid": "-", "dashed": "--", "dotted": ":"}[dash], "linewidth": width}


def largest_P(result: xr.Dataset) -> xr.Dataset:
    """The result at its largest P, when it has a P dim with several values (curves are drawn at one P)."""
    if "P" in result.dims:
        return result.sel(P=result["P"].max())
    return result


def groups(da: xr.DataArray, x: str):
    """(label, 1-d DataArray over x) for every combination of the other dims."""
    rest = [d for d in da.dims if d != x]
    for values in itertools.product(*(da[d].values for d in rest)):
        sel = dict(zip(rest, values))
        label = ", ".join(f"{d} = {v:g}" if isinstance(v, (float, np.floating)) else f"{d} = {v}"
                          for d, v in sel.items())
        yield sel, label, da.sel(sel)


def _major_labels_only(plot, element):
    """matplotlib labels every minor tick of a log axis that spans less than a decade or two, on top of each
    other; keep the labels of the decades."""
    from matplotlib.ticker import NullFormatter

    ax = plot.handles["axis"]
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def finish(overlay, backend: str, title: str, xlabel: str, ylabel: str, logx: bool = True, logy: bool = False):
    common = dict(title=title, xlabel=xlabel, ylabel=ylabel, logx=logx, logy=logy)
    if backend == "bokeh":
        return overlay.opts(width=720, height=420, legend_position="right", tools=["hover"], **common)
    return overlay.opts(fig_inches=(11, 4.5), aspect=1.6, legend_position="right", hooks=[_major_labels_only],
                        **common)


def stack(panels, backend: str):
    """Panels one above the other, without the matplotlib sub-labels (A, B) that overlap the titles."""
    import holoviews as hv

    layout = hv.Layout(panels).cols(1)
    return layout.opts(sublabel_format="", vspace=0.45, fig_size=180) if backend == "matplotlib" else layout


def curves_by_alpha(result: xr.Dataset, fields, ylabel: str, title: str, backend: str = "bokeh", x: str = "h",
                    logy: bool = False, bands: dict | None = None, x_values: xr.DataArray | None = None,
                    xlabel: str | None = None):
    """One colour per value of the dims other than ``x`` (alpha_tilde, typically), one dash per field
    (``fields``: (variable, label, dash)), shaded ``bands`` {variable: (low, high)}; at the largest P."""
    import holoviews as hv

    result = largest_P(result)
    items = []
    first = result[fields[0][0]]
    for i, (sel, label, _) in enumerate(groups(first, x)):
        color = PALETTE[i % len(PALETTE)]
        xs = (x_values.sel({k: v for k, v in sel.items() if k in x_values.dims}) if x_values is not None
              else result[x]).values
        order = np.argsort(xs)
        for field, what, dash in fields:
            if field not in result:
                continue
            ys = result[field].sel(sel).values
            if bands and field in bands and bands[field][0] in result:
                lo, hi = (result[b].sel(sel).values for b in bands[field])
                items.append(hv.Area((xs[order], lo[order], hi[order]), x, ["low", "high"]).opts(
                    color=color, alpha=0.15, **({"line_alpha": 0} if backend == "bokeh" else {"linewidth": 0})))
            items.append(hv.Curve((xs[order], ys[order]), x, "y", label=f"{label}: {what}" if label else what)
                         .opts(**style(backend, color, dash)))
    return finish(hv.Overlay(items), backend, title, xlabel or x, ylabel, logx=True, logy=logy)
