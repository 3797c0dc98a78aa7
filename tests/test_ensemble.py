"""Batched ensembles: the hand-written kernels against autograd, and members trained together against alone."""

import attrs
import numpy as np
import pytest
import torch

import dlphase
from dlphase import AlphaModel, TorchData
from dlphase.ensemble_net import EnsembleNet, ensemble_of
from dlphase.plugins.architectures.cnn import CNN
from dlphase.plugins.architectures.fc import FC
from dlphase.plugins.dynamics.gd import GD, SGD
from dlphase.plugins.dynamics.gradient_flow import GradientFlow
from dlphase.plugins.losses import Hinge, SoftHinge
from dlphase.plugins.dynamics.integrator import sliding
from dlphase.plugins.architectures.mean_field import MeanField
from dlphase.plugins.dynamics.integrator.sliding import box_qp
from dlphase.grid_point import Run, execute, execute_group, groups
from tests.agreement import assert_flows_agree, assert_records_agree, tighter, tighter_spec

ARCHS = [FC(depth=3, activation="swish"), FC(depth=2, activation="relu", bias=True),
         FC(depth=1, activation="tanh"), MeanField(activation="relu"), MeanField(activation="swish", bias=False)]


def _on_rows(change, rows):
    """``change`` (M, n) on each member's ``rows`` (None: none), zero elsewhere."""
    out = torch.zeros_like(change)
    for j, r in enumerate(rows):
        if r is not None:
            out[j, r] = change[j, r]
    return out


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"{a.name}-{a.activation}")
def test_batched_kernels_match_autograd(arch):
    """Forward and backward of the hand-written batched nets against torch.func.vmap + autograd."""
    nets = [arch.build(7, (5,), torch.Generator().manual_seed(s)) for s in range(3)]
    x = torch.randn(11, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    fast, generic = ensemble_of(nets), EnsembleNet(nets)
    assert type(fast) is not EnsembleNet
    params = fast.stack(nets)
    out, ctx = fast.forward(params, x, grad=True)
    ref_out, ref_ctx = generic.forward(params, x, grad=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-13, atol=0)
    torch.testing.assert_close(out[1], nets[1](x), rtol=1e-13, atol=0)
    cot = torch.randn_like(out)
    for g, ref in zip(fast.backward(params, ctx, cot), generic.backward(params, ref_ctx, cot)):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14)
    # reuse: later cotangents through the kept per-sample output gradients, D_i row-scaled by the cotangent
    _, ctx2 = fast.forward(params, x, grad=True)
    for cotangent in (cot, torch.randn_like(out)):
        for g, ref in zip(fast.backward(params, ctx2, cotangent, reuse=True),
                          generic.backward(params, ref_ctx, cotangent)):
            torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14)
    assert "unit" in ctx2[2]
    # add_backward: a cotangent change on a few rows per member (none for member 1), against the whole backward
    rows = [torch.tensor([0, 3, 4]), None, torch.tensor([10])]
    change = torch.randn_like(out)
    refs = generic.backward(params, ref_ctx, cot + _on_rows(change, rows))
    for ens, c in ((fast, ctx2), (generic, ref_ctx)):
        base = ens.backward(params, c, cot)
        for g, b, ref in zip(ens.add_backward(params, c, base, change, rows), base, refs):
            torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14)
            assert torch.equal(g[1], b[1])
    # frozen slopes equal to the pass's own give the same gradient (exactly for relu; the fused swish
    # backward rounds differently from the product with its slope)
    exact = arch.activation == "relu"
    for g, ref in zip(fast.backward(params, ctx, cot, slopes=fast.slopes(ctx)), fast.backward(params, ctx, cot)):
        torch.testing.assert_close(g, ref, rtol=0 if exact else 1e-13, atol=0 if exact else 1e-15)


