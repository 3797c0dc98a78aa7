"""The observable ``trajectory``: train loss, test error, N_Delta, |f| and |theta - theta_0| along the flow,
at log-spaced checkpoints of the flow time t (a ``time`` dim), recorded by the dynamics as it runs."""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

import dlphase
from dlphase import Observable, Variable, param
from dlphase.model import reference_time_factor
from dlphase.specs import positive

VARIABLES = {
    "traj_t": Variable(long_name="flow time at which each checkpoint was recorded", units="time", dims=("time",)),
    "traj_t_reference": Variable(long_name="traj_t in the reference code's units (t alpha_tilde / alpha^2)",
                                 units="time", dims=("time",)),
    "traj_train_loss": Variable(long_name="training loss L along the flow", dims=("time",)),
    "traj_test_error": Variable(long_name="test error along the flow", dims=("time",)),
    "traj_n_delta": Variable(long_name="N_Delta along the flow", dims=("time",)),
    "traj_f_norm": Variable(long_name="|f|, RMS of f on the test set, along the flow", dims=("time",)),
    "traj_displacement": Variable(long_name="|theta - theta_0| along the flow", dims=("time",)),
}


@attrs.frozen(kw_only=True)
class Trajectory(Observable):
    """Records the run at t_k = t_min 10^(k / per_decade) up to t_max; NaN after the run stopped."""

    name: ClassVar[str] = "trajectory"
    variables: ClassVar = VARIABLES
    t_min: float = param(default=1e-2, doc="first checkpoint (flow time)", validator=positive)
    t_max: float = param(default=1e8, doc="last checkpoint (flow time)", validator=positive)
    per_decade: int = param(default=4, doc="checkpoints per decade of t", validator=positive)

    def __attrs_post_init__(self):
        if self.t_max <= self.t_min:
            raise ValueError(f"t_max = {self.t_max:g} must exceed t_min = {self.t_min:g}")

    def checkpoints(self) -> np.ndarray:
        """The nominal flow times t_k, the ``time`` coordinate."""
        n = int(np.floor(np.log10(self.t_max / self.t_min) * self.per_decade + 1e-9)) + 1
        return self.t_min * 10.0 ** (np.arange(n) / self.per_decade)

    def coords(self):
        return {"time": self.checkpoints()}

    def measure(self, run):
        if run.monitor is None:
            raise RuntimeError("the trajectory observable needs the dynamics to record checkpoints")
        values = {f"traj_{q}": v for q, v in run.monitor.values.items()}
        values["traj_t_reference"] = np.asarray(values["traj_t"]) * reference_time_factor(
            run.point["alpha_tilde"], run.model.alpha)
        return values


@dlphase.hookimpl
def register_observables(register):
    register(Trajectory)
