"""Sweeps on a real dask.distributed cluster started by the fixture: a `dask scheduler` and two `dask worker`
processes on 127.0.0.1. The cube equals the in-process sweep's bit for bit, also when a worker or the client is
SIGKILLed mid-sweep; an unreachable scheduler is one line of error."""

import concurrent.futures as cf
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import xarray as xr

import dlphase
from dlphase.cluster import worker_environment
from dlphase.specs import load_spec
from dlphase.sweep import runs_dir_for
from tests.conftest import THREADS, run_cli, run_cli_here, write
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
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), **worker_environment()}
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


_REFERENCE = {}


def reference(tiny_spec, tmp_path):
    """The in-process sweep of the same spec (computed once per session: every test here compares with it)."""
    key = tiny_spec.read_text()
    if key not in _REFERENCE:
        spec = load_spec(tiny_spec, [a for a in GRID if a != "--set"])
        _REFERENCE[key] = dlphase.sweep(spec, tmp_path / "here.nc", progress=False)
    return _REFERENCE[key]


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


def test_jamming_on_a_local_cluster_finds_the_in_process_line(tmp_path, dask_cluster, writes_here):
    """`--cluster local --workers 2` starts a LocalCluster; the search and its line are the in-process ones. So
    are they through the Python API with a client whose workers write the runs themselves (shared_fs)."""
    spec = write(tmp_path / "jam.toml", JAM_SPEC)
    here = run_cli("jamming", spec, "-o", tmp_path / "here.nc", "-q", "--no-spectrum")
    assert here.returncode == 0, here.stderr
    there = run_cli("jamming", spec, "-o", tmp_path / "there.nc", "-q", "--no-spectrum", "--cluster", "local",
                    "--workers", "2")
    assert there.returncode == 0, there.stderr
    assert there.stdout == here.stdout.replace("here.nc", "there.nc")
    line = xr.open_dataset(tmp_path / "here.nc").load()
    assert_bit_identical(xr.open_dataset(tmp_path / "there.nc").load(), line)

    from distributed import Client

    from dlphase.plugins.workflows.jamming import find_jamming_line

    shared = write(tmp_path / "shared.toml", JAM_SPEC + "\n[cluster]\nshared_fs = true\n")
    with Client(dask_cluster.address, set_as_default=False) as client:
        find_jamming_line(load_spec(shared), tmp_path / "shared.nc", spectrum=False, client=client, progress=False)
    assert writes_here == [("dataset", "shared.nc")]  # the line alone: every run file came from a worker
    assert_bit_identical(xr.open_dataset(tmp_path / "shared.nc").load(), line)


SLURM_CONF = """ClusterName=dlphase-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/jobs.txt
MpiDefault=none
NodeName={host} CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A single-node SLURM cluster (Debian's slurm-wlm and munge, as root: .ci/run installs them)."""
    import shutil
    import socket

    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")) or os.geteuid() != 0:
        pytest.skip("needs Debian's slurm-wlm and munge, and root (.ci/run installs them)")
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    folder = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), ctld_port=free_port(), d_port=free_port(),
                                      dir=folder, cpus=os.cpu_count()))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    subprocess.run(["slurmctld", "-c", "-i"], check=True)
    subprocess.run(["slurmd"], check=True)
    try:
        wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True,
                                                   text=True).stdout, what="an idle SLURM node")
        yield folder
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        for daemon in ("slurmd", "slurmctld"):
            pid = folder / f"{daemon}.pid"
            if pid.exists():
                with_pid(int(pid.read_text()), signal.SIGTERM)


def with_pid(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what=f"pid {pid} to end")
    except ProcessLookupError:
        pass