@pytest.mark.parametrize("arch", [CNN(depth=2, activation="swish"),
                                  CNN(depth=3, activation="relu", bias=True, kernel_size=3, stride=1, padding=1),
                                  CNN(depth=2, activation="tanh", kernel_size=3, padding=0),
                                  CNN(depth=4, kernel_size=3, padding=1, strides=(2, 1, 2, 1), bias=True)],
                         ids=lambda a: f"{a.activation}-k{a.kernel_size}s{a.layer_strides()}p{a.padding}")
def test_cnn_kernels_match_autograd(arch):
    """The cnn's hand-written forward, backward and add_backward (channels last, unfold and fold by hand)
    against torch.func.vmap + autograd of F.conv2d nets, and each member against its own module."""
    nets = [arch.build(4, (2, 11, 11), torch.Generator().manual_seed(s)) for s in range(3)]
    x = torch.randn(9, 2, 11, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    fast, generic = ensemble_of(nets), EnsembleNet(nets)
    assert type(fast) is not EnsembleNet
    params = fast.stack(nets)
    out, ctx = fast.forward(params, x, grad=True)
    ref_out, ref_ctx = generic.forward(params, x, grad=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-13, atol=1e-15)
    with torch.no_grad():
        torch.testing.assert_close(out[2], nets[2](x), rtol=1e-13, atol=1e-15)
    cot = torch.randn_like(out)
    base = fast.backward(params, ctx, cot)
    for g, ref in zip(base, generic.backward(params, ref_ctx, cot)):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14)
    rows = [torch.tensor([0, 3, 4]), None, torch.tensor([8])]
    change = torch.randn_like(out)
    for g, b, ref in zip(fast.add_backward(params, ctx, base, change, rows), base,
                         generic.backward(params, ref_ctx, cot + _on_rows(change, rows))):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-14)
        assert torch.equal(g[1], b[1])
    for g, ref in zip(fast.backward(params, ctx, cot, slopes=fast.slopes(ctx)), base):
        assert torch.equal(g, ref)
    assert fast.kinked == (arch.activation == "relu")


