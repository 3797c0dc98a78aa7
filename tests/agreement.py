"""What two integrations of one member's gradient flow may differ by (docs/reproducibility.md).

A member trained in a batch, alone, with other torch threads or on another CPU performs the same steps with
different rounding: torch's vectorised kernels take another code path (scalar tails, threads' chunk edges,
reduction orders) at positions that depend on the batch's shape and the CPU. While the step rule makes the
same decisions (the same accepted and rejected steps), the two runs differ by that rounding as the flow
amplifies it. Once a decision differs they are two discretisations of one flow, each within the integrator's
error E of it, so they differ by at most a few E.
"""

from __future__ import annotations

from typing import Callable

import attrs
import numpy as np

#: same decisions: |f - f_ref| <= ROUNDING max |f_ref| (per-step rounding, 1e-16, amplified by the flow: the
#: tests' members reach 1.5e-7)
ROUNDING = 1e-6
#: different decisions: |f - f_ref| <= DECISIONS E (each run is within about E of the flow; 1.4 E seen on the tests'
#: nets)
DECISIONS = 3.0
#: E is measured against a run with tolerances TIGHTER times smaller (0.7 to 0.8 of E against one 100 times smaller)
TIGHTER = 10.0


def tighter(flow):
    """``flow`` (a gradient_flow) with max_dgrad, max_error and max_dout TIGHTER times smaller and room for the
    steps."""
    return attrs.evolve(flow, max_dgrad=flow.max_dgrad / TIGHTER, max_error=flow.max_error / TIGHTER,
                        max_dout=flow.max_dout / TIGHTER,
                        max_steps=None if flow.max_steps is None else int(flow.max_steps * TIGHTER))


def assert_flows_agree(f, f_ref, same_decisions: bool, error: Callable[[], np.ndarray] | None = None,
                       what: str = "f") -> None:
    """Assert the agreement above between two integrations' outputs ``f`` and ``f_ref`` (arrays or tensors).
    ``error()``: the reference's integrator error, the output of a :func:`tighter` run minus ``f_ref``;
    None where the decisions must match (fixed-step dynamics, whose rounding never reaches a decision)."""
    f, f_ref = np.asarray(f, dtype=np.float64), np.asarray(f_ref, dtype=np.float64)
    gap = float(np.abs(f - f_ref).max())
    if same_decisions:
        bound = ROUNDING * float(np.abs(f_ref).max())
        assert gap <= bound, f"{what}: same steps, yet {gap:.3g} apart (rounding allows {bound:.3g})"
        return
    assert error is not None, f"{what}: the step sequences differ"
    e = float(np.abs(np.asarray(error(), dtype=np.float64)).max())
    assert gap <= DECISIONS * e, (f"{what}: the step sequences differ and the ends are {gap:.3g} apart, more than "
                                  f"{DECISIONS:g} x the integrator's error {e:.3g}")


def assert_records_agree(ds, ref, tight: Callable | None = None, what: str = "run") -> None:
    """The same for two runs' records (xarray Datasets): the same status, and f_test as above. ``tight()``: the
    reference point's record under :func:`tighter` dynamics (called only where the step sequences differ)."""
    assert str(ds["status"].values) == str(ref["status"].values), what
    same = all(int(ds[k]) == int(ref[k]) for k in ("steps", "rejected"))
    f_ref = ref["f_test"].values
    assert_flows_agree(ds["f_test"].values, f_ref, same,
                       None if tight is None else lambda: tight()["f_test"].values - f_ref, what)


def tighter_spec(spec):
    """``spec`` with :func:`tighter` dynamics."""
    return attrs.evolve(spec, dynamics=tighter(spec.dynamics))
