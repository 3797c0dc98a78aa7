"""The sweep engine: every grid point as a run, resumable, through a concurrent.futures executor.

Each finished run is written atomically to ``<cube>.runs/<run_id>.nc``; running the same sweep again
skips those, so a kill -9 loses only the runs in flight. At the end the runs are combined into the
cube. Any ``concurrent.futures.Executor`` works (a dask.distributed client's executor, say); by
default the runs execute in this process, or in a process pool with ``workers > 1``.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import attrs
import xarray as xr

from .cube import combine
from .files import atomic_write, check_writable, encode, open_cube, temporaries_of, write_bytes, write_netcdf
from .errors import DiskFullError, DlphaseError
from .grid_point import execute_group, failed_point, groups
from .specs import GRID_DIMS, RUN_SECTIONS, Spec


class InlineExecutor(cf.Executor):
    """Runs each task in this process when it is submitted (the default with one worker)."""

    def submit(self, fn, /, *args, **kwargs):
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            future.set_exception(exc)
        return future


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def process_executor(workers: int) -> cf.Executor:
    """A spawn-based process pool whose workers split the cores between them (torch threads)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(threads,))


def runs_dir_for(out: str | os.PathLike) -> Path:
    """Where a cube's finished runs live: ``CUBE.nc`` -> ``CUBE.runs/``."""
    out = Path(out)
    return out.with_name(out.stem + ".runs")


class RunsLock:
    """An exclusive lock on a runs folder (flock on ``<folder>/.lock``), so that two processes never train into
    one folder; the system releases it when its holder dies, even by SIGKILL."""

    def __init__(self, runs_dir: Path):
        import fcntl

        self.path = runs_dir / ".lock"
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "unknown"
            self.file.close()
            raise DlphaseError(f"another dlphase process (pid {holder}) is training into {str(runs_dir)!r}; wait "
                               f"for it to end, or point -o elsewhere") from None
        try:  # the holder's pid, for the message of whoever waits; nothing depends on it
            self.file.seek(0)
            self.file.truncate()
            self.file.write(str(os.getpid()))
            self.file.flush()
        except OSError:
            pass

    def release(self) -> None:
        self.file.close()


def prepare_runs(spec: Spec, out: str | os.PathLike, workers: int,
                 what: str = "cube") -> tuple[Path, Path, RunsLock]:
    """Check ``workers`` and the output path, create the runs folder beside it, lock it and write the spec there;
    returns (out, runs folder, its lock), the lock for the caller to release when done."""
    if workers < 1:
        raise DlphaseError(f"workers = {workers} must be at least 1")
    out = check_writable(out, what)
    runs_dir = runs_dir_for(out)
    if runs_dir.exists() and not runs_dir.is_dir():
        raise DlphaseError(f"{str(runs_dir)!r} exists and is not a folder; move it away, it is where runs are kept")
    try:
        runs_dir.mkdir(exist_ok=True)
        lock = RunsLock(runs_dir)
    except OSError as exc:
        raise DlphaseError(f"cannot create the runs folder {str(runs_dir)!r}: {exc.strerror}; free space or "
                           f"point -o elsewhere") from None
    try:
        # writes cut short by a kill left these; the lock's holder is their only writer
        for tmp in [*runs_dir.glob(".*.tmp"), *temporaries_of(out)]:
            tmp.unlink(missing_ok=True)
        check_same_runs(spec, runs_dir)
        atomic_write(runs_dir / "spec.toml", lambda tmp: Path(tmp).write_text(spec.to_toml()))
    except BaseException:
        lock.release()
        raise
    return out, runs_dir, lock


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    return {k: v for key, value in d.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}


