"""The documented contract for dynamics and architectures is enough: a third-party package (contract_plugin.py),
installed through the entry point group ``dlphase``, sweeps from the command line with trajectories, early
stopping and the NTK, and its numbers match a hand-written Adam loop."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import dlphase
from dlphase.grid_point import Run
from tests import contract_plugin
from tests.conftest import install_package, run_cli

SPEC = """
[dataset]
name = "random"
d = 4
n_test = 40
n_kernel = 20

[architecture]
name = "{arch}"

[dynamics]
name = "{dynamics}"
loss = "soft_hinge"
{dynamics_extra}

[observables]
names = ["errors", "trajectory", "ntk"]

[observables.trajectory]
t_min = 0.1
per_decade = 2

[grid]
h = [8, 16]
alpha_tilde = [0.3, 10.0]
P = [30]
seed = [0, 1]
"""

ADAM = """lr = 0.05
max_steps = 1500
early_stopping = {n_validation = 10, patience = 3, per_decade = 2, t_min = 0.5}"""


@pytest.fixture
def package(tmp_path, monkeypatch):
    """contract_plugin.py installed as the package ``dlphase-contract``, for the command lines the test starts."""
    return install_package(tmp_path, monkeypatch, "dlphase_contract", Path(contract_plugin.__file__).read_text())


def test_third_party_dynamics_and_architecture_sweep_from_the_command_line(package, tmp_path):
    listed = run_cli("plugins")
    assert listed.returncode == 0, listed.stderr
    assert "adam" in listed.stdout and "plain" in listed.stdout and "dlphase-contract" in listed.stdout
    spec = tmp_path / "adam.toml"
    spec.write_text(SPEC.format(arch="plain", dynamics="adam", dynamics_extra=ADAM))
    out = tmp_path / "adam.nc"
    done = run_cli("sweep", spec, "-o", out, "-q")
    assert done.returncode == 0, done.stderr
    cube = dlphase.open_cube(out)
    status = set(cube["status"].values.ravel().tolist())
    assert "early_stopped" in status and status <= {"converged", "early_stopped", "budget"}, status
    # every run recorded its trajectory from the first checkpoint on, and the NTK at both ends
    assert np.isfinite(cube["traj_t"].isel(time=0).values).all()
    assert np.isfinite(cube["ntk_change"].values).all() and (cube["ntk_change"] > 0).all()
    # and the third-party architecture trains with the built-in gradient flow (generic batched and NTK paths)
    flow = tmp_path / "flow.toml"
    flow.write_text(SPEC.format(arch="plain", dynamics="gradient_flow", dynamics_extra="max_steps = 3000"))
    done = run_cli("sweep", flow, "-o", tmp_path / "flow.nc", "-q")
    assert done.returncode == 0, done.stderr
    flow_cube = dlphase.open_cube(tmp_path / "flow.nc")
    assert "converged" in set(flow_cube["status"].values.ravel()) <= {"converged", "budget"}
    assert np.isfinite(flow_cube["ntk_change"].values).all()


def test_third_party_adam_matches_a_hand_written_loop():
    """One run through dlphase.Run against torch's Adam stepped by hand on alpha^-2 mean l(y f)."""
    manager = dlphase.get_manager()
    manager.register(contract_plugin, origin="dlphase-contract")
    try:
        spec = dlphase.Spec.from_dict({
            "dataset": {"name": "random", "d": 4, "n_test": 40},
            "architecture": {"name": "plain"},
            "dynamics": {"name": "adam", "loss": "soft_hinge", "lr": 0.05, "max_steps": 200},
            "grid": {"h": [8], "alpha_tilde": [0.3], "P": [30], "seed": [1]}})
        run = Run(spec, **spec.grid.points()[0])
        ds = run.train()
        net = contract_plugin.Plain().build(8, (4,), torch.Generator().manual_seed(1))
        net0 = contract_plugin.Plain().build(8, (4,), torch.Generator().manual_seed(1))
        alpha = 0.3 / math.sqrt(8)
        x, y = run.tensors.x_train, run.tensors.y_train
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        for _ in range(int(ds["steps"])):
            with torch.no_grad():
                f0 = net0(x)
            m = y * alpha * (net(x) - f0)
            loss = torch.nn.functional.softplus(20 * (1 - m)).mean() / 20 / alpha ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            f_test = alpha * (net(run.tensors.x_test) - net0(run.tensors.x_test))
        np.testing.assert_allclose(ds["f_test"].values, f_test.numpy(), rtol=1e-10, atol=1e-12)
        assert str(ds["status"].values) in {"converged", "budget"}
    finally:
        manager.unregister(contract_plugin)


def test_fast_paths_default_for_a_plain_module_and_override_on_a_net():
    """A module that is not a dlphase.Net gets every documented default; a Net subclass's overrides are used."""
    from dlphase.ensemble_net import EnsembleNet, ensemble_of
    from dlphase.net import fast_paths
    from dlphase.plugins.architectures.fc import FC, FCEnsemble

    plain = contract_plugin.Plain().build(5, (4,), torch.Generator().manual_seed(0))
    assert not isinstance(plain, dlphase.Net)
    assert type(ensemble_of([plain])) is EnsembleNet
    x = torch.randn(3, 4, dtype=torch.float64)
    assert fast_paths(plain).infinite_kernels(x) is None and fast_paths(plain).curvature(x) is None
    assert not fast_paths(plain).offers("infinite_kernels")
    assert not contract_plugin.Plain().offers("infinite_kernels")

    net = FC().build(5, (4,), torch.Generator().manual_seed(0))
    assert isinstance(net, dlphase.Net) and type(ensemble_of([net])) is FCEnsemble
    assert net.offers("infinite_kernels") and net.offers("curvature") and FC().offers("infinite_kernels")
    kernels = fast_paths(net).infinite_kernels(x)
    torch.testing.assert_close(kernels["ntk"], FC().infinite_kernels(x)["ntk"])
    assert kernels["ntk"].shape == (3, 3)
