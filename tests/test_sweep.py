"""The sweep engine: cube schema, corrupt and foreign runs folders, the lock, failures recorded, workers.
Kills at random moments are in test_kills.py."""

import contextlib
import shutil
import signal
import subprocess
import sys
from typing import ClassVar

import attrs
import numpy as np
import pytest
import xarray as xr

import dlphase
from dlphase.grid_point import execute
from dlphase.specs import build_spec, load_spec
from dlphase.sweep import runs_dir_for
from tests.agreement import assert_records_agree, tighter_spec
from tests.conftest import install_package, plugin_module, run_cli
from tests.test_cli_errors import assert_clean_error


def assert_same_results(a: xr.Dataset, b: xr.Dataset):
    """Equal in everything but the wall time (and the creation stamp)."""
    a, b = a.drop_vars("wall_seconds"), b.drop_vars("wall_seconds")
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    for key in ("spec_toml", "git_commit", "version_torch"):
        assert a.attrs[key] == b.attrs[key]


def test_cube_schema(tiny_spec, tmp_path):
    spec = load_spec(tiny_spec)
    cube = dlphase.sweep(spec, tmp_path / "cube.nc", progress=False)
    disk = dlphase.open_cube(tmp_path / "cube.nc")
    assert_same_results(cube, disk)
    assert dict(disk.sizes) == {"h": 2, "alpha_tilde": 2, "P": 1, "seed": 2, "test": 200}
    for dim in ("h", "alpha_tilde", "P", "seed"):
        assert disk[dim].attrs["long_name"] and disk[dim].attrs["units"] == "1"
    assert disk["test_error"].dims == ("h", "alpha_tilde", "P", "seed")
    assert disk["f_test"].dims == ("h", "alpha_tilde", "P", "seed", "test")
    assert disk["y_test"].dims == ("P", "test")
    assert disk["n_params"].dims == ("h",)
    np.testing.assert_array_equal(disk["n_params"].values, [5 * 4 + 16 + 4, 5 * 16 + 256 + 16])
    assert build_spec(__import__("tomllib").loads(disk.attrs["spec_toml"])) == spec
    assert disk.attrs["version_torch"] and disk.attrs["git_commit"]
    assert set(np.unique(disk["status"].values)) <= {"converged", "budget"}
    # errors are consistent with the stored outputs
    err = (disk["f_test"] * disk["y_test"] <= 0).mean("test")
    np.testing.assert_allclose(err.values, disk["test_error"].values)
    np.testing.assert_allclose(np.sqrt((disk["f_test"] ** 2).mean("test")).values, disk["f_norm"].values)
    # every run is in the runs folder under its id
    runs = runs_dir_for(tmp_path / "cube.nc")
    assert {p.stem for p in runs.glob("*.nc")} == set(disk["run_id"].values.ravel())
    # a second sweep does nothing and gives the same cube, reading each saved run in full once (to combine it)
    engine = __import__("importlib").import_module("dlphase.sweep")

    reads, real = [], engine.open_cube
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "open_cube", lambda path, only=None: reads.append((path.name, only)) or real(path, only))
        again = dlphase.sweep(spec, tmp_path / "cube.nc", progress=False)
    assert_same_results(cube, again)
    full = sorted(name for name, only in reads if only is None)
    assert full == sorted(f"{i}.nc" for i in disk["run_id"].values.ravel())
    assert all(only == ("status",) for _, only in reads if only is not None)


