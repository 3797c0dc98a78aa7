"""The TOML spec: strict parsing, errors that name the key's path, overrides, round trip, run ids."""

import math

import pytest

import dlphase
from dlphase.specs import apply_overrides, build_spec, parse_override, read_toml
from tests.conftest import TINY_SPEC

import tomllib


def raw():
    return tomllib.loads(TINY_SPEC)


def test_builds_components_with_defaults():
    spec = build_spec(raw())
    assert spec.dataset.name == "mnist" and spec.dataset.pca == 5 and spec.dataset.seed == 0
    assert spec.architecture.depth == 2 and spec.architecture.bias is False
    assert spec.dynamics.loss.name == "soft_hinge" and spec.dynamics.loss.beta == 20.0
    assert spec.dynamics.max_seconds == math.inf
    assert spec.grid.h == (4, 16) and spec.grid.alpha_tilde == (1.0, 100.0)
    assert len(spec.grid.points()) == 8
    assert spec.run.dtype == "float64"


def test_loss_as_table_and_round_trip():
    r = raw()
    r["dynamics"]["loss"] = {"name": "soft_hinge", "beta": 5}
    spec = build_spec(r)
    assert spec.dynamics.loss.beta == 5.0
    again = build_spec(spec.to_dict())
    assert again == spec
    assert build_spec(tomllib.loads(spec.to_toml())) == spec


def test_sections_default_from_registry():
    spec = build_spec({"grid": {"h": 10, "alpha_tilde": 1.0, "P": 100}})
    assert (spec.dataset.name, spec.architecture.name, spec.dynamics.name) == ("mnist", "fc", "gradient_flow")
    assert [o.name for o in spec.observables] == ["errors"]
    assert spec.grid.seed == (0,)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(extra={}), "unknown section [extra]; valid sections: dataset, architecture"),
    (lambda r: r["dataset"].update(pcaa=3), "unknown key dataset.pcaa for dataset 'mnist'; valid keys: pca, whiten, "
                                            "center, normalize, labels, positive, n_test, n_kernel, seed, fit_on, "
                                            "data_dir"),
    (lambda r: r["dataset"].update(name="imagenet"), "dataset.name: unknown dataset 'imagenet'; installed: cifar10, "
                                                     "digits, fashion_mnist, kmnist, mnist, random"),
    (lambda r: r["dynamics"].update(loss="hinge2"), "dynamics.loss.name: unknown loss 'hinge2'; installed: "
                                                    "cross_entropy, hinge, mse"),
    (lambda r: r["dynamics"].update(loss={"name": "soft_hinge", "gamma": 1}), "unknown key dynamics.loss.gamma"),
    (lambda r: r["grid"].update(h=[0, 4]), "grid.h = 0 is invalid; every value must be > 0"),
    (lambda r: r["grid"].update(h=[-3]), "grid.h = -3 is invalid"),
    (lambda r: r["grid"].update(h=[4, 4]), "grid.h has repeated values"),
    (lambda r: r["grid"].update(alpha_tilde=[]), "grid.alpha_tilde is empty"),
    (lambda r: r["grid"].update(P=[5000]), "grid.P = 5000 is larger than the 4800 training points"),
    (lambda r: r["grid"].update(P=[4801]), "grid.P = 4801 is larger than the 4800 training points"),
    (lambda r: r["dataset"].update(pca=10.7), "dataset.pca = 10.7 is invalid: expected int"),
    (lambda r: r["dataset"].update(pca="10"), "dataset.pca = '10' is invalid: expected int"),
    (lambda r: r["architecture"].update(bias=1), "architecture.bias = 1 is invalid: expected bool"),
    (lambda r: r["architecture"].update(activation="gelu"),
     "architecture.activation = 'gelu' is invalid: expected 'swish' or 'relu' or 'tanh'"),
    (lambda r: r["architecture"].update(depth=0), "architecture.depth must be > 0, got 0"),
    (lambda r: r["dynamics"].update(kernel_refresh=-0.1), "dynamics.kernel_refresh must be >= 0, got -0.1"),
    (lambda r: r["observables"].update(names=["errors", "nope"]), "unknown observable 'nope'"),
    (lambda r: r["observables"].update(errors={"x": 1}, names=["errors"]), "unknown key observables.errors.x"),
    (lambda r: r["observables"].update(other={}), "unknown key observables.other"),
    (lambda r: r["run"].update(dtype="float16") if "run" in r else r.update(run={"dtype": "float16"}),
     "run.dtype = 'float16' is invalid"),
    (lambda r: r.update(run={"device": "tpu"}), "device 'tpu' is not a torch device"),
    (lambda r: r.pop("grid"), "no [grid] section"),
    (lambda r: r["grid"].pop("P"), "grid: missing required key(s) P"),
])
def test_bad_specs_name_the_problem(mutate, message):
    r = raw()
    mutate(r)
    with pytest.raises(dlphase.SpecError) as info:
        build_spec(r)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text


def test_P_limit_follows_n_test():
    r = raw()
    r["dataset"]["n_test"] = 1000
    r["grid"]["P"] = [4000]
    assert build_spec(r).grid.P == (4000,)
    r["grid"]["P"] = [4001]
    with pytest.raises(dlphase.SpecError, match="larger than the 4000 training points"):
        build_spec(r)


def test_overrides():
    assert parse_override("grid.h=100") == (["grid", "h"], 100)
    assert parse_override("grid.alpha_tilde=[1e-2, 1.0]") == (["grid", "alpha_tilde"], [0.01, 1.0])
    assert parse_override("run.device=cpu") == (["run", "device"], "cpu")
    assert parse_override('architecture.activation="relu"') == (["architecture", "activation"], "relu")
    r = apply_overrides(raw(), ["grid.h=7", "run.dtype=float32", "dynamics.loss.name=hinge"])
    spec = build_spec(r)
    assert spec.grid.h == (7,) and spec.run.dtype == "float32" and spec.dynamics.loss.name == "hinge"
    with pytest.raises(dlphase.SpecError, match="is not KEY=VALUE"):
        parse_override("grid.h")
    with pytest.raises(dlphase.SpecError, match="grid.h is not a table"):
        apply_overrides(raw(), ["grid.h.x=1"])


def test_run_id_is_stable_and_sensitive():
    spec = build_spec(raw())
    p = spec.grid.points()[0]
    assert spec.run_id(p) == build_spec(raw()).run_id(p)
    assert spec.run_id(p) != spec.run_id({**p, "seed": 1})
    other = build_spec(apply_overrides(raw(), ["dynamics.max_steps=401"]))
    assert other.run_id(p) != spec.run_id(p)
    # the device is not part of a run's identity
    assert build_spec(apply_overrides(raw(), ["run.device=cpu"])).run_id(p) == spec.run_id(p)


def test_read_toml_errors(tmp_path):
    with pytest.raises(dlphase.SpecError, match="does not exist"):
        read_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nh = 1")
    with pytest.raises(dlphase.SpecError, match="is not valid TOML"):
        read_toml(bad)