def test_a_sweep_through_slurm_equals_the_in_process_one(tiny_spec, tmp_path, slurm):
    """`--cluster slurm` with the spec's [cluster]: the workers run as SLURM jobs (in the job log), the runs come
    back, and the cube is the in-process one."""
    spec = write(tmp_path / "slurm.toml", tiny_spec.read_text() + '\n[cluster]\ncores = 1\nmemory = "1GB"\n'
                 'walltime = "00:10:00"\njobs = 2\n')
    # from tmp_path: SLURM writes each job's slurm-JOBID.out in the folder it was submitted from
    res = run_cli("sweep", spec, "-o", tmp_path / "cube.nc", "-q", "--cluster", "slurm", *GRID, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    jobs = [line for line in (slurm / "jobs.txt").read_text().splitlines() if "Name=dask-worker" in line]
    assert len(jobs) == 2 and all("NodeList=" + __import__("socket").gethostname() in j for j in jobs), jobs
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""  # jobs ended
    assert_same_results(dlphase.open_cube(tmp_path / "cube.nc"), reference(tiny_spec, tmp_path))


@pytest.mark.parametrize("setting, message", [
    ("cores = -1", "cluster.cores must be > 0"),
    ('walltime = "2 hours"', "cluster.walltime = '2 hours' is not like '04:00:00'"),
    ('memory = "lots"', "cluster.memory = 'lots' is not like '16GB'"),
    ("nodes = 3", "unknown key cluster.nodes for [cluster]"),
    ("cores = 2\nprocesses = 4", "processes = 4 exceeds cores = 2"),
])
def test_bad_cluster_settings_are_one_line(tiny_spec, tmp_path, setting, message):
    spec = write(tmp_path / "bad.toml", tiny_spec.read_text() + f"\n[cluster]\n{setting}\n")
    res = run_cli_here("sweep", spec, "-o", tmp_path / "cube.nc", "--cluster", "slurm")
    assert_clean_error(res, message)
    assert not (tmp_path / "cube.nc").exists()


@pytest.fixture
def writes_here(monkeypatch):
    """What the sweep's own process writes: (how, file name) for each file, datasets and bytes alike."""
    engine = importlib.import_module("dlphase.sweep")
    written = []
    for name, how in (("write_netcdf", "dataset"), ("write_bytes", "bytes")):
        def record(data, path, how=how, original=getattr(engine, name)):
            written.append((how, Path(path).name))
            original(data, path)
        monkeypatch.setattr(engine, name, record)
    return written


def test_workers_send_each_run_as_the_bytes_of_its_file(tiny_spec, tmp_path, dask_cluster, writes_here):
    """The workers encode the runs they train; the sweep's process writes their bytes (and the cube), so that
    its share of the work stays small however many workers send runs."""
    from distributed import Client

    with Client(dask_cluster.address, set_as_default=False) as client:
        cube = dlphase.sweep(load_spec(tiny_spec, [a for a in GRID if a != "--set"]), tmp_path / "cube.nc",
                             client=client, progress=False)
    assert sorted(how for how, name in writes_here) == ["bytes"] * 12 + ["dataset"]
    assert ("dataset", "cube.nc") in writes_here
    assert_same_results(cube, reference(tiny_spec, tmp_path))


def test_workers_on_a_shared_filesystem_write_the_runs_themselves(tiny_spec, tmp_path, dask_cluster, writes_here):
    """[cluster] shared_fs = true: each worker writes its runs (the records that come back hold the status
    alone), and the cube is the in-process one."""
    spec = write(tmp_path / "shared.toml", tiny_spec.read_text() + "\n[cluster]\nshared_fs = true\n")
    here = reference(tiny_spec, tmp_path)
    from distributed import Client

    with Client(dask_cluster.address, set_as_default=False) as client:
        cube = dlphase.sweep(load_spec(spec, [a for a in GRID if a != "--set"]), tmp_path / "cube.nc", client=client,
                             progress=False)
    assert writes_here == [("dataset", "cube.nc")]  # the cube alone: every run file came from a worker
    assert len(list(runs_dir_for(tmp_path / "cube.nc").glob("*.nc"))) == 12
    assert_same_results(cube, here)


class GrowingCluster(cf.ThreadPoolExecutor):
    """A stand-in for a dask client's executor whose worker threads arrive as batches finish (jobs leaving a
    batch scheduler's queue): ``threads[k]`` threads once k batches have finished. It notes how many batches
    are in flight at each submission."""

    def __init__(self, threads):
        super().__init__(max_workers=8)
        self.threads, self.finished, self.in_flight = threads, 0, []
        self.lock = threading.Lock()
        self.running = 0

    @property
    def worker_threads(self):
        return self.threads[min(self.finished, len(self.threads) - 1)]

    def submit(self, fn, /, *args, **kwargs):
        def slow():
            time.sleep(0.3)  # each batch outlasts the sweep's loop, so that the batches in flight overlap
            return fn(*args, **kwargs)

        def done(_):
            with self.lock:
                self.finished += 1
                self.running -= 1

        with self.lock:
            self.running += 1
            self.in_flight.append(self.running)
        future = super().submit(slow)
        future.add_done_callback(done)
        return future


def test_the_batches_in_flight_follow_the_worker_threads(tiny_spec, tmp_path):
    """No worker yet: one batch waits at the scheduler; as threads arrive, one batch per thread, never more
    (a batch queued behind another on a busy worker would wait while a new worker idles)."""
    spec = load_spec(tiny_spec, ["run.ensemble=false", "dynamics.max_steps=5"])
    executor = GrowingCluster(threads=[0, 0, 3])
    try:
        cube = dlphase.sweep(spec, tmp_path / "cube.nc", executor=executor, progress=False)
    finally:
        executor.shutdown()
    assert executor.in_flight[:2] == [1, 1]
    assert max(executor.in_flight) == 3 and len(executor.in_flight) == 8
    assert_same_results(cube, dlphase.sweep(spec, tmp_path / "here.nc", progress=False))


def test_fewer_batches_than_worker_threads_are_named_with_a_batch_size(tiny_spec, tmp_path, recwarn):
    """Two batches of four runs for eight threads: a warning suggests run.batch_size = 1, which makes eight."""
    spec = load_spec(tiny_spec, ["dynamics.max_steps=5"])
    with pytest.warns(UserWarning, match=r"2 batches for 8 worker threads: 6 stay idle; a run.batch_size of about "
                                         r"1 \(batches hold up to 4 runs\)"):
        dlphase.sweep(spec, tmp_path / "cube.nc", executor=GrowingCluster(threads=[8]), progress=False)
    recwarn.clear()
    smaller = load_spec(tiny_spec, ["dynamics.max_steps=5", "run.batch_size=1"])
    executor = GrowingCluster(threads=[8])
    dlphase.sweep(smaller, tmp_path / "small.nc", executor=executor, progress=False)
    assert len(executor.in_flight) == 8 and not [w for w in recwarn if "worker threads" in str(w.message)]


@pytest.mark.parametrize("size, batches", [(None, [4, 4]), (3, [3, 1, 3, 1]), (1, [1] * 8)])
def test_batch_size_caps_the_batches(tiny_spec, size, batches):
    from dlphase.grid_point import groups

    spec = load_spec(tiny_spec, [] if size is None else [f"run.batch_size={size}"])
    assert [len(b) for b in groups(spec, spec.grid.points())] == batches


def test_a_batch_size_below_one_is_one_line(tiny_spec, tmp_path):
    res = run_cli_here("sweep", tiny_spec, "-o", tmp_path / "cube.nc", "--set", "run.batch_size=0")
    assert_clean_error(res, "batch_size must be > 0")
    assert not (tmp_path / "cube.nc").exists()


def test_cluster_settings_from_a_file_of_their_own(tiny_spec, tmp_path):
    """--cluster-config: the [cluster] keys in a file of their own, checked as strictly."""
    config = write(tmp_path / "cluster.toml", "cores = 4\nprocesses = 8\n")
    res = run_cli_here("sweep", tiny_spec, "-o", tmp_path / "cube.nc", "--cluster", "slurm", "--cluster-config", config)
    assert_clean_error(res, "processes = 8 exceeds cores = 4")
    res = run_cli_here("sweep", tiny_spec, "-o", tmp_path / "cube.nc", "--cluster", "slurm", "--cluster-config",
                       tmp_path / "none.toml")
    assert_clean_error(res, "cluster config", "does not exist")
    from dlphase.specs import load_cluster_settings

    write(config, '[cluster]\nqueue = "short"\ncores = 8\nprocesses = 2\nadapt_maximum = 20\n')
    settings = load_cluster_settings(config)
    assert (settings.queue, settings.cores, settings.processes, settings.adapt_maximum) == ("short", 8, 2, 20)


STRESS = """
import threading, numpy as np, xarray as xr
from dlphase.files import encode, open_cube, write_bytes, write_netcdf
ds = xr.Dataset({"a": (("x", "y"), np.random.default_rng(0).random((50, 40))), "status": ((), "converged")})
def work(k):
    for i in range(40):
        write_bytes(encode(ds), f"{k}-{i}.nc")
        assert open_cube(f"{k}-{i}.nc").identical(ds)
        write_netcdf(ds, f"w{k}-{i}.nc")
threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"""


def test_netcdf_reads_and_writes_from_many_threads_at_once(tmp_path):
    """A dask worker with several threads encodes runs while others are read: HDF5 is not thread-safe, and
    without dlphase's lock this crashes the process (a segmentation fault within a few hundred files)."""
    res = subprocess.run([sys.executable, "-c", STRESS], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list(tmp_path.glob("*.nc"))) == 640
