"""The source layout: every package folder ships in a wheel, and no two modules share a name."""

import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOPS = {"dlphase": "core", "dlphase.plugins": "plugins", "dlphase.analyses": "analyses"}


def test_every_package_folder_is_listed_in_pyproject():
    """setuptools installs only the listed packages: a folder left out would import in an editable install and be
    missing from a wheel."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == TOPS
    found = set()
    for name, folder in TOPS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert sorted(found) == sorted(tool["packages"])


def test_module_names_are_unique():
    """A module's name says what it holds, once: core, the plugins and the analyses never reuse one."""
    names = Counter(p.stem for folder in TOPS.values() for p in (ROOT / folder).rglob("*.py") if p.stem != "__init__")
    assert [n for n, c in names.items() if c > 1] == []
