"""mkdocs hook: the reference pages' tables and contracts, generated at build time from the installed plugins, the
hook specifications and the interfaces' docstrings, so that they cannot drift from the code.

A page asks for a part with a marker line: ``<!-- reference: plugins -->``, ``<!-- reference: variables -->``,
``<!-- reference: hooks -->`` or ``<!-- reference: interfaces -->``.
"""

from __future__ import annotations

import inspect
import json
import re

MARKER = re.compile(r"^<!-- reference: (\w+) -->$", re.MULTILINE)
KIND_TITLES = {"dataset": "Datasets", "architecture": "Architectures", "dynamics": "Dynamics", "loss": "Losses",
               "observable": "Observables", "analysis": "Analyses"}
INTERFACES = ("Dataset", "Data", "Architecture", "Net", "Loss", "Dynamics", "TrainResult", "Observable", "Variable",
              "RunState", "Analysis")


def cell(value) -> str:
    """Text safe inside a markdown table cell."""
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def plugins() -> str:
    from dlphase.manager import get_manager

    out = []
    described = get_manager().describe()
    for kind, title in KIND_TITLES.items():
        out.append(f"### {title}\n")
        for item in (d for d in described if d["kind"] == kind):
            out.append(f"#### `{item['name']}`\n\n{cell(item['description'])} (`{item['object']}`, from "
                       f"{item['origin']})\n")
            if item["parameters"]:
                out.append("| parameter | type | default | meaning |\n|---|---|---|---|")
                for p in item["parameters"]:
                    out.append(f"| `{p['name']}` | `{cell(p['type'])}` | `{cell(p['default'])}` | {cell(p['doc'])} |")
                out.append("")
    return "\n".join(out)


def variables() -> str:
    from dlphase.manager import get_manager

    manager = get_manager()
    out = []
    for name in manager.names("observable"):
        cls = manager.get("observable", name)
        try:
            declared = cls().variables
        except TypeError:  # an observable without defaults for every field: its class-level declaration
            declared = cls.variables
        out.append(f"### `{name}`\n\n| variable | dims besides the grid's | depends on | meaning |\n|---|---|---|---|")
        for var, v in declared.items():
            dims = ", ".join(v.dims) or "-"
            over = ", ".join(getattr(v, "over", None) or ("every grid dim",))
            out.append(f"| `{var}` | {cell(dims)} | {cell(over)} | {cell(v.long_name)} |")
        out.append("")
    return "\n".join(out)


ROLE = re.compile(r":(?:class|meth|func|mod|attr):`~?([^`]+)`")


def _doc(obj) -> str:
    """The docstring as markdown: reST roles and double backquotes become code spans."""
    return ROLE.sub(r"`\1`", inspect.cleandoc(obj.__doc__ or "").replace("``", "`"))


def _signature(fn) -> str:
    """The signature with the postponed annotations unquoted."""
    try:
        return str(inspect.signature(fn)).replace("'", "").replace('"', "")
    except (TypeError, ValueError):
        return "(...)"


def hooks() -> str:
    from dlphase import hookspecs

    out = []
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if name.startswith("register_"):
            out.append(f"### `{name}{_signature(fn)}`\n\n{_doc(fn)}\n")
    return "\n".join(out)


def interfaces() -> str:
    import dlphase

    out = []
    for name in INTERFACES:
        cls = getattr(dlphase, name)
        out.append(f"### `dlphase.{name}`\n\n{_doc(cls)}\n")
        for member, value in cls.__dict__.items():
            if member.startswith("_") and member != "__call__":
                continue
            fn = value.fget if isinstance(value, property) else value
            if not callable(fn) or not fn.__doc__:
                continue
            doc = _doc(fn).replace("\n", "\n    ")  # the rest of the docstring stays inside the list item
            out.append(f"- **`{member}{_signature(fn)}`**" + (" (property)" if isinstance(value, property) else "") +
                       f": {doc}\n")
    return "\n".join(out)


PARTS = {"plugins": plugins, "variables": variables, "hooks": hooks, "interfaces": interfaces}


def on_page_markdown(markdown, page, config, files):
    def fill(match):
        part = match.group(1)
        if part not in PARTS:
            raise ValueError(f"{page.file.src_path}: unknown reference part {part!r}; known: {', '.join(PARTS)}")
        return PARTS[part]()

    return MARKER.sub(fill, markdown)
