"""Self-contained HTML from holoviews or bokeh objects: Bokeh's JavaScript inline, nothing fetched from a network.

holoviews' own ``hv.save`` goes through panel, whose pages load CSS from cdn.holoviz.org (panel issue #6759), and
importing panel makes Bokeh's ``file_html`` add a script tag for panel's es-module-shims under a relative
``static/`` path that does not exist beside the file; neither is needed for plain Bokeh plots, so both are
avoided or removed here, and the page is checked to load nothing from elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: <script src=...></script> and <link href=...> tags that load a file
_EXTERNAL = re.compile(r'<script[^>]*\ssrc="(?P<src>[^"]*)"[^>]*>\s*</script>|<link[^>]*\shref="(?P<href>[^"]*)"[^>]*>')


def standalone_html(obj, title: str) -> str:
    """The page of a holoviews object or Bokeh model with every resource inline."""
    import holoviews as hv
    from bokeh.embed import file_html
    from bokeh.model import Model
    from bokeh.resources import Resources

    model = obj if isinstance(obj, Model) else hv.render(obj, backend="bokeh")
    # Bokeh's own info messages stay out of the reader's console
    page = file_html(model, Resources(mode="inline", log_level="warn"), title=title)
    page = _EXTERNAL.sub(lambda m: "" if (m["src"] or m["href"] or "").startswith("static/extensions/")
                         else m.group(0), page)
    left = [m["src"] or m["href"] for m in _EXTERNAL.finditer(page)]
    if left:
        raise RuntimeError(f"the page would load {left}; it must be self-contained")
    return page


def write_html(obj, path: str | os.PathLike, title: str) -> None:
    """Write :func:`standalone_html` atomically."""
    from dlphase.files import atomic_write

    page = standalone_html(obj, title)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(page)

    atomic_write(path, write)


def save_figure(obj, path: str | os.PathLike, title: str) -> None:
    """Write a holoviews object as self-contained HTML (.html, Bokeh) or PNG (.png, matplotlib; ``obj`` must have
    been built for that backend), atomically."""
    import holoviews as hv

    from dlphase.files import atomic_write

    if Path(path).suffix.lower() != ".png":
        write_html(obj, path, title)
    else:
        atomic_write(path, lambda tmp: hv.save(obj, tmp, backend="matplotlib", dpi=110), suffix=".png")
