"""A newcomer's path, in the README's order: its spec runs as written (on a smaller grid), the docs pages it names
exist, the example plugin package it names is listed and sweeps (its observable measured, its analysis run), and
the sweep's report is written."""

import json
import re
from pathlib import Path

import xarray as xr

from tests.conftest import install_package, run_cli, write

ROOT = Path(__file__).parent.parent
BLOBS_SPEC = """
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


def test_the_readme_path_from_spec_to_plugin_to_report(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 130
    for page in re.findall(r"`(docs/[\w-]+\.md)`", readme):
        assert (ROOT / page).exists(), page
    spec_text = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    spec = write(tmp_path / "spec.toml", spec_text)
    small = ["--set", "grid.h=[8]", "--set", "grid.alpha_tilde=[1000.0]", "--set", "grid.P=[200]",
             "--set", "grid.seed=[0]", "--set", "dynamics.max_steps=300", "--set", "dataset.n_kernel=50"]
    res = run_cli("sweep", spec, "-o", tmp_path / "cube.nc", "-q", *small)
    assert res.returncode == 0, res.stderr
    # the plugin the README points to, installed through its entry point, then a sweep with it and its report
    install_package(tmp_path, monkeypatch, "dlphase_blobs",
                    (ROOT / "examples" / "plugin_package" / "dlphase_blobs.py").read_text())
    res = run_cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    listed = {(p["kind"], p["name"]): p["origin"] for p in json.loads(res.stdout)}
    for key in (("dataset", "blobs"), ("observable", "margins"), ("analysis", "margin_spread")):
        assert listed[key] == "dlphase-blobs"
    res = run_cli("sweep", write(tmp_path / "blobs.toml", BLOBS_SPEC), "-o", tmp_path / "blobs.nc", "-q")
    assert res.returncode == 0, res.stderr
    cube = xr.open_dataset(tmp_path / "blobs.nc")
    # the observable's smallest margin is >= 1 exactly where the run converged (every y f >= 1)
    assert ((cube["margin_min"] >= 1) == (cube["status"] == "converged")).all()
    assert (cube["margin_spread"] > 0).all()
    res = run_cli("report", tmp_path / "blobs.nc", "-o", tmp_path / "report.html")
    assert res.returncode == 0, res.stderr
    assert "margin_spread" in res.stdout and (tmp_path / "report.html").stat().st_size > 10000
