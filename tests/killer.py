"""Run the dlphase command line and SIGKILL it at a chosen moment, for the fault tests.

    python -m tests.killer MOMENT LOG -- dlphase arguments...

MOMENT is ``none``, ``train:N:DELAY`` (DELAY seconds into the N-th batch's training) or
``write:WHAT:N:PHASE``: the N-th atomic write of WHAT (``run``: a run file, ``spec``: the runs folder's
spec.toml, ``out``: the cube or line) at PHASE (``mid``: half its bytes in the temporary file, ``full``: the
temporary file complete but not yet renamed, ``renamed``: just after the rename). Every batch trained
appends a line ``train RUN_ID...`` to LOG, written before the training starts, so they survive the kill.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> None:
    moment, log, sep, *args = argv
    assert sep == "--", "usage: python -m tests.killer MOMENT LOG -- dlphase arguments..."
    import importlib

    from dlphase.cli import main as cli

    files, sweep = importlib.import_module("dlphase.files"), importlib.import_module("dlphase.sweep")

    kind, *where = moment.split(":")
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    counts = {"train": 0, "run": 0, "spec": 0, "out": 0}

    execute_group = sweep.execute_group

    def logged_group(spec, batch):
        counts["train"] += 1
        os.write(log_fd, f"train {' '.join(spec.run_id(p) for p in batch)}\n".encode())
        if kind == "train" and counts["train"] == int(where[0]):
            threading.Timer(float(where[1]), die).start()
        return execute_group(spec, batch)

    sweep.execute_group = logged_group

    atomic_write = files.atomic_write

    def killing_write(path, write, suffix=".tmp", needs=0):
        path = Path(path)
        what = "spec" if path.name == "spec.toml" else "run" if path.parent.name.endswith(".runs") else "out"
        counts[what] += 1
        chosen = kind == "write" and where[0] == what and counts[what] == int(where[1])

        def cut_short(tmp):
            write(tmp)
            if chosen and where[2] == "mid":
                data = Path(tmp).read_bytes()
                Path(tmp).write_bytes(data[: len(data) // 2])
                die()
            if chosen and where[2] == "full":
                die()

        atomic_write(path, cut_short, suffix, needs)
        if chosen and where[2] == "renamed":
            die()

    files.atomic_write = sweep.atomic_write = killing_write
    cli.main(args, prog_name="dlphase")


if __name__ == "__main__":
    main(sys.argv[1:])
