"""What a dynamics reports about how a run ended."""

from __future__ import annotations

import attrs

STATUSES = ("converged", "early_stopped", "budget", "diverged", "failed")


@attrs.define(kw_only=True)
class TrainResult:
    """Why and when training stopped.

    ``status``: converged (every margin y f >= 1), early_stopped (the validation metric stopped
    improving; ``t`` and ``steps`` are those of the best checkpoint when its parameters were restored), budget
    (max_steps, max_seconds or max_time reached first), diverged (NaN or inf), failed (an exception; ``message``
    holds it).
    ``steps``: accepted steps; ``rejected``: rejected trial steps; ``t``: flow time reached.
    """

    status: str = attrs.field(validator=attrs.validators.in_(STATUSES))
    message: str = ""
    steps: int = 0
    rejected: int = 0
    t: float = 0.0
    wall_seconds: float = 0.0
