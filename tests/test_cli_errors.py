"""Bad input on the command line: exit status 2, one line on stderr, no traceback, no output file.

Most cases run the command line in this process (``run_cli_here``: no interpreter start-up each); the cases of
missing files, unwritable outputs and a missing subcommand run the installed ``dlphase`` script."""

import pytest

from tests.conftest import TINY_SPEC, run_cli, run_cli_here, write


def assert_clean_error(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in res.stderr and res.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


BAD_SPECS = {
    "unknown_plugin": (TINY_SPEC.replace('name = "fc"', 'name = "transformer"'),
                       ["architecture.name: unknown architecture 'transformer'; installed: cnn, fc, mean_field"]),
    "unknown_key": (TINY_SPEC.replace("pca = 5", "pca = 5\nwhitening = true"),
                    ["unknown key dataset.whitening", "valid keys: pca, whiten, center"]),
    "unknown_section": (TINY_SPEC + "\n[trainer]\nx = 1\n", ["unknown section [trainer]"]),
    "h_zero": (TINY_SPEC.replace("h = [4, 16]", "h = [0, 16]"), ["grid.h = 0 is invalid", "> 0"]),
    "h_negative": (TINY_SPEC.replace("h = [4, 16]", "h = [-4]"), ["grid.h = -4 is invalid"]),
    "P_too_large": (TINY_SPEC.replace("P = [100]", "P = [4900]"),
                    ["grid.P = 4900 is larger than the 4800 training points"]),
    "malformed_toml": (TINY_SPEC.replace("[grid]", "[grid"), ["is not valid TOML"]),
    "wrong_type": (TINY_SPEC.replace("max_steps = 400", 'max_steps = "many"'),
                   ["dynamics.max_steps = 'many' is invalid: expected int"]),
    "cnn_strides": (TINY_SPEC.replace('name = "fc"', 'name = "cnn"\nstrides = [2, 1, 2]').replace("pca = 5", "pca = 0"),
                    ["strides = [2, 1, 2] must give one stride >= 1 for each of the depth = 2 convolutions"]),
}


@pytest.mark.parametrize("command", ["sweep", "run"])
@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec(tmp_path, case, command):
    text, fragments = BAD_SPECS[case]
    spec = write(tmp_path / "bad.toml", text)
    out = tmp_path / "out.nc"
    extra = ["--set", "grid.h=[16]", "--set", "grid.alpha_tilde=[1.0]", "--set", "grid.seed=[0]"] \
        if command == "run" and case not in ("h_zero", "h_negative", "malformed_toml") else []
    res = run_cli_here(command, spec, "-o", out, *extra)
    assert_clean_error(res, *fragments)
    assert list(tmp_path.iterdir()) == [spec], "no output file, no runs folder"


def test_missing_spec_file(tmp_path):
    res = run_cli("sweep", tmp_path / "nope.toml", "-o", tmp_path / "c.nc")
    assert_clean_error(res, "does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing_folder", "folder", "under_a_file"])
def test_unwritable_output(tmp_path, tiny_spec, where):
    target = {"missing_folder": tmp_path / "no" / "such" / "c.nc",
              "folder": tmp_path / "adir.nc",
              "under_a_file": tmp_path / "tiny.toml" / "c.nc"}[where]
    if where == "folder":
        target.mkdir()
    before = sorted(tmp_path.rglob("*"))
    res = run_cli("sweep", tiny_spec, "-o", target)
    assert_clean_error(res, "c.nc" if where != "folder" else "is a folder")
    assert sorted(tmp_path.rglob("*")) == before


def test_bad_set_and_bad_options(tmp_path, tiny_spec):
    assert_clean_error(run_cli_here("sweep", tiny_spec, "-o", tmp_path / "c.nc", "--set", "grid.h"), "KEY=VALUE")
    assert_clean_error(run_cli_here("sweep", tiny_spec, "-o", tmp_path / "c.nc", "--workers", "0"), "--workers")
    assert_clean_error(run_cli_here("sweep", tiny_spec, "-o", tmp_path / "c.txt"), "must end in .nc")
    assert_clean_error(run_cli_here("sweep", tiny_spec), "Missing option '-o'")
    assert_clean_error(run_cli_here("frobnicate"), "No such command 'frobnicate'")
    assert_clean_error(run_cli_here("run", tiny_spec, "-o", tmp_path / "r.nc"),
                       "grid.h has 2 values but dlphase run takes one point")
    assert list(tmp_path.iterdir()) == [tiny_spec]


def test_plot_errors(tmp_path):
    assert_clean_error(run_cli_here("plot", "phase-diagram", tmp_path / "none.nc", "-o", tmp_path / "p.html"),
                       "does not exist")
    junk = write(tmp_path / "junk.nc", "not netcdf")
    assert_clean_error(run_cli_here("plot", "phase-diagram", junk, "-o", tmp_path / "p.html"), "cannot read")
    assert_clean_error(run_cli_here("plot", "phase-diagram", junk, "-o", tmp_path / "p.pdf"),
                       "must end in .html or .png")
    assert not (tmp_path / "p.html").exists()


def test_missing_subcommand():
    assert_clean_error(run_cli("plot"), "`dlphase plot` needs a command: crossover, divergence, double-descent, "
                                        "ensemble, fluctuation-scaling, hessian-spectrum, jamming-plane, "
                                        "learning-curve, ntk-fluctuations, phase-diagram, stripe")