def _data(P=40, d=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((P + 30, d))
    y = np.where(x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.3, 1.0, -1.0)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return TorchData(x_train=t(x[:P]), y_train=t(y[:P]), x_test=t(x[P:]), y_test=t(y[P:]))


def _models(arch, h, alphas, seeds, input_shape=(5,)):
    return [AlphaModel(arch.build(h, input_shape, torch.Generator().manual_seed(s)), a / h ** 0.5)
            for a, s in zip(alphas, seeds)]


def _f_test(model, data):
    with torch.no_grad():
        return model(data.x_test)


def _statuses_match_alone(dynamics, arch, alphas, seeds, data, input_shape=(5,), h=16):
    """Train members together, then each alone: the same status, and f_test as agreement.py allows (rounding
    while the step sequences match, the integrator's error where they differ); the statuses seen."""
    together = _models(arch, h, alphas, seeds, input_shape)
    res_together = dynamics.train_ensemble(together, data)
    statuses = set()
    for k, (a, s) in enumerate(zip(alphas, seeds)):
        alone = _models(arch, h, [a], [s], input_shape)[0]
        res_alone = dynamics.train(alone, data)
        assert res_alone.status == res_together[k].status
        same = (res_alone.steps, res_alone.rejected) == (res_together[k].steps, res_together[k].rejected)
        f_alone = _f_test(alone, data)

        def error(a=a, s=s, f_alone=f_alone):
            reference = _models(arch, h, [a], [s], input_shape)[0]
            tighter(dynamics).train(reference, data)
            return _f_test(reference, data) - f_alone

        assert_flows_agree(_f_test(together[k], data), f_alone, same,
                           error if isinstance(dynamics, GradientFlow) else None, what=f"member {k}")
        statuses.add(res_alone.status)
    return statuses


@pytest.mark.parametrize("arch,loss,rule,max_steps", [
    (FC(activation="swish"), SoftHinge(), "robust", 3000),
    (FC(activation="swish"), SoftHinge(), "reference", 3000),
    (FC(activation="swish"), SoftHinge(), "chebyshev", 3000),
    (FC(activation="swish"), SoftHinge(), "auto", 3000),
    (FC(activation="relu"), Hinge(), "robust", 3000),
    (MeanField(), SoftHinge(), "robust", 400),
], ids=["fc-swish", "fc-swish-reference", "fc-swish-chebyshev", "fc-swish-auto", "fc-relu-hinge", "mean_field"])
def test_member_in_ensemble_matches_alone(arch, loss, rule, max_steps):
    """Every member trained with others ends where it ends alone, to rounding or the integrator's error."""
    flow = GradientFlow(loss=loss, rule=rule, max_steps=max_steps)
    statuses = _statuses_match_alone(flow, arch, [1e-1, 1.0, 30.0, 1.0, 1e3], [0, 1, 2, 3, 4], _data())
    if arch.name == "fc":
        assert "converged" in statuses  # members leave the batch at different times


@pytest.mark.parametrize("act,loss,rule,alpha_tilde,seed", [
    ("swish", SoftHinge(), "robust", 1e3, 4),
    ("swish", SoftHinge(), "reference", 1e3, 4),
    ("relu", Hinge(), "robust", 30.0, 2),
], ids=["swish", "swish-reference", "relu-hinge"])
def test_step_sequences_that_differ_end_within_the_integrators_error(act, loss, rule, alpha_tilde, seed):
    """Two integrations of one flow whose accept / reject decisions differ (here from the initial dt; on another
    CPU, from rounding at a decision's threshold) end within DECISIONS x the integrator's error."""
    flow = GradientFlow(loss=loss, rule=rule, max_steps=3000)
    data = _data()
    runs = []
    for dt in (1.0, 0.9):
        model = _models(FC(activation=act), 16, [alpha_tilde], [seed])[0]
        res = attrs.evolve(flow, dt=dt).train(model, data)
        assert res.status == "converged"
        runs.append(((res.steps, res.rejected), _f_test(model, data)))
    assert runs[0][0] != runs[1][0]   # the case this test is about

    def error():
        reference = _models(FC(activation=act), 16, [alpha_tilde], [seed])[0]
        tighter(flow).train(reference, data)
        return _f_test(reference, data) - runs[0][1]

    assert_flows_agree(runs[1][1], runs[0][1], False, error)
    with pytest.raises(AssertionError, match="same steps, yet"):   # the same gap with the same steps would be a defect
        assert_flows_agree(runs[1][1], runs[0][1], True)


def test_an_ensemble_trained_twice_is_bitwise_the_same():
    """On one machine, with one thread count, the same batch gives the same numbers bit for bit (what a
    resumed sweep relies on)."""
    flow = GradientFlow(loss=SoftHinge(), max_steps=400)
    runs = []
    for _ in range(2):
        models = _models(FC(activation="swish"), 16, [1e-1, 1.0, 1e3], [0, 1, 2])
        results = flow.train_ensemble(models, _data())
        runs.append(([(r.steps, r.rejected, r.t) for r in results], [_f_test(m, _data()) for m in models]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("dynamics", [GD(loss=SoftHinge(), lr=2.0, max_steps=600),
                                      SGD(loss=Hinge(), lr=0.5, batch_size=8, momentum=0.5, weight_decay=1e-4,
                                          max_steps=800)], ids=["gd", "sgd"])
def test_descent_member_in_ensemble_matches_alone(dynamics):
    """gd and sgd ensembles: every member ends where it ends alone (fixed steps: only the stop rule decides,
    and rounding does not reach it, so the steps match and f_test agrees to rounding)."""
    statuses = _statuses_match_alone(dynamics, FC(activation="swish"), [1e-1, 1.0, 30.0, 1.0], [0, 1, 2, 3],
                                     _data())
    assert statuses == {"converged", "budget"}  # members leave the batch at different times


@pytest.mark.parametrize("loss", [SoftHinge(), Hinge()], ids=["soft_hinge", "hinge"])
def test_cnn_member_in_ensemble_matches_alone(loss, monkeypatch):
    """The cnn trains in ensembles through the generic torch.func path, with the same guarantee (the plain
    hinge's sliding forces take its kernel rows member by member)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((36, 1, 8, 8))
    y = np.where(x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2)), 1.0, -1.0)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    data = TorchData(x_train=t(x[:24]), y_train=t(y[:24]), x_test=t(x[24:]), y_test=t(y[24:]))
    solves = []
    monkeypatch.setattr(sliding, "box_qp", lambda *a, **k: solves.append(1) or box_qp(*a, **k))
    _statuses_match_alone(GradientFlow(loss=loss, max_steps=300), CNN(depth=2, kernel_size=3), [1.0, 10.0, 100.0],
                          [0, 1, 2], data, (1, 8, 8), h=4)
    assert bool(solves) == (loss.kink is not None)  # the hinge's runs did slide


def test_sweep_batches_match_single_runs(tiny_spec):
    """Through the run layer: execute_group (the sweep's batches) against execute, point by point."""
    spec = dlphase.load_spec(tiny_spec, ["grid.h=[8]", "grid.alpha_tilde=[0.1, 10.0]", "grid.P=[60]"])
    points = spec.grid.points()
    together = execute_group(spec, points)
    for p, ds in zip(points, together):
        assert_records_agree(ds, execute(spec, p), lambda p=p: execute(tighter_spec(spec), p), what=str(p))


def test_robust_rule_converges_through_kinks():
    """Plain hinge with a relu net: the robust rule reaches N_Delta = 0; the reference rule, given the
    same trial budget, stalls or crawls."""
    data = _data(P=120, d=5, seed=4)
    robust = GradientFlow(loss=Hinge(), max_steps=4000)
    res = robust.train(_models(FC(activation="relu"), 32, [10.0], [0])[0], data)
    assert res.status == "converged", res
    ref = GradientFlow(loss=Hinge(), rule="reference", max_steps=res.steps + res.rejected)
    res_ref = ref.train(_models(FC(activation="relu"), 32, [10.0], [0])[0], data)
    assert res_ref.status == "budget"


def test_seeds_with_training_sets_of_their_own_batch_apart(tmp_path):
    """dataset.training = per_seed: a batch holds one seed (its alpha_tilde values), each run trains on its seed's
    set, and the sweep's cube shares the test labels over the seeds."""
    spec = dlphase.Spec.from_dict({
        "dataset": {"name": "stripe", "d": 3, "n_test": 50, "training": "per_seed"},
        "architecture": {"name": "fc", "depth": 1, "activation": "relu", "bias": True},
        "dynamics": {"name": "gradient_flow", "loss": "soft_hinge", "max_steps": 300},
        "grid": {"h": [6], "alpha_tilde": [1.0, 100.0], "P": [30], "seed": [0, 1]}})
    points = spec.grid.points()
    batches = groups(spec, points)
    assert sorted(sorted((p["seed"], p["alpha_tilde"]) for p in b) for b in batches) == [
        [(0, 1.0), (0, 100.0)], [(1, 1.0), (1, 100.0)]]
    shared = attrs.evolve(spec, dataset=attrs.evolve(spec.dataset, training="shared"))
    assert len(groups(shared, points)) == 1
    runs = {p["seed"]: Run(spec, **p) for p in points}
    np.testing.assert_array_equal(runs[0].data.x_train, Run(shared, **points[0]).data.x_train)
    np.testing.assert_array_equal(runs[1].data.x_train, spec.dataset.for_seed(1).load(30).x_train)
    for b in batches:
        for p, ds in zip(b, execute_group(spec, b)):
            assert_records_agree(ds, execute(spec, p), lambda p=p: execute(tighter_spec(spec), p), what=str(p))
    cube = dlphase.sweep(spec, tmp_path / "c.nc", progress=False)
    assert cube["y_test"].dims == ("P", "test")