def test_corrupt_run_files_are_trained_again_with_a_warning(tiny_spec, tmp_path):
    """Run files that are truncated, empty, not netCDF or another run's are moved aside with a one-line warning
    each, trained again, and the cube equals the intact one."""
    out = tmp_path / "cube.nc"
    first = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert first.returncode == 0, first.stderr
    intact = dlphase.open_cube(out)
    files = sorted(runs_dir_for(out).glob("*.nc"))
    assert len(files) == 8
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])          # truncated
    files[1].write_bytes(b"")                              # empty
    files[2].write_text("not a netCDF file\n")             # foreign
    files[3].write_bytes(files[4].read_bytes())            # another run's
    again = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert again.returncode == 0, again.stderr
    warned = [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 4, again.stderr
    for f in files[:4]:
        assert sum(f.name in line for line in warned) == 1
        assert f.with_name(f.name + ".corrupt").exists() and f.exists()
    assert "Traceback" not in again.stderr
    assert_same_results(dlphase.open_cube(out), intact)
    # a third sweep finds every run intact and warns about nothing
    third = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert third.returncode == 0 and "warning" not in third.stderr, third.stderr


def test_a_runs_folder_of_another_spec_is_refused(tiny_spec, tmp_path):
    """A sweep whose runs would differ (here the budget) refuses the folder, naming what differs, with exit 2
    and nothing written; a sweep that changes only the grid goes on in it."""
    out = tmp_path / "cube.nc"
    first = run_cli("sweep", tiny_spec, "-o", out, "-q", "--set", "grid.seed=[0]")
    assert first.returncode == 0, first.stderr
    before = out.read_bytes()
    other = run_cli("sweep", tiny_spec, "-o", out, "-q", "--set", "dynamics.max_steps=300")
    assert other.returncode == 2
    assert "dynamics.max_steps: 400 there, 300 here" in other.stderr and "-o" in other.stderr
    assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before
    assert "max_steps = 400" in (runs_dir_for(out) / "spec.toml").read_text()
    grown = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert grown.returncode == 0, grown.stderr
    assert dlphase.open_cube(out).sizes["seed"] == 2


def test_a_second_sweep_on_the_same_output_is_refused_while_the_first_runs(tiny_spec, tmp_path):
    """Two processes never train into one runs folder: while another process holds its lock, a sweep is refused
    (exit 2, the holder's pid named, nothing written); a holder killed by SIGKILL releases it, and the sweep
    then runs."""
    out = tmp_path / "cube.nc"
    runs = runs_dir_for(out)
    runs.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from dlphase.sweep import RunsLock; lock = RunsLock(Path(sys.argv[1])); print('held', "
                               "flush=True); time.sleep(600)", str(runs)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_cli("sweep", tiny_spec, "-o", out, "-q")
        assert refused.returncode == 2
        assert f"pid {holder.pid}" in refused.stderr and "-o" in refused.stderr
        assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert not out.exists() and not list(runs.glob("*.nc")) and not (runs / "spec.toml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    done = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert done.returncode == 0, done.stderr
    assert dlphase.open_cube(out).sizes["seed"] == 2


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs mounted in tmp_path (root or CAP_SYS_ADMIN needed, as in .ci/run), unmounted afterwards."""
    fs = tmp_path / "fs"
    fs.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {res.stderr.strip()}")
    yield fs
    subprocess.run(["umount", "-l", str(fs)], check=True)


def fill(fs, leave: int):
    """A ballast file that leaves ``leave`` bytes free on ``fs``."""
    ballast = fs / "ballast"
    ballast.unlink(missing_ok=True)
    ballast.write_bytes(b"\0" * (shutil.disk_usage(fs).free - leave))
    return ballast


def test_a_full_disk_stops_the_sweep_cleanly_and_freeing_space_resumes(tiny_spec, small_filesystem, tmp_path):
    """The disk fills after a few run files: one-line error, exit 2, the saved runs intact and no temporary file.
    With room for the runs but not the cube, the cube is the one write that fails. Freeing space resumes, and
    the cube equals an uninterrupted sweep's."""
    intact = run_cli("sweep", tiny_spec, "-o", tmp_path / "intact.nc", "-q")
    assert intact.returncode == 0, intact.stderr
    page = 4096  # tmpfs allocates whole pages
    run_size = max(-(-p.stat().st_size // page) * page for p in runs_dir_for(tmp_path / "intact.nc").glob("*.nc"))
    out = small_filesystem / "cube.nc"
    runs = runs_dir_for(out)

    def no_temporaries():
        return [p.name for p in [*small_filesystem.iterdir(), *runs.iterdir()] if p.name.endswith(".tmp")]

    ballast = fill(small_filesystem, leave=int(5.5 * run_size) + 3 * page)  # the folder, spec.toml, .lock
    full = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert_clean_error(full, "no space left to write", "runs are saved in", "free space and run the same command")
    saved = sorted(runs.glob("*.nc"))
    assert 1 <= len(saved) < 8 and f"{len(saved)} of 8 runs are saved" in full.stderr
    assert not out.exists() and no_temporaries() == []
    for path in saved:  # each saved run is whole and equals the uninterrupted sweep's
        xr.testing.assert_identical(dlphase.open_cube(path).drop_vars("wall_seconds"),
                                    dlphase.open_cube(runs_dir_for(tmp_path / "intact.nc") / path.name)
                                    .drop_vars("wall_seconds"))

    ballast.unlink()
    fill(small_filesystem, leave=(8 - len(saved)) * run_size + page)  # the runs fit, the cube does not
    no_cube = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert_clean_error(no_cube, "no space left to write", str(out), "every run is saved in")
    assert len(list(runs.glob("*.nc"))) == 8 and not out.exists() and no_temporaries() == []
    print(full.stderr, no_cube.stderr, sep="")

    (small_filesystem / "ballast").unlink()
    resumed = run_cli("sweep", tiny_spec, "-o", out, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_results(dlphase.open_cube(out), dlphase.open_cube(tmp_path / "intact.nc"))
    assert no_temporaries() == []


@attrs.frozen(kw_only=True)
class ExplodingFC(dlphase.Architecture):
    """An fc net that raises during training for h = 5."""

    name: ClassVar[str] = "exploding"

    def build(self, h, input_shape, generator):
        from dlphase.plugins.architectures.fc import FC

        net = FC().build(h, input_shape, generator)
        if h == 5:
            def forward(x):
                raise FloatingPointError("exploded on purpose")
            net.forward = forward
        return net


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(manager, tmp_path):
    manager.register(plugin_module("explodingplugin",
                                   register_architectures=lambda register: register(ExplodingFC)))
    spec = build_spec({"dataset": {"name": "blobs"}, "architecture": {"name": "exploding"},
                       "dynamics": {"max_steps": 200},
                       "grid": {"h": [3, 5], "alpha_tilde": [1.0], "P": [30]}}, manager)
    cube = dlphase.sweep(spec, tmp_path / "c.nc", progress=False)
    bad = cube.sel(h=5).isel(alpha_tilde=0, P=0, seed=0)
    good = cube.sel(h=3).isel(alpha_tilde=0, P=0, seed=0)
    assert bad["status"].item() == "failed"
    assert "FloatingPointError: exploded on purpose" in bad["message"].item()
    assert np.isnan(bad["test_error"].item()) and not bad["converged"].item()
    assert good["status"].item() in ("converged", "budget") and np.isfinite(good["test_error"].item())
    # failed runs are kept, and run again only on request
    assert dlphase.sweep(spec, tmp_path / "c.nc", progress=False)["status"].sel(h=5).item() == "failed"


@attrs.frozen(kw_only=True)
class TreacherousLoss(dlphase.Loss):
    """The soft hinge, except on 40 points once a margin passes 0.5 (mid-training): NaN, or an exception."""

    name: ClassVar[str] = "treacherous"
    raises: bool = False

    def __call__(self, margin):
        import torch

        value = torch.nn.functional.softplus(20 * (1 - margin)) / 20
        if margin.shape[-1] == 40 and bool((margin > 0.5).any()):
            if self.raises:
                raise ArithmeticError("gave up on purpose")
            return value * torch.nan
        return value


@pytest.mark.parametrize("raises", [False, True], ids=["nan", "raises"])
def test_a_run_that_diverges_or_raises_mid_training_is_recorded(manager, tmp_path, raises):
    """A third-party loss that turns NaN (diverged) or raises (failed, with its message) mid-training stops only
    its own runs; the others finish and the sweep writes its cube."""
    manager.register(plugin_module("treacherousplugin",
                                   register_losses=lambda register: register(TreacherousLoss)))
    spec = build_spec({"dataset": {"name": "blobs"}, "architecture": {"name": "fc"},
                       "dynamics": {"max_steps": 300, "loss": {"name": "treacherous", "raises": raises}},
                       "grid": {"h": [8], "alpha_tilde": [1.0], "P": [30, 40], "seed": [0, 1]}}, manager)
    # a batch that raises is trained again one run at a time, so that the exception stays with its own runs
    with pytest.warns(UserWarning, match="one by one") if raises else contextlib.nullcontext():
        cube = dlphase.sweep(spec, tmp_path / "c.nc", progress=False)
    bad, good = cube.sel(P=40).isel(h=0, alpha_tilde=0), cube.sel(P=30).isel(h=0, alpha_tilde=0)
    assert list(bad["status"].values) == ["failed" if raises else "diverged"] * 2
    if raises:
        assert all("ArithmeticError: gave up on purpose" in m for m in bad["message"].values)
    else:
        assert (bad["steps"] > 0).all()     # it trained before it diverged
    assert set(good["status"].values) <= {"converged", "budget"} and np.isfinite(good["test_error"]).all()
    assert (tmp_path / "c.nc").exists()


def test_process_workers_give_the_same_cube(tiny_spec, tmp_path):
    spec = load_spec(tiny_spec, ["grid.h=[4]"])
    one = dlphase.sweep(spec, tmp_path / "one.nc", progress=False)
    two = dlphase.sweep(spec, tmp_path / "two.nc", workers=2, progress=False)
    assert_same_results(one, two)


OOM_KILLER = """\"\"\"A plugin whose observable kills its own process, as the kernel's OOM killer does, at one grid
point.\"\"\"

import json
import os
import signal
from typing import ClassVar

import attrs

import dlphase


@attrs.frozen(kw_only=True)
class OOMKiller(dlphase.Observable):
    \"\"\"SIGKILLs its process when measuring the point in DLPHASE_TEST_OOM_AT (JSON); else measures 0.\"\"\"

    name: ClassVar[str] = "oom_killer"
    variables: ClassVar = {"oom_marker": dlphase.Variable(long_name="always 0")}

    def measure(self, run):
        if run.point == json.loads(os.environ.get("DLPHASE_TEST_OOM_AT", "null")):
            os.kill(os.getpid(), signal.SIGKILL)
        return {"oom_marker": 0.0}


@dlphase.hookimpl
def register_observables(register):
    register(OOMKiller)
"""


def test_a_worker_killed_for_memory_is_reported_with_the_runs_saved(tiny_spec, tmp_path, monkeypatch):
    """A pool worker SIGKILLed mid-sweep (what the OOM killer does): one-line error naming how many runs are saved
    and how to resume; the saved runs are whole, and the rerun finishes the cube of an uninterrupted sweep."""
    install_package(tmp_path, monkeypatch, "dlphase_oom", OOM_KILLER)
    args = ["sweep", tiny_spec, "-q", "--set", "run.ensemble=false", "--set", 'observables.names=["errors", '
            '"oom_killer"]']
    intact = run_cli(*args, "-o", tmp_path / "intact.nc")
    assert intact.returncode == 0, intact.stderr
    out = tmp_path / "cube.nc"
    # the last run of the sweep (the narrow nets go last): some runs are saved by then
    monkeypatch.setenv("DLPHASE_TEST_OOM_AT", '{"h": 4, "alpha_tilde": 100.0, "P": 100, "seed": 1}')
    killed = run_cli(*args, "-o", out, "--workers", "2")
    saved = sorted(runs_dir_for(out).glob("*.nc"))
    assert_clean_error(killed, "a worker process died", "perhaps out of memory",
                       f"{len(saved)} of 8 runs are saved in {runs_dir_for(out)}", "rerun to resume")
    assert 1 <= len(saved) < 8 and not out.exists()
    print(killed.stderr)
    for path in saved:
        dlphase.open_cube(path)
    monkeypatch.delenv("DLPHASE_TEST_OOM_AT")
    resumed = run_cli(*args, "-o", out, "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_results(dlphase.open_cube(out), dlphase.open_cube(tmp_path / "intact.nc"))


def test_run_api(tiny_spec):
    spec = load_spec(tiny_spec)
    with pytest.raises(dlphase.SpecError, match="several points"):
        dlphase.Run(spec)
    run = dlphase.Run(spec, h=4, alpha_tilde=100.0, P=100, seed=1)
    assert run.alpha == pytest.approx(50.0)
    assert run.tensors.x_train.shape == (100, 5)
    import torch

    assert torch.equal(run.model(run.tensors.x_test), torch.zeros(200, dtype=torch.float64))
    ds = run.train()
    assert ds["status"].item() in ("converged", "budget") and ds.attrs["run_id"] == spec.run_id(run.point)
    assert float(ds["t"]) > 0


def test_cli_run_one_point(tiny_spec, tmp_path):
    res = run_cli("run", tiny_spec, "-o", tmp_path / "r.nc", "--set", "grid.h=[16]", "--set", "grid.alpha_tilde=100.0",
                  "--set", "grid.seed=0")
    assert res.returncode == 0, res.stderr
    assert "-> " in res.stdout and "test_error=" in res.stdout
    ds = dlphase.open_cube(tmp_path / "r.nc")
    assert dict(ds.sizes)["h"] == 1 and ds["h"].item() == 16


def test_an_executor_failure_is_recorded(tiny_spec, tmp_path):
    """A run the executor itself fails (not the run's code) is recorded as failed; the sweep goes on."""
    import concurrent.futures as cf

    class Flaky(cf.Executor):
        def __init__(self):
            self.calls = 0

        def submit(self, fn, *args, **kwargs):
            self.calls += 1
            future = cf.Future()
            if self.calls == 2:
                future.set_exception(RuntimeError("lost the connection to the worker"))
            else:
                future.set_result(fn(*args, **kwargs))
            return future

    spec = load_spec(tiny_spec, ["grid.h=[4]", "grid.alpha_tilde=[1.0]", "run.ensemble=false"])
    cube = dlphase.sweep(spec, tmp_path / "c.nc", executor=Flaky(), progress=False)
    status = cube["status"].values.ravel().tolist()
    assert status.count("failed") == 1 and len(status) == 2
    failed = cube["message"].where(cube["status"] == "failed", drop=True).values.ravel().tolist()
    assert failed == ["RuntimeError: lost the connection to the worker"]


def test_ensemble_sweep_matches_single_runs(manager, tmp_path):
    """run.ensemble = true (the default) trains the runs sharing h and P together; each member ends where it
    ends alone, as tests/agreement.py allows."""
    raw = {"dataset": {"name": "blobs", "d": 3, "n_test": 30}, "dynamics": {"max_steps": 20000},
           "grid": {"h": [8, 16], "alpha_tilde": [1.0, 10.0], "P": [20], "seed": [0, 1]}}
    single = build_spec({**raw, "run": {"ensemble": False}}, manager)
    alone = dlphase.sweep(single, tmp_path / "alone.nc", progress=False)
    together = dlphase.sweep(build_spec({**raw, "run": {"ensemble": True}}, manager), tmp_path / "ens.nc",
                             progress=False)
    assert (alone["status"] == "converged").all()
    for point in single.grid.points():
        assert_records_agree(together.sel(point), alone.sel(point),
                             lambda point=point: execute(tighter_spec(single), point), what=str(point))
    np.testing.assert_allclose(together["test_error"].values, alone["test_error"].values, atol=0.1)
