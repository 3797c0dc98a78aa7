"""What running a sweep through dask.distributed costs, against the process pool, and what it projects.

On examples/quick.toml's own batches (the spec, and the records of its widest batch trained with a short
budget, which have the shapes of the real ones) it measures:
  - the pickled size and the time to pickle and unpickle a task (spec and batch) and its records;
  - the round trip of a batch that returns those records, through a LocalCluster of --workers workers and
    through the process pool, per batch (median of --repeats, the same tasks for both);
  - a worker's encoding of each run's file, and the command's atomic, fsynced write of its bytes, per run.
With --full it also sweeps examples/quick.toml to the end through the process pool and through the
LocalCluster (one sweep each: on 2 cores the wall times move by about 20% from run to run).
It prints the overhead per batch against the sweep's wall time (--sweep-seconds, or the --full sweep's),
and projects the paper's Fig. 4 grid (15 widths x 20 alpha_tilde x 15 seeds, P = 1000) on 100 workers:
its batches, and the number of workers at which the command's share (receiving and writing runs) would
take as long as the workers' training.
Usage: python benchmarks/scale.py [--workers 2] [--repeats 30] [--full] [--sweep-seconds 176]
"""

import argparse
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

import dlphase
from dlphase.grid_point import _members_per_batch, execute_group, groups
from dlphase.files import encode, write_bytes
from dlphase.sweep import EncodedRun, process_executor, run_path, write_netcdf

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "examples" / "quick.toml"


def replay(spec, batch, path):
    """A task that returns the records stored at ``path``: a batch whose training costs nothing."""
    with open(path, "rb") as fh:
        return pickle.load(fh)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def round_trips(executor, spec, batch, path, repeats, workers):
    """Median seconds per batch of ``repeats`` rounds of ``workers`` replayed batches in flight at once."""
    def one_round():
        futures = [executor.submit(replay, spec, batch, path) for _ in range(workers)]
        for f in futures:
            f.result()
    one_round()  # start-up and imports
    return timed(one_round, repeats) / workers


def full_sweep(args, folder):
    exe = Path(sys.executable).with_name("dlphase")
    walls = {}
    for name, extra in (("process pool", []), ("LocalCluster", ["--cluster", "local"])):
        start = time.perf_counter()
        subprocess.run([str(exe), "sweep", str(QUICK), "-o", str(folder / f"{name[0]}.nc"), "-q",
                        "--workers", str(args.workers), *extra], check=True, capture_output=True)
        walls[name] = time.perf_counter() - start
        print(f"quick.toml through the {name}: {walls[name]:.1f} s")
    print(f"LocalCluster / process pool: {walls['LocalCluster'] / walls['process pool']:.3f}")
    return walls["LocalCluster"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--sweep-seconds", type=float, default=None)
    args = parser.parse_args()

    spec = dlphase.load_spec(QUICK)
    batches = groups(spec, spec.grid.points())
    widest = max(batches, key=lambda b: b[0]["h"])
    folder = Path(tempfile.mkdtemp(prefix="dlphase-scale-"))
    try:
        short = attrs.evolve(spec, dynamics=attrs.evolve(spec.dynamics, max_steps=20))
        datasets = execute_group(short, widest)
        encode_per_run = timed(lambda: [encode(ds) for ds in datasets], 5) / len(widest)
        records = [EncodedRun(ds["status"].item(), encode(ds)) for ds in datasets]
        path = folder / "records.pkl"
        path.write_bytes(pickle.dumps(records))
        task = pickle.dumps((spec, widest))
        print(f"quick.toml: {len(spec.grid.points())} runs in {len(batches)} batches; the widest (h = "
              f"{widest[0]['h']}) has {len(widest)} runs")
        print(f"task (spec + batch): {len(task) / 1e3:.1f} kB, pickle + unpickle "
              f"{timed(lambda: pickle.loads(pickle.dumps((spec, widest))), 50) * 1e3:.2f} ms")
        print(f"a worker encodes a run's file in {encode_per_run * 1e3:.2f} ms")
        unpickle = timed(lambda: pickle.loads(pickle.dumps(records)), 20) / len(widest)
        print(f"the batch's encoded runs: {path.stat().st_size / 1e3:.1f} kB, pickle + unpickle "
              f"{unpickle * len(widest) * 1e3:.2f} ms")
        runs = folder / "runs"
        runs.mkdir()
        whole = timed(lambda: [write_netcdf(ds, run_path(runs, spec, p)) for p, ds in zip(widest, datasets)], 5)
        write = timed(lambda: [write_bytes(r.data, run_path(runs, spec, p)) for p, r in zip(widest, records)], 5)
        per_run_write = write / len(widest)
        print(f"the command's atomic write of a run: {per_run_write * 1e3:.2f} ms from its bytes "
              f"({whole / len(widest) * 1e3:.2f} ms to encode and write it here)")

        pool = process_executor(args.workers)
        try:
            pool_trip = round_trips(pool, spec, widest, path, args.repeats, args.workers)
        finally:
            pool.shutdown()
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            from dlphase.cluster import ClientExecutor

            dask_trip = round_trips(ClientExecutor(client), spec, widest, path, args.repeats, args.workers)
        print(f"round trip of a batch: process pool {pool_trip * 1e3:.1f} ms, dask {dask_trip * 1e3:.1f} ms "
              f"(dask - pool: {(dask_trip - pool_trip) * 1e3:.1f} ms per batch)")

        seconds = full_sweep(args, folder) if args.full else args.sweep_seconds
        if seconds:
            extra = max(dask_trip - pool_trip, 0.0) * len(batches) / args.workers
            print(f"dask's extra cost on quick.toml: {extra:.2f} s of {seconds:.1f} s, "
                  f"{100 * extra / seconds:.2f}% (goal: under 2%)")
            batch_seconds = seconds * args.workers / len(batches)
        else:
            batch_seconds = None

        # the paper's Fig. 4 grid
        widths, alphas, seeds, P, workers = 15, 20, 15, 1000, 100
        per_batch = _members_per_batch(100, P)
        n_batches = widths * -(-(alphas * seeds) // per_batch)
        size = (alphas * seeds) // -(-workers // widths)
        n_small = widths * -(-(alphas * seeds) // size)
        client_per_run = per_run_write + unpickle
        print(f"Fig. 4 grid: {widths * alphas * seeds} runs in {n_batches} batches of up to {per_batch} (h = 100, "
              f"P = {P}): on {workers} workers {min(n_batches, workers)} are busy; with run.batch_size = {size}, "
              f"{n_small} batches keep all {workers} busy")
        print(f"the command spends {client_per_run * 1e3:.2f} ms per run it receives and writes; dask's extra "
              f"{max(dask_trip - pool_trip, 0) * 1e3:.1f} ms per batch is on the scheduler and the network")
        status_only = [EncodedRun(r.status, None) for r in records]
        shared_per_run = timed(lambda: pickle.loads(pickle.dumps(status_only)), 50) / len(widest)
        print(f"with shared_fs (the workers write their runs) the command spends {shared_per_run * 1e3:.3f} ms per run")
        if batch_seconds:
            per_run_worker = batch_seconds / len(widest)
            print(f"a quick.toml batch trains a run in {per_run_worker:.2f} s of a worker's time: the command "
                  f"keeps up with {per_run_worker / client_per_run:.0f} workers sending runs, "
                  f"{per_run_worker / shared_per_run:.0f} with shared_fs; runs of the paper's sizes take longer, "
                  f"and the counts grow with them")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
