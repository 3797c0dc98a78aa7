import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

#: torch threads of the tests and of the command lines they start (DLPHASE_TEST_THREADS, default 1): the suite
#: passes with 1 and with 2 (docs/reproducibility.md says what changes with the thread count)
THREADS = int(os.environ.get("DLPHASE_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)
# the tests (and the CLI processes they start) use a data cache of their own, never the user's
os.environ["DLPHASE_CACHE"] = tempfile.mkdtemp(prefix="dlphase-test-cache-")
atexit.register(shutil.rmtree, os.environ["DLPHASE_CACHE"], ignore_errors=True)
os.environ.pop("DLPHASE_DATA", None)

HERE = Path(__file__).parent
ROOT = HERE.parent


@pytest.fixture
def manager():
    """A fresh plugin manager with the built-ins and the fake third-party plugin of fakeplugin.py."""
    import dlphase
    from tests import fakeplugin

    m = dlphase.PluginManager()
    m.register(fakeplugin, origin="dlphase-fake")
    return m


def plugin_module(name, **hooks):
    """A module whose functions ``hooks`` are dlphase hook implementations, as a package would ship."""
    import types

    import dlphase

    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, dlphase.hookimpl(function))
    return module


def install_package(tmp_path, monkeypatch, module: str, source: str) -> Path:
    """``source`` installed as the package ``module`` whose entry point in the group ``dlphase`` registers it, on
    the PYTHONPATH of the command lines a test starts: a module and a dist-info folder; returns their folder."""
    site = tmp_path / "site"
    info = site / f"{module}-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[dlphase]\n{module} = {module}\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return site


def run_cli(*args, cwd=None, timeout=300):
    """Run the installed ``dlphase`` console script in a subprocess; returns CompletedProcess."""
    exe = Path(sys.executable).with_name("dlphase")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dlphase.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def run_cli_here(*args):
    """Run the command line in this process (no interpreter start-up: for the many error cases); returns an
    object with returncode, stdout and stderr like :func:`run_cli`."""
    import types

    from click.testing import CliRunner

    from dlphase.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return types.SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def write(path, text):
    path = Path(path)
    path.write_text(text)
    return path


TINY_SPEC = """
[dataset]
name = "mnist"
pca = 5
n_test = 200

[architecture]
name = "fc"
depth = 2
activation = "swish"

[dynamics]
name = "gradient_flow"
loss = "soft_hinge"
max_steps = 400

[observables]
names = ["errors"]

[grid]
h = [4, 16]
alpha_tilde = [1.0, 100.0]
P = [100]
seed = [0, 1]
"""


@pytest.fixture
def tiny_spec(tmp_path):
    return write(tmp_path / "tiny.toml", TINY_SPEC)
