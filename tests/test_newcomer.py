"""A newcomer's path, in the README's order: its spec runs as written (on a smaller grid), the spec page and the
plugin page it points to exist, the plugin package it names sweeps, and the sweep's report is written."""

import re
from pathlib import Path

from tests.conftest import install_package, run_cli, write
from tests.test_plugin_package import SPEC as BLOBS_SPEC

ROOT = Path(__file__).parent.parent


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
    res = run_cli("sweep", write(tmp_path / "blobs.toml", BLOBS_SPEC), "-o", tmp_path / "blobs.nc", "-q")
    assert res.returncode == 0, res.stderr
    res = run_cli("report", tmp_path / "blobs.nc", "-o", tmp_path / "report.html")
    assert res.returncode == 0, res.stderr
    assert "margin_spread" in res.stdout and (tmp_path / "report.html").stat().st_size > 10000
