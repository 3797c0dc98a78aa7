"""Sweeps on a real dask.distributed cluster started by the fixture: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1. The cube equals the in-process sweep's bit for bit, also when a worker or the client is
SIGKILLed mid-sweep; an unreachable scheduler is one line of error."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import xarray as xr

import dlphase
from dlphase.specs import load_spec
from dlphase.sweep import runs_dir_for
from tests.conftest import THREADS, run_cli, write
from tests.test_cli_errors import assert_clean_error
from tests.test_jamming import JAM_SPEC
from tests.test_kills import assert_bit_identical
from tests.test_sweep import assert_same_results

DASK = Path(sys.executable).with_name("dask")
#: twelve runs one at a time, so that a kill lands while some are saved and others are in flight
GRID = ["--set", "run.ensemble=false", "--set", "grid.alpha_tilde=[1.0,10.0,100.0]"]


def wait_for(condition, timeout=60.0, what="the condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise TimeoutError(f"waited {timeout} s for {what}")


@pytest.fixture
def dask_cluster(tmp_path):
    """A scheduler and two single-threaded workers (no nanny: a killed worker stays dead)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    file = tmp_path / "scheduler.json"
    logs = tmp_path / "dask-logs"
    logs.mkdir()

    def start(name, *args):
        return subprocess.Popen([str(DASK), *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(logs / f"{name}.log", "w"), start_new_session=True)

    scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                      "--scheduler-file", str(file))
    procs = [scheduler]
    try:
        address = wait_for(lambda: file.exists() and json.loads(file.read_text() or "{}").get("address"),
                           what="the scheduler")
        workers = [start(f"worker{i}", "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                         "--no-dashboard", "--name", f"w{i}") for i in range(2)]
        procs += workers
        from distributed import Client

        with Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield types.SimpleNamespace(address=address, scheduler=scheduler, workers=workers)
    finally:
        for proc in procs:
            with_signal(proc, signal.SIGKILL)


def with_signal(proc, sig):
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


def reference(tiny_spec, tmp_path):
    """The in-process sweep of the same spec."""
    spec = load_spec(tiny_spec, [a for a in GRID if a != "--set"])
    return dlphase.sweep(spec, tmp_path / "here.nc", progress=False)


def sweep_process(tiny_spec, out, address):
    exe = Path(sys.executable).with_name("dlphase")
    return subprocess.Popen([str(exe), "sweep", str(tiny_spec), "-o", str(out), "-q", "--scheduler", address, *GRID],
                            env={**os.environ, "OMP_NUM_THREADS": str(THREADS)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_sweep_through_the_scheduler_equals_the_in_process_one(tiny_spec, tmp_path, dask_cluster):
    res = run_cli("sweep", tiny_spec, "-o", tmp_path / "cube.nc", "-q", "--scheduler", dask_cluster.address, *GRID)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("dask dashboard: http://") == 1, res.stderr
    assert_same_results(dlphase.open_cube(tmp_path / "cube.nc"), reference(tiny_spec, tmp_path))


def test_the_python_api_takes_a_client(tiny_spec, tmp_path, dask_cluster):
    from distributed import Client

    spec = load_spec(tiny_spec, [a for a in GRID if a != "--set"])
    with Client(dask_cluster.address, set_as_default=False) as client:
        cube = dlphase.sweep(spec, tmp_path / "cube.nc", client=client, progress=False)
    assert_same_results(cube, reference(tiny_spec, tmp_path))


def test_a_worker_killed_mid_sweep_costs_nothing(tiny_spec, tmp_path, dask_cluster):
    """The batch on the killed worker runs again on the other one; the cube is the same."""
    out = tmp_path / "cube.nc"
    proc = sweep_process(tiny_spec, out, dask_cluster.address)
    wait_for(lambda: list(runs_dir_for(out).glob("*.nc")), what="a saved run")
    with_signal(dask_cluster.workers[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert_same_results(dlphase.open_cube(out), reference(tiny_spec, tmp_path))


def test_a_killed_client_resumes(tiny_spec, tmp_path, dask_cluster):
    """kill -9 of the sweep itself: every run received is saved, and the same command finishes the cube."""
    out = tmp_path / "cube.nc"
    proc = sweep_process(tiny_spec, out, dask_cluster.address)
    wait_for(lambda: len(list(runs_dir_for(out).glob("*.nc"))) >= 3, what="three saved runs")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    saved = list(runs_dir_for(out).glob("*.nc"))
    assert 3 <= len(saved) < 12 and not out.exists()
    for path in saved:
        dlphase.open_cube(path)
    res = run_cli("sweep", tiny_spec, "-o", out, "-q", "--scheduler", dask_cluster.address, *GRID)
    assert res.returncode == 0, res.stderr
    assert_same_results(dlphase.open_cube(out), reference(tiny_spec, tmp_path))


def test_an_unreachable_scheduler_is_one_line(tiny_spec, tmp_path):
    res = run_cli("sweep", tiny_spec, "-o", tmp_path / "cube.nc", "--scheduler", "tcp://127.0.0.1:9")
    assert_clean_error(res, "cannot reach the dask scheduler at 'tcp://127.0.0.1:9'", "dask scheduler")
    assert not (tmp_path / "cube.nc").exists()


def test_the_scheduler_gone_mid_sweep_is_one_line_and_keeps_the_saved_runs(tiny_spec, tmp_path, dask_cluster):
    """kill -9 of the scheduler: the sweep ends with one line that says how many runs are saved."""
    out = tmp_path / "cube.nc"
    proc = sweep_process(tiny_spec, out, dask_cluster.address)
    wait_for(lambda: list(runs_dir_for(out).glob("*.nc")), what="a saved run")
    with_signal(dask_cluster.scheduler, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert stderr.startswith("dask dashboard: ")
    assert_clean_error(types.SimpleNamespace(returncode=proc.returncode, stdout=stdout, stderr=stderr.split(
        "\n", 1)[1]), "runs are saved in", "run the same command again to resume")
    saved = list(runs_dir_for(out).glob("*.nc"))
    assert 1 <= len(saved) < 12 and not out.exists()
    for path in saved:
        dlphase.open_cube(path)


def test_jamming_on_a_local_cluster_finds_the_in_process_line(tmp_path):
    """`--cluster local --workers 2` starts a LocalCluster; the search and its line are the in-process ones."""
    spec = write(tmp_path / "jam.toml", JAM_SPEC)
    here = run_cli("jamming", spec, "-o", tmp_path / "here.nc", "-q", "--no-spectrum")
    assert here.returncode == 0, here.stderr
    there = run_cli("jamming", spec, "-o", tmp_path / "there.nc", "-q", "--no-spectrum", "--cluster", "local",
                    "--workers", "2")
    assert there.returncode == 0, there.stderr
    assert there.stdout == here.stdout.replace("here.nc", "there.nc")
    assert_bit_identical(xr.open_dataset(tmp_path / "there.nc").load(), xr.open_dataset(tmp_path / "here.nc").load())
