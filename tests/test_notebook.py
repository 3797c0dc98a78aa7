"""The example notebook runs from top to bottom on the bundled data."""

from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_example_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.delenv("DLPHASE_CUBE", raising=False)
    nb = nbformat.read(ROOT / "examples" / "explore_cube.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "lowest eps(<f>)" in text and "jamming at N" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if "data" in o)
    assert "ensemble_test_error" in html  # the xarray tables rendered
