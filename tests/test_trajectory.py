"""Trajectories at log-spaced checkpoints, checked on a flow whose solution is known."""

import numpy as np
import pytest
import torch

import dlphase
from dlphase import AlphaModel, TorchData
from dlphase.plugins.dynamics.gd import GD
from dlphase.plugins.dynamics.gradient_flow import GradientFlow
from dlphase.plugins.losses import Hinge
from dlphase.plugins.observables.trajectory import Trajectory
from dlphase.errors import SpecError
from dlphase.manager import PluginManager
from dlphase.specs import build_spec
from dlphase.monitor import Monitor
from tests.conftest import plugin_module, run_cli
from tests.test_gradient_flow import Linear


@pytest.mark.parametrize("dynamics", [GradientFlow(loss=Hinge()), GD(loss=Hinge(), lr=0.01)], ids=["flow", "gd"])
def test_hinge_one_point_trajectory(dynamics):
    """f~ = w x, x = 1, y = 1, hinge: f(t) = t and |theta - theta_0| = t / alpha, so every record obeys both."""
    one = torch.ones(1, 1, dtype=torch.float64)
    data = TorchData(x_train=one, y_train=one[0], x_test=one, y_test=one[0])
    alpha = 2.0
    times = Trajectory(t_min=1e-2, t_max=10, per_decade=2).checkpoints()
    np.testing.assert_allclose(times, 10.0 ** np.arange(-2, 1.01, 0.5))
    mon = Monitor(times)
    res = dynamics.train(AlphaModel(Linear([0.3]), alpha=alpha), data, monitor=mon)
    assert res.status == "converged"
    v = mon.values
    reached = ~np.isnan(v["t"])
    assert reached.sum() == np.sum(times <= res.t) >= 4  # every checkpoint up to the stop, none after
    t = v["t"][reached]
    assert np.all(t >= times[reached]) and np.all(np.diff(t) >= 0)
    np.testing.assert_allclose(v["f_norm"][reached], t, rtol=1e-9)
    np.testing.assert_allclose(v["displacement"][reached], t / alpha, rtol=1e-9)
    np.testing.assert_allclose(v["train_loss"][reached], np.maximum(1 - t, 0), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(v["n_delta"][reached], (t < 1).astype(float))
    assert np.all(v["test_error"][reached] == 0)


def test_trajectory_in_a_cube(tmp_path, tiny_spec):
    out = tmp_path / "traj.nc"
    res = run_cli("run", str(tiny_spec), "-o", str(out), "--set", 'observables.names=["errors", "trajectory"]',
                  "--set", "grid.h=[8]", "--set", "grid.alpha_tilde=[1.0]", "--set", "grid.seed=[0]")
    assert res.returncode == 0, res.stderr
    cube = dlphase.open_cube(out)
    assert cube["traj_test_error"].dims[-1] == "time" and len(cube["time"]) == 41
    assert len(cube["traj_train_loss"].squeeze().dropna("time")) > 5
    assert float(cube["traj_t"].squeeze().dropna("time")[-1]) <= float(cube["t"].squeeze())


def test_trajectory_needs_a_recording_dynamics():
    """A dynamics that declares records_checkpoints = False cannot feed the trajectory observable: a spec error."""
    import attrs

    from dlphase.plugins.dynamics.stopping import Budgeted

    @attrs.frozen(kw_only=True)
    class Blind(Budgeted):
        name = "blind"
        records_checkpoints = False

        def train(self, model, data, monitor=None):
            raise AssertionError("never trained")

    m = PluginManager(entry_points=False)
    m.register(plugin_module("blind", register_dynamics=lambda register: register(Blind)), origin="test")
    raw = {"dynamics": {"name": "blind"}, "observables": {"names": ["errors", "trajectory"]},
           "grid": {"h": [4], "alpha_tilde": [1.0], "P": [50]}}
    with pytest.raises(SpecError, match="records no checkpoints"):
        build_spec(raw, m)
    build_spec({**raw, "observables": {"names": ["errors"]}}, m)
