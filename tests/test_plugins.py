"""The plugin manager: registry.toml, a fake third-party plugin used in a sweep, broken plugins."""

import importlib.metadata
import json
import types

import pytest

import dlphase
from dlphase.manager import PluginManager, PluginWarning, read_registry
from dlphase.specs import build_spec
from tests.conftest import plugin_module, run_cli


def test_registry_lists_every_builtin_and_nothing_else():
    reg = read_registry()
    m = PluginManager(entry_points=False)
    listed = {(e["kind"], e["name"]) for e in reg["plugin"]}
    registered = {(kind, name) for kind, names in m.table.items() for name in names}
    assert listed == registered
    for e in reg["plugin"]:
        cls = m.get(e["kind"], e["name"])
        assert f"{cls.__module__}:{cls.__qualname__}" == e["object"]
        assert m.table[e["kind"]][e["name"]].description == e["description"]
    assert reg["defaults"]["dataset"] == "mnist"


def test_unknown_name_lists_installed():
    m = PluginManager(entry_points=False)
    with pytest.raises(dlphase.PluginError, match=r"unknown architecture 'resnet'; installed: cnn, fc, mean_field"):
        m.get("architecture", "resnet")


def test_fake_third_party_plugin_in_a_sweep(manager, tmp_path):
    spec = build_spec({"dataset": {"name": "blobs", "d": 2, "n_test": 20},
                       "dynamics": {"max_steps": 300},
                       "observables": {"names": ["errors", "mean_output"]},
                       "grid": {"h": [3, 5], "alpha_tilde": [1.0], "P": [40], "seed": [0, 1]}}, manager)
    cube = dlphase.sweep(spec, tmp_path / "c.nc", progress=False)
    assert cube["mean_f_test"].dims == ("h", "alpha_tilde", "P", "seed")
    assert cube["f_test"].sizes["test"] == 20
    # the observable's value is the mean of the stored test outputs
    import numpy as np

    np.testing.assert_allclose(cube["mean_f_test"].values, cube["f_test"].mean("test").values, rtol=1e-10)
    assert cube.attrs["data_source"] == "fake blobs"
    listed = {(d["kind"], d["name"]): d for d in manager.describe()}
    assert listed[("dataset", "blobs")]["origin"] == "dlphase-fake"
    assert listed[("dataset", "blobs")]["description"].startswith("Two Gaussian blobs")
    assert [p["name"] for p in listed[("dataset", "blobs")]["parameters"]] == ["d", "n_test"]


def test_broken_entry_point_warns_and_the_rest_works(monkeypatch):
    class BrokenEP:
        name = "broken"
        value = "nowhere:thing"
        dist = types.SimpleNamespace(name="broken-dist")

        def load(self):
            raise ImportError("no module named nowhere")

    real = importlib.metadata.entry_points

    def fake(**kw):
        return [BrokenEP()] if kw.get("group") == "dlphase" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    with pytest.warns(PluginWarning, match=r"plugin 'broken' from package 'broken-dist' failed to load"):
        m = PluginManager()
    assert "mnist" in m.names("dataset")


def test_plugin_raising_in_its_hook_warns(manager):
    def register_datasets(register):
        raise RuntimeError("boom")

    manager.register(plugin_module("badplugin", register_datasets=register_datasets), origin="bad-dist")
    with pytest.warns(PluginWarning, match=r"'badplugin' \(bad-dist\) failed to register its dataset classes"):
        names = manager.names("dataset")
    assert "blobs" in names and "mnist" in names


def test_registering_a_non_component_warns(manager):
    manager.register(plugin_module("wrongplugin", register_losses=lambda register: register(dict)))
    with pytest.warns(PluginWarning, match="is not a dlphase.Loss subclass"):
        assert "mse" in manager.names("loss")


def test_cli_plugins_lists_kinds_names_and_parameters():
    res = run_cli("plugins", "--json")
    assert res.returncode == 0, res.stderr
    items = json.loads(res.stdout)
    kinds = {i["kind"] for i in items}
    assert kinds == {"dataset", "architecture", "dynamics", "loss", "observable", "analysis"}
    analyses = {i["name"] for i in items if i["kind"] == "analysis"}
    assert analyses == {"phase_diagram", "ensemble", "fluctuation_scaling", "double_descent", "learning_curve",
                        "stripe", "crossover", "ntk_fluctuations", "jamming_plane", "divergence"}
    datasets = {i["name"]: i for i in items if i["kind"] == "dataset"}
    assert set(datasets) == {"mnist", "fashion_mnist", "kmnist", "cifar10", "digits", "stripe", "random", "teacher"}
    mnist = datasets["mnist"]
    assert mnist["origin"] == "dlphase"
    params = {p["name"]: p["default"] for p in mnist["parameters"]}
    assert params["pca"] == 10 and params["n_test"] == 1000 and params["seed"] == 0 and params["data_dir"] is None
    assert {p["name"]: p["default"] for p in datasets["cifar10"]["parameters"]}["labels"] == "alternate"
    assert all(p["doc"] for d in datasets.values() for p in d["parameters"])
    gf = next(i for i in items if i["name"] == "gradient_flow")
    assert next(p for p in gf["parameters"] if p["name"] == "loss")["default"] == {"name": "soft_hinge", "beta": 20.0}
    text = run_cli("plugins")
    assert text.returncode == 0 and "soft_hinge" in text.stdout and "pca (int, default 10)" in text.stdout
