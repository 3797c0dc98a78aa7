"""The documented example package (examples/plugin_package) installed through its entry point: dlphase finds its
dataset, observable and analysis, and a sweep and its analysis run with them from the command line."""

import json
from pathlib import Path

import xarray as xr

from tests.conftest import install_package, run_cli, write

ROOT = Path(__file__).parent.parent
SPEC = """
[dataset]
name = "blobs"
d = 4

[architecture]
name = "fc"
depth = 1

[dynamics]
name = "gradient_flow"
max_steps = 3000

[observables]
names = ["errors", "margins"]

[grid]
h = [4, 16]
alpha_tilde = [1.0]
P = [40]
seed = [0, 1]
"""


def test_the_example_package_works_as_documented(tmp_path, monkeypatch):
    source = (ROOT / "examples" / "plugin_package" / "dlphase_blobs.py").read_text()
    install_package(tmp_path, monkeypatch, "dlphase_blobs", source)
    res = run_cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    listed = {(p["kind"], p["name"]): p["origin"] for p in json.loads(res.stdout)}
    for key in (("dataset", "blobs"), ("observable", "margins"), ("analysis", "margin_spread")):
        assert listed[key] == "dlphase-blobs"
    spec = write(tmp_path / "blobs.toml", SPEC)
    res = run_cli("sweep", spec, "-o", tmp_path / "c.nc", "-q")
    assert res.returncode == 0, res.stderr
    cube = xr.open_dataset(tmp_path / "c.nc")
    # the observable's smallest margin is >= 1 exactly where the run converged (every y f >= 1)
    assert ((cube["margin_min"] >= 1) == (cube["status"] == "converged")).all()
    assert (cube["margin_spread"] > 0).all()
    res = run_cli("analyze", "margin_spread", tmp_path / "c.nc")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("# margin_spread\nmargin spread from")