def check_same_runs(spec: Spec, runs_dir: Path) -> None:
    """Refuse a runs folder left by a spec whose runs differ from ``spec``'s (other dataset, architecture,
    dynamics, observables or dtype: what Spec.run_id hashes besides the grid point), so that two specs' runs
    never share a folder; say what differs. The grid may change between sweeps."""
    import tomllib

    saved = runs_dir / "spec.toml"
    if not saved.exists():
        return
    try:
        old = tomllib.loads(saved.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DlphaseError(f"cannot read {str(saved)!r} ({exc}); move {str(runs_dir)!r} away to start fresh, or "
                           f"point -o elsewhere") from None
    new = tomllib.loads(spec.to_toml())

    def runs_part(d):
        return _flat({**{k: d.get(k) for k in RUN_SECTIONS}, "run.dtype": d.get("run", {}).get("dtype")})

    a, b = runs_part(old), runs_part(new)
    differ = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if differ:
        raise DlphaseError(f"{str(runs_dir)!r} holds the runs of another spec ({'; '.join(differ[:3])}"
                           f"{'; ...' if len(differ) > 3 else ''}); point -o elsewhere, or move that folder away to "
                           f"start fresh")


def run_path(runs_dir: Path, spec: Spec, point: Mapping[str, Any]) -> Path:
    """The file of one finished run: ``<runs folder>/<run_id>.nc``."""
    return runs_dir / f"{spec.run_id(point)}.nc"


def saved_run(runs_dir: Path, spec: Spec, point: Mapping[str, Any],
              only: Sequence[str] | None = None) -> xr.Dataset | None:
    """The saved run of ``point`` (with ``only`` those variables, and its status), or None when there is none. A
    file that is truncated, empty, not netCDF or not this point's run is moved aside to ``<file>.corrupt`` with a
    warning that names it, so that the run is trained again and the file is never combined."""
    path = run_path(runs_dir, spec, point)
    if not path.exists():
        return None
    try:
        ds = open_cube(path, None if only is None else ("status", *only))
        problem = ("it has no status" if "status" not in ds else
                   "it is another run's" if ds.attrs.get("run_id") != spec.run_id(point) else None)
    except DlphaseError:
        problem = "empty, truncated or not netCDF"
    if problem is None:
        return ds
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    warnings.warn(f"{str(path)!r} is not a readable run ({problem}); moved to {aside.name!r}, the run is trained "
                  f"again", RunFileWarning, stacklevel=2)
    return None


class RunFileWarning(UserWarning):
    """A saved run file that could not be used."""


def sweep(spec: Spec, out: str | os.PathLike, *, workers: int = 1, executor: cf.Executor | None = None,
          client=None, retry_failed: bool = False, progress: bool = True, shared_fs: bool | None = None,
          on_run: Callable[[Mapping[str, Any], xr.Dataset], None] | None = None) -> xr.Dataset:
    """Run every point of ``spec.grid`` not already finished, then write and return the cube at ``out``. The
    runs execute in this process, in a pool of ``workers`` processes, on ``executor``, or on the cluster of a
    dask ``client``; every finished run is written here as it arrives, or, with ``shared_fs`` (workers that see
    ``out``'s folder; default: the spec's ``cluster.shared_fs``), by the worker that trained it."""
    executor, shared_fs = placement(spec, executor, client, shared_fs)
    out, runs_dir, lock = prepare_runs(spec, out, workers)
    try:
        return _sweep(spec, out, runs_dir, workers, executor, retry_failed, progress, on_run, shared_fs)
    finally:
        lock.release()


def placement(spec: Spec, executor: cf.Executor | None, client,
              shared_fs: bool | None) -> tuple[cf.Executor | None, bool]:
    """The executor (a dask ``client``'s when one is given) and whether workers write their own runs (``shared_fs``;
    None: the spec's ``cluster.shared_fs``), for :func:`sweep` and the jamming search alike."""
    if shared_fs is None:
        shared_fs = spec.cluster is not None and spec.cluster.shared_fs
    if client is not None:
        from .cluster import ClientExecutor

        executor = ClientExecutor(client)
    return executor, shared_fs


def _sweep(spec, out, runs_dir, workers, executor, retry_failed, progress, on_run, shared_fs) -> xr.Dataset:
    points = spec.grid.points()

    def finished(point) -> bool:
        ds = saved_run(runs_dir, spec, point, only=())  # the status alone: the runs are read once, to combine them
        return ds is not None and not (retry_failed and ds["status"].item() == "failed")

    # Batches are formed from the whole grid, never from what is left, so that a resumed sweep trains
    # exactly the batches an uninterrupted one does (a batch with any unfinished run is trained whole).
    # every saved file checked, so that each unusable one is named
    done = {tuple(p[k] for k in GRID_DIMS) for p in points if finished(p)}
    batches = [b for b in groups(spec, points) if not all(tuple(p[k] for k in GRID_DIMS) in done for p in b)]
    # widest nets first: they cost the most, so the workers finish together rather than on a long tail
    batches.sort(key=lambda b: (-b[0]["h"], -b[0]["P"]))
    n_todo = sum(len(b) for b in batches)

    bar = progress_bar(total=len(points), initial=len(points) - n_todo, enabled=progress)
    try:
        run_batches(spec, batches, runs_dir, workers=workers, executor=executor, bar=bar, on_run=on_run,
                    all_points=points, keep=done, shared_fs=shared_fs, hint_idle=True)
    finally:
        bar.close()

    cube = combine((open_cube(run_path(runs_dir, spec, p)) for p in points), spec)
    write_cube(cube, out, runs_dir)
    return cube


def write_cube(cube: xr.Dataset, out: Path, runs_dir: Path) -> None:
    """Write the combined cube (or line) of the runs saved in ``runs_dir``."""
    try:
        write_netcdf(cube, out)
    except DiskFullError as exc:
        raise DiskFullError(f"{exc}; every run is saved in {runs_dir}; free space and run the same command again "
                            f"to write it") from None


def run_batches(spec: Spec, batches: list[list[Mapping[str, Any]]], runs_dir: Path, *, workers: int = 1,
                executor: cf.Executor | None = None, bar=None,
                on_run: Callable[[Mapping[str, Any], xr.Dataset], None] | None = None,
                all_points: list[Mapping[str, Any]] | None = None, keep: Collection[tuple] = (),
                shared_fs: bool = False, hint_idle: bool = False) -> None:
    """Train ``batches`` (lists of points that share h and P) on ``executor`` and write each finished run to
    ``runs_dir/<run_id>.nc`` as soon as its batch ends, except the points in ``keep`` (grid tuples), whose files
    are kept as they are. Workers in other processes send each run back as the bytes of its file, which this
    process writes; with ``shared_fs`` the workers, which see ``runs_dir``, write the runs themselves and send
    back their status alone. A worker that dies, or Ctrl-C, leaves every finished run saved and says how
    many of ``all_points`` (default: the batches' points) are saved and how to resume. With ``hint_idle``, a
    cluster with more worker threads than there are batches gets a warning that suggests a smaller batch size."""
    all_points = all_points or [p for b in batches for p in b]
    keep = set(keep)

    def saved() -> str:
        return f"{sum(run_path(runs_dir, spec, p).exists() for p in all_points)} of {len(all_points)}"

    own_executor = executor is None
    if own_executor:
        executor = InlineExecutor() if workers == 1 else process_executor(workers)
    inline = isinstance(executor, InlineExecutor)
    task = (functools.partial(execute_and_save, runs_dir=runs_dir, keep=keep) if shared_fs else
            execute_group if inline else execute_and_encode)
    broken = False
    try:
        pending: dict[cf.Future, list] = {}
        queue = list(batches)
        while queue or pending:
            threads = getattr(executor, "worker_threads", None)  # a dask cluster's, counted again every round
            limit = _in_flight(executor, workers, threads)
            if hint_idle and threads and threads > len(batches):
                hint_idle = False
                size = max(map(len, batches))
                warnings.warn(f"{len(batches)} batches for {threads} worker threads: {threads - len(batches)} stay "
                              f"idle; a run.batch_size of about {max(1, size * len(batches) // threads)} (batches hold "
                              f"up to {size} runs) forms one batch per thread")
            while queue and len(pending) < limit:
                batch = queue.pop(0)
                pending[executor.submit(task, spec, batch)] = batch
            done, _ = cf.wait(pending, timeout=None if threads is None else 2.0, return_when=cf.FIRST_COMPLETED)
            for future in done:
                batch = pending.pop(future)
                try:
                    records = future.result()
                except cf.BrokenExecutor as exc:
                    broken = True
                    raise DlphaseError(f"a worker process died ({exc}), perhaps out of memory; {saved()} runs "
                                       f"are saved in {runs_dir}; rerun to resume, with fewer --workers") from None
                except cf.CancelledError:
                    raise DlphaseError(f"the runs in flight were cancelled (the dask scheduler is gone?); {saved()} "
                                       f"runs are saved in {runs_dir}; run the same command again to resume") from None
                except Exception as exc:  # the executor itself failed these runs (e.g. pickling): record it
                    records = [failed_point(spec, p, f"{type(exc).__name__}: {exc}") for p in batch]
                for point, record in zip(batch, records):
                    path = run_path(runs_dir, spec, point)
                    # a saved run trained again as a member of its batch keeps its file
                    if tuple(point[k] for k in GRID_DIMS) not in keep:
                        try:
                            if isinstance(record, xr.Dataset):
                                write_netcdf(record, path)
                            elif record.data is not None:
                                write_bytes(record.data, path)
                        except DiskFullError as exc:
                            raise DiskFullError(f"{exc}; {saved()} runs are saved in {runs_dir}, intact; free space "
                                                f"and run the same command again to resume") from None
                    status = record["status"].item() if isinstance(record, xr.Dataset) else record.status
                    if bar is not None:
                        bar.set_postfix_str(f"last: h={point['h']} at={point['alpha_tilde']:g} {status}")
                        bar.update(1)
                    if on_run is not None:
                        on_run(point, record if isinstance(record, xr.Dataset) else open_cube(path))
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(f"interrupted: {saved()} runs are saved in {runs_dir}; run the same command again to resume",
              file=sys.stderr)
        raise
    finally:
        if own_executor:
            # a broken pool's manager thread closes its wake-up pipe as it ends; joining it here keeps that close
            # from racing the interpreter's exit handler, which writes to the same pipe (and then prints a
            # traceback from threading._shutdown after the one-line error)
            executor.shutdown(wait=broken, cancel_futures=True)


def _in_flight(executor: cf.Executor, workers: int, threads: int | None) -> int:
    """How many batches to keep submitted: one in this process, so that each batch is saved before the next one
    trains; one per worker thread on a dask cluster, so that no batch waits behind another on a busy worker
    while one is idle; twice the workers in a pool, whose idle workers take them in order."""
    if isinstance(executor, InlineExecutor):
        return 1
    if threads is not None:
        return max(1, threads)
    return 2 * max(workers, getattr(executor, "_max_workers", 1) or 1)


@attrs.frozen
class EncodedRun:
    """A run trained in a worker process: its status, and the bytes of its netCDF file (None when the worker
    wrote the file itself)."""

    status: str
    data: bytes | None


def execute_and_encode(spec: Spec, batch: list[Mapping[str, Any]]) -> list[EncodedRun]:
    """Train a batch in a worker and return each run as the bytes of its file: encoding is most of a run's
    writing cost, and done here it spreads over the workers instead of piling up in the process that saves."""
    return [EncodedRun(ds["status"].item(), encode(ds)) for ds in execute_group(spec, batch)]


def execute_and_save(spec: Spec, batch: list[Mapping[str, Any]], runs_dir: Path, keep: set[tuple]) -> list[EncodedRun]:
    """Train a batch on a worker that sees the runs folder, write its runs there (but those in ``keep``), and
    return their status alone, so that the runs' arrays never travel back."""
    records = execute_group(spec, batch)
    for point, ds in zip(batch, records):
        if tuple(point[k] for k in GRID_DIMS) not in keep:
            write_netcdf(ds, run_path(runs_dir, spec, point))
    return [EncodedRun(ds["status"].item(), None) for ds in records]


def progress_bar(total: int | None, initial: int, enabled: bool, desc: str = "sweep"):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="run", desc=desc, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr)
