"""Early stopping on a held-out validation set: the split, the spec, the rule, and its restore."""

import tomllib

import attrs
import numpy as np
import pytest
import torch

from dlphase import Data, Dataset
from dlphase.early_stopping import EarlyStopping
from dlphase.errors import SpecError
from dlphase.plugins.datasets.mnist import MNIST
from dlphase.plugins.datasets.synthetic import RandomLabels
from dlphase.grid_point import Run, execute, execute_group
from dlphase.specs import apply_overrides, build_spec
from tests.agreement import ROUNDING, assert_records_agree, tighter_spec

RANDOM = """
[dataset]
name = "random"
d = 5
n_test = 100

[architecture]
name = "fc"
depth = 1
activation = "swish"

[dynamics]
name = "{dynamics}"
loss = "hinge"
max_steps = 20000
early_stopping = {{ n_validation = 200, patience = 3, per_decade = 4 }}

[grid]
h = [16]
alpha_tilde = [1.0]
P = [60]
"""


def random_spec(dynamics="gradient_flow", *overrides):
    return build_spec(apply_overrides(tomllib.loads(RANDOM.format(dynamics=dynamics)), list(overrides)))


def test_tracker_by_hand():
    """Errors 1/2, 1/4, 1/4, 1/2 with patience 2: stop at the 4th checkpoint, keep the 2nd one's parameters."""
    y = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    tr = EarlyStopping(n_validation=4, patience=2, per_decade=1, t_min=1.0).tracker(torch.zeros(4), y, 1.0, None)
    assert not tr.due(0.5) and tr.due(1.0)
    outs = [[1, 1, 1, 1], [1, 1, -1, 1], [1, 1, -1, 1], [-1, 1, -1, 1]]
    stops = [tr.update(t, k, torch.tensor(o, dtype=torch.float64), [torch.tensor([float(k)])])
             for k, (t, o) in enumerate(zip([1.0, 35.0, 100.0, 1e3], outs))]
    assert stops == [False, False, False, True]
    assert tr.best == 0.25 and tr.best_t == 35.0 and tr.best_steps == 1
    assert float(tr.best_params[0]) == 1.0
    assert tr.next_time() == 1e4  # t = 35 moved the next checkpoint past 10, to 100
    assert "0.25 at t = 35" in tr.message(1e3)


def test_image_validation_split_leaves_training_set_alone():
    ds = MNIST(pca=5, n_test=200)
    plain, held = ds.load(100), ds.load_validation(100, 50)
    np.testing.assert_array_equal(plain.x_train, held.x_train)  # same points, same PCA (fitted on train)
    np.testing.assert_array_equal(plain.x_test, held.x_test)
    assert plain.x_val is None and held.x_val.shape == (50, 5)
    assert (held.y_val == 1).sum() == 25
    rows = {r.tobytes() for r in np.concatenate([held.x_train, held.x_test])}
    assert not any(r.tobytes() in rows for r in held.x_val)  # disjoint from train and test


def test_synthetic_validation_has_its_own_stream():
    ds = RandomLabels(d=3, n_test=10)
    plain, held = ds.load(20), ds.load_validation(20, 30)
    np.testing.assert_array_equal(plain.x_train, held.x_train)
    assert held.x_val.shape == (30, 3) and not np.isin(held.x_val, held.x_train).any()


def test_default_hold_out_for_datasets_without_their_own():
    """Dataset.load_validation's default: P + n points, n of them held out, balanced."""

    @attrs.frozen
    class Line(Dataset):
        name = "line"

        def load(self, P):
            x = np.arange(P, dtype=float)[:, None]
            y = np.where(np.arange(P) % 2 == 0, 1.0, -1.0)
            return Data(x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])

    d = Line().load_validation(10, 4)
    assert len(d.x_train) == 10 and len(d.x_val) == 4 and (d.y_val == 1).sum() == 2
    assert sorted(np.concatenate([d.x_train, d.x_val]).ravel()) == list(range(14))


def test_spec_errors_and_round_trip():
    spec = random_spec()
    assert spec.dynamics.early_stopping == EarlyStopping(n_validation=200, patience=3, per_decade=4)
    assert build_spec(spec.to_dict()) == spec
    with pytest.raises(SpecError, match=r"unknown key dynamics\.early_stopping\.bogus"):
        random_spec("gradient_flow", "dynamics.early_stopping.bogus=1")
    with pytest.raises(SpecError, match=r"dynamics\.early_stopping\.patience must be > 0"):
        random_spec("gradient_flow", "dynamics.early_stopping.patience=0")
    with pytest.raises(SpecError, match="n_validation"):
        raw = {"dataset": {"name": "mnist", "pca": 5, "n_test": 200},
               "dynamics": {"early_stopping": {"n_validation": 4000}},
               "grid": {"h": [4], "alpha_tilde": [1.0], "P": [1000]}}
        build_spec(raw)


@pytest.mark.parametrize("dynamics", ["gradient_flow", "gd"])
def test_early_stop_restores_the_best_checkpoint(dynamics):
    """Random labels: the validation error cannot improve for long, so the run stops early. Its model
    must be the one the same run reaches at the best checkpoint's time (t = result.t)."""
    extra = ["dynamics.lr=0.5"] if dynamics == "gd" else []
    spec = random_spec(dynamics, *extra)
    run = Run(spec)
    run.train()
    res = run.result
    assert res.status == "early_stopped", res.message
    assert "restored" in res.message
    # the same run without early stopping, stopped by max_time at the best checkpoint's time
    plain = random_spec(dynamics, *extra, f"dynamics.max_time={res.t!r}")
    plain = attrs.evolve(plain, dynamics=attrs.evolve(plain.dynamics, early_stopping=None))
    ref = Run(plain)
    ref.train()
    assert ref.result.t == pytest.approx(res.t, rel=1e-12) and ref.result.steps == res.steps
    with torch.no_grad():
        x = run.tensors.x_test
        torch.testing.assert_close(run.model(x), ref.model(x), rtol=1e-10, atol=1e-12)
        err = float((run.tensors.y_val * run.model(run.tensors.x_val) <= 0).double().mean())
    assert f"{err:.4g} at t = {res.t:.4g}" in res.message


def test_early_stopping_in_ensembles_matches_alone():
    """Members of an ensemble stop on their own and end as alone (tests/agreement.py): the same status, and the
    same checkpoint's time while the step sequences match."""
    spec = random_spec("gradient_flow", "grid.alpha_tilde=[0.3, 3.0]", "grid.seed=[0, 1]")
    points = spec.grid.points()
    together = execute_group(spec, points)
    statuses = set()
    for p, ds in zip(points, together):
        alone = execute(spec, p)
        statuses.add(str(ds["status"].values))
        assert_records_agree(ds, alone, lambda p=p: execute(tighter_spec(spec), p), what=str(p))
        if int(ds["steps"]) == int(alone["steps"]) and int(ds["rejected"]) == int(alone["rejected"]):
            assert float(ds["t"]) == pytest.approx(float(alone["t"]), rel=ROUNDING)
    assert "early_stopped" in statuses
