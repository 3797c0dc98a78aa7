"""``dlphase report``: one self-contained HTML page (bokeh with inline resources, no network) with every analysis
that applies to a cube, what was skipped and why, and the spec and provenance."""

from __future__ import annotations

import html
import os
import warnings

import xarray as xr

from dlphase.errors import DlphaseError

from .html import write_html
from .dispatch import table_groups

#: the order of the page; other registered analyses (third-party ones) follow
ORDER = ("phase_diagram", "double_descent", "divergence", "jamming_plane", "ensemble", "fluctuation_scaling",
         "learning_curve")


def _table_html(result: xr.Dataset, max_rows: int = 40) -> str:
    """The result's small variables (not over test points) as HTML tables, one per set of dims."""
    parts = []
    for dims, names in table_groups(result, numeric=True):
        if not dims:
            rows = "".join(f"<tr><th>{html.escape(n)}</th><td>{float(result[n]):.4g}</td></tr>" for n in names)
            parts.append(f"<table>{rows}</table>")
        else:
            frame = result[names].to_dataframe()[names]
            parts.append(frame.to_html(max_rows=max_rows, float_format=lambda v: f"{v:.4g}", border=0))
    return "".join(parts)


def _failed(name: str, step: str, exc: Exception) -> str:
    """Say, in a warning and in the page, that an analysis failed at ``step``."""
    message = f"the {name} analysis failed to {step}: {type(exc).__name__}: {exc}"
    warnings.warn(f"{message}; the report goes on without it", stacklevel=3)
    return message


def _div(text: str, width: int = 1000):
    from bokeh.models import Div

    return Div(text=text, width=width)


def write_report(cube: xr.Dataset, path: str | os.PathLike, manager=None, source: str = "") -> list[str]:
    """Write the report to ``path`` (atomically) and return the names of the analyses it holds."""
    import holoviews as hv
    from bokeh.layouts import column
    from bokeh.models import Plot

    from dlphase.manager import get_manager

    from .phase_diagram import _load_backend

    _load_backend("bokeh")
    manager = manager or get_manager()
    names = [n for n in ORDER if n in manager.names("analysis")]
    names += [n for n in manager.names("analysis") if n not in names]
    blocks, done, skipped = [], [], []
    for name in names:
        try:
            analysis = manager.get("analysis", name)()
            reason = analysis.applies(cube)
        except Exception as exc:
            skipped.append((name, _failed(name, "start", exc)))
            continue
        if reason is None:
            try:
                result = analysis.compute(cube)
            except DlphaseError as exc:
                reason = str(exc)
            except Exception as exc:  # a plugin's bug costs its own section, never the page
                reason = _failed(name, "compute", exc)
        if reason is not None:
            skipped.append((name, reason))
            continue
        done.append(name)
        summary = "".join(f"<li>{html.escape(line)}</li>" for line in analysis.summary(result))
        blocks.append(_div(f"<h2>{html.escape(name.replace('_', ' '))}</h2>"
                           f"<p>{html.escape(type(analysis).__doc__ or '')}</p><ul>{summary}</ul>"))
        try:
            blocks.append(hv.render(analysis.plot(result, backend="bokeh"), backend="bokeh"))
        except NotImplementedError:
            pass
        except Exception as exc:
            blocks.append(_div(f"<p>{html.escape(_failed(name, 'plot', exc))}</p>"))
        blocks.append(_div(f"<details><summary>table</summary>{_table_html(result)}</details>"))
    if not done:
        raise DlphaseError("no analysis applies to this cube: " + "; ".join(f"{n}: {r}" for n, r in skipped))
    if skipped:
        items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(r)}</li>" for n, r in skipped)
        blocks.append(_div(f"<h2>not applicable</h2><ul>{items}</ul>"))
    provenance = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                         for k, v in cube.attrs.items() if k != "spec_toml")
    blocks.append(_div(f"<h2>spec and provenance</h2><p>{html.escape(source)}</p>"
                       f"<pre>{html.escape(cube.attrs.get('spec_toml', '(no spec in the cube)'))}</pre>"
                       f"<table>{provenance}</table>"))
    head = _div(f"<h1>dlphase report</h1><p>{html.escape(source)}: dims "
                f"{html.escape(', '.join(f'{d} = {n}' for d, n in cube.sizes.items()))}</p>")
    layout = column(head, *blocks)
    n_plots = len(list(layout.select({"type": Plot})))
    write_html(layout, path, title=f"dlphase report: {n_plots} plots")
    return done
