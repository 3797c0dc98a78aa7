"""Sweeps on a dask.distributed cluster: an existing scheduler, a LocalCluster started here, or (through
dask-jobqueue) a batch scheduler's jobs.

The sweep's unit of work stays a batch of runs (one ensemble). Its futures come from the client's
``concurrent.futures`` executor, so the sweep engine treats a cluster like its process pool: each finished
run comes back to this process as the bytes of its file, which it writes atomically to ``CUBE.runs/``. dask
reruns a batch whose worker dies; a batch that raises is recorded as failed; losing the scheduler ends the
sweep with every received run saved.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import sys
from typing import Iterator

from .errors import DlphaseError
from .specs import ClusterSettings

#: seconds to wait for a scheduler before giving up on its address
CONNECT_TIMEOUT = 10


def torch_threads_plugin(threads: int):
    """A dask worker plugin that sets each worker's torch threads (cores / workers on a LocalCluster), so that
    workers sharing a machine do not oversubscribe its cores."""
    from distributed import WorkerPlugin

    class TorchThreads(WorkerPlugin):
        name = "dlphase-torch-threads"

        def setup(self, worker) -> None:
            import torch

            torch.set_num_threads(threads)

    return TorchThreads()


def connect(scheduler: str):
    """A client of the scheduler at ``scheduler`` (``tcp://HOST:PORT``), or a one-line error."""
    from distributed import Client

    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise DlphaseError(f"cannot reach the dask scheduler at {scheduler!r} ({' '.join(str(exc).split())[:200]}); "
                           f"check the address, or start one with `dask scheduler`") from None


#: dask settings for the workers dlphase starts. A worker's profiler, GIL monitor and fast ticks take the GIL
#: every few milliseconds from the thread that trains, whose Python step loop then waits: with them a batch
#: trained 20-50% slower than in a process pool, without them within a few per cent (benchmarks/scale.py).
QUIET_WORKERS = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.gil.enabled": False,
                 "distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "5s",
                 "distributed.worker.memory.monitor-interval": "5s"}


def worker_environment() -> dict[str, str]:
    """:data:`QUIET_WORKERS` as the environment variables a ``dask worker`` started elsewhere reads."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
            for key, value in QUIET_WORKERS.items()}


def local_client(workers: int):
    """A LocalCluster of ``workers`` processes with one task each and cores / workers torch threads."""
    from distributed import Client, LocalCluster

    threads = max(1, (os.cpu_count() or 1) // workers)
    import dask

    with dask.config.set(QUIET_WORKERS):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                               env={"OMP_NUM_THREADS": str(threads)})
    client = Client(cluster, set_as_default=False)
    client.register_plugin(torch_threads_plugin(threads))
    return client


#: dask-jobqueue's cluster class for each batch scheduler
JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster"}
KINDS = ("local", *JOBQUEUE)


def jobqueue_cluster(kind: str, settings: ClusterSettings | None):
    """The dask-jobqueue cluster of ``settings`` (defaults if None): jobs of ``processes`` workers, each running
    one batch at a time with cores / processes torch threads, scaled to ``jobs`` or adaptively."""
    import dask_jobqueue

    settings = settings or ClusterSettings()
    threads = settings.cores // settings.processes
    kwargs = dict(queue=settings.queue, account=settings.account, cores=settings.cores,
                  processes=settings.processes, memory=settings.memory, walltime=settings.walltime,
                  job_extra_directives=list(settings.job_extra), python=settings.python or sys.executable,
                  job_script_prologue=[*settings.prologue, f"export OMP_NUM_THREADS={threads}",
                                       *(f"export {k}={v}" for k, v in worker_environment().items())],
                  worker_extra_args=["--nthreads", "1"])
    if kind == "sge":
        kwargs.pop("account")
        kwargs["project"] = settings.account
    try:
        cluster = getattr(dask_jobqueue, JOBQUEUE[kind])(**kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DlphaseError(f"cannot start a {kind} cluster: {' '.join(str(exc).split())[:300]}; check [cluster]")
    if settings.adapt_maximum is not None:
        cluster.adapt(minimum_jobs=settings.adapt_minimum, maximum_jobs=settings.adapt_maximum)
    else:
        cluster.scale(jobs=settings.jobs)
    return cluster, threads


@contextlib.contextmanager
def dask_executor(scheduler: str | None = None, cluster: str | None = None, workers: int = 1,
                  settings: ClusterSettings | None = None, announce: bool = True) -> Iterator[cf.Executor | None]:
    """The executor of a dask client for a sweep: of the scheduler at ``scheduler``, or of a ``cluster``
    (``"local"``: ``workers`` processes here; ``"slurm"``, ``"pbs"``, ``"sge"``: batch jobs as ``settings``
    say); None when neither is given. With ``announce`` (the command line)
    the dashboard's address is printed once on stderr, and dask's logs are silenced."""
    if scheduler and cluster:
        raise DlphaseError("give either --scheduler ADDRESS or --cluster KIND, not both")
    if not (scheduler or cluster):
        yield None
        return
    if cluster not in (None, *KINDS):
        raise DlphaseError(f"--cluster {cluster!r} is not known; use one of {', '.join(KINDS)}, or --scheduler ADDRESS")
    if announce:  # on the command line, dask's own logs (tracebacks of lost connections) would bury the one-line error
        import logging

        import distributed  # noqa: F401 - it sets its loggers' levels when imported

        for name in list(logging.root.manager.loggerDict):
            if name.split(".")[0] in ("distributed", "tornado"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    if scheduler:
        client = connect(scheduler)
    elif cluster == "local":
        client = local_client(workers)
    else:
        from distributed import Client

        batch_cluster, threads = jobqueue_cluster(cluster, settings)
        client = Client(batch_cluster, set_as_default=False)
        client.register_plugin(torch_threads_plugin(threads))
    try:
        if announce:
            print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
        yield ClientExecutor(client)
    finally:
        cluster_obj = client.cluster
        client.close()
        if cluster_obj is not None:
            cluster_obj.close()


class ClientExecutor(cf.Executor):
    """A dask client as a ``concurrent.futures`` executor whose tasks are never merged (``pure=False``: two
    batches with equal arguments are still two runs) and whose worker threads size the sweep's queue."""

    def __init__(self, client):
        self.client = client
        self._inner = client.get_executor(pure=False)

    @property
    def worker_threads(self) -> int:
        """The cluster's worker threads at this moment (0 while a batch scheduler's jobs wait in its queue)."""
        try:
            return sum(self.client.nthreads().values())
        except (OSError, TimeoutError):  # the scheduler is gone: the futures in flight say so
            return 0

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        return self._inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait)
