"""SIGKILL at random moments: while a run trains, while a run file or the output is written, while the runs
folder's spec is written. Each kill is resumed by the same command, and the result equals an uninterrupted
one bit for bit, with no temporary file left and no saved run trained again."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

import dlphase
from dlphase.sweep import runs_dir_for
from tests.conftest import ROOT, THREADS, write
from tests.test_jamming import JAM_SPEC

#: the moments a kill can be drawn at (see tests/killer.py): each test draws every one of REQUIRED, the rest
#: at random; the output's moments come last, as they do in a sweep
REQUIRED = ["train", "write:run:mid", "write:out:mid", "write:out:full"]
OTHERS = ["train", "write:run:mid", "write:run:full", "write:run:renamed", "write:spec:mid", "write:spec:full"]


def killed(moment: str, log: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tests.killer", moment, str(log), "--", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


def batches_trained(log: Path) -> list[set[str]]:
    return [set(line.split()[1:]) for line in log.read_text().splitlines()] if log.exists() else []


def draw(rng: np.random.Generator, kind: str, target: float, batches: list[set[str]], saved: set[str]) -> str:
    """A concrete moment of ``kind`` at ``target`` (0 to 1) of the uninterrupted run's ``batches``, counted in
    the batches and run files of a process that finds ``saved`` (it trains each batch with an unsaved run, and
    writes the unsaved runs)."""
    left = [i for i, b in enumerate(batches) if b - saved]
    if kind.startswith(("train", "write:run")) and not left:
        kind = "write:out:" + rng.choice(["mid", "full"])
    what, phase = (kind.split(":") + ["", ""])[1:3]
    if what in ("spec", "out"):
        return f"write:{what}:1:{phase}"
    sizes = np.array([len(b) for b in batches])
    w = min(int(target * sizes.sum()), sizes.sum() - 1)  # the target run file, then its batch g and place j
    g = int(np.searchsorted(np.cumsum(sizes), w, side="right"))
    j = w - int(sizes[:g].sum())
    before = [i for i in left if i < g]
    if kind == "train":
        return f"train:{min(len(before), len(left) - 1) + 1}:{rng.uniform(0.0, 0.3):.3f}"
    unsaved = {i: len(batches[i] - saved) for i in left}  # a saved member of a batch trained again keeps its file
    n = sum(unsaved[i] for i in before) + (min(j + 1, unsaved[g]) if g in left else 1)
    return f"write:run:{min(n, sum(unsaved.values()))}:{phase}"


def kill_and_resume(tmp_path, out: Path, args: list, seed: int) -> list[str]:
    """Run ``dlphase ARGS`` once to the end, then run it again on ``OUT`` killed at 10 moments drawn from
    ``seed``, resuming each time, and let it finish. Checks after each kill that every saved run file is whole
    and untouched and that no batch whose runs were all saved is trained again, and at the end that no
    temporary file is left; returns the report, one line per kill."""
    full_log = tmp_path / "full.log"
    full = killed("none", full_log, *args, "-o", tmp_path / "full.nc")
    assert full.returncode == 0, full.stderr
    batches = batches_trained(full_log)
    n_runs = sum(map(len, batches))
    rng = np.random.default_rng(seed)
    kinds = list(rng.choice(OTHERS, 10 - len(REQUIRED))) + ["train", "write:run:mid"]
    rng.shuffle(kinds)
    kinds += ["write:out:mid", "write:out:full"]
    targets = np.sort(rng.uniform(0, 1, len(kinds)))  # where in the work each kill lands, in order
    runs = runs_dir_for(out)
    report = []
    for i, kind in enumerate([*kinds, "none"]):
        saved = {p.stem for p in runs.glob("*.nc")} if runs.exists() else set()
        stamps = {p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in runs.glob("*.nc")} if saved else {}
        moment = "none" if kind == "none" else draw(rng, kind, targets[i], batches, saved)
        log = tmp_path / f"log{i}"
        res = killed(moment, log, *args, "-o", out)
        trained = batches_trained(log)
        report.append(f"{moment}: {len(saved)} of {n_runs} runs saved before, {sum(map(len, trained))} trained, "
                      f"exit {res.returncode}")
        if moment == "none":
            assert res.returncode == 0, res.stderr
        else:
            assert res.returncode == -9, f"{moment} was not reached: {res.returncode} {res.stderr}"
            assert not out.exists(), f"{moment} left an output file"
        for batch in trained:
            assert batch - saved, f"{moment}: a batch whose runs were all saved was trained again: {batch}"
            assert batch in batches, f"{moment}: a batch the uninterrupted run does not train: {batch}"
        for path in runs.glob("*.nc"):
            dlphase.open_cube(path)  # never a partial file under a run's name
            if path.stem in stamps:  # and a saved run's file is never written again
                assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamps[path.stem], f"{moment}: {path.name}"
    assert n_runs == len(list(runs.glob("*.nc")))
    leftovers = sorted(p.name for p in [*tmp_path.iterdir(), *runs.iterdir()]
                       if p.name.startswith(".") and p.name != ".lock" or p.suffix == ".corrupt")
    assert leftovers == [], "\n".join(report)
    print("\n".join(report))
    return report


def assert_bit_identical(a: xr.Dataset, b: xr.Dataset) -> None:
    """Equal values, dtypes and attributes, the wall times and the creation stamp aside."""
    drop = [v for v in a.data_vars if "wall_seconds" in v]
    a, b = a.drop_vars(drop), b.drop_vars(drop)
    for d in (a, b):
        d.attrs.pop("created")
    xr.testing.assert_identical(a, b)


def test_a_sweep_killed_at_ten_random_moments_resumes_to_the_same_cube(tiny_spec, tmp_path):
    """Three ensembles of six runs each: kills land between the run files of one ensemble too."""
    args = ["sweep", tiny_spec, "-q", "--set", "grid.h=[4,8,16]", "--set", "grid.alpha_tilde=[1.0,10.0,100.0]",
            "--set", "dynamics.max_steps=200"]
    out = tmp_path / "killed.nc"
    kill_and_resume(tmp_path, out, args, seed=2026)
    assert_bit_identical(dlphase.open_cube(out), dlphase.open_cube(tmp_path / "full.nc"))


def test_a_jamming_search_killed_at_ten_random_moments_resumes_to_the_same_line(tmp_path):
    """The search's state is its saved runs: a resumed search takes the same rounds and trains the same
    batches (two seeds each), so the line is the uninterrupted one's."""
    spec = write(tmp_path / "jam.toml", JAM_SPEC)
    out = tmp_path / "killed.nc"
    kill_and_resume(tmp_path, out, ["jamming", spec, "-q", "--no-spectrum"], seed=1)
    assert_bit_identical(xr.open_dataset(out).load(), xr.open_dataset(tmp_path / "full.nc").load())
