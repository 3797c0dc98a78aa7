"""Dataset loaders against hand-made files; splits, label maps, preprocessing, cache and synthetic models."""

import gzip
import os
import re
import pickle
import struct
import time

import numpy as np
import pytest

import dlphase
from dlphase import DataError
from dlphase.plugins.datasets import idx
from dlphase.plugins.datasets.cifar import CIFAR10
from dlphase.plugins.datasets.digits import Digits
from dlphase.plugins.datasets.mnist import MNIST, KMNIST, FashionMNIST
from dlphase.plugins.datasets.splits import balanced_split, binary_labels
from dlphase.plugins.datasets.synthetic import RandomLabels, Stripe, Teacher
from tests.conftest import run_cli, write
from tests.datafiles import idx_bytes, write_cifar_folder, write_idx_folder


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cls", [MNIST, FashionMNIST, KMNIST])
def test_idx_values_read_back(tmp_path, gz, cls):
    arrays = write_idx_folder(tmp_path / "d", gz=gz)
    x, c = idx.read_split(tmp_path / "d", "train")
    np.testing.assert_array_equal(x[:, 0] * 255, arrays["train"][0])
    np.testing.assert_array_equal(c, arrays["train"][1])
    pools = cls(data_dir=str(tmp_path / "d")).pools()
    np.testing.assert_array_equal(np.round(pools.x_test[:, 0] * 255), arrays["t10k"][0])
    np.testing.assert_array_equal(pools.classes_test, arrays["t10k"][1])
    assert pools.x.shape == (40, 1, 28, 28)


def test_idx_from_dlphase_data(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "root" / "kmnist")
    monkeypatch.setenv("DLPHASE_DATA", str(tmp_path / "root"))
    assert KMNIST().pools().source.startswith("IDX files in")
    # mnist without its folder there falls back to the bundled digits and says so
    assert "bundled" in MNIST().pools().source
    with pytest.raises(DataError, match=r"fashion_mnist: no data folder; set data_dir.*\$DLPHASE_DATA/fashion_mnist"):
        FashionMNIST().pools()


@pytest.mark.parametrize("kind", ["bin", "py"])
def test_cifar_values_read_back(tmp_path, kind):
    batches = write_cifar_folder(tmp_path / "c", kind=kind)
    pools = CIFAR10(data_dir=str(tmp_path / "c")).pools()
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(np.round(pools.x * 255).reshape(-1, 3072), train)
    np.testing.assert_array_equal(pools.classes, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
    np.testing.assert_array_equal(np.round(pools.x_test * 255).reshape(-1, 3072), batches["test_batch"][0])
    # channel-major (R, G, B planes of 32 x 32), as in the distribution
    np.testing.assert_array_equal(np.round(pools.x[0, 1, 0, :3] * 255), train[0, 1024:1027])


def test_cifar_subfolder_layout(tmp_path):
    write_cifar_folder(tmp_path / "c" / "cifar-10-batches-py", kind="py")
    assert "python" in CIFAR10(data_dir=str(tmp_path / "c")).pools().source


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar_folder(tmp_path / "c", kind="py")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "c" / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to load"):
        CIFAR10(data_dir=str(tmp_path / "c")).pools()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("builtins", "exec"), ("os", "system"),
                                          ("subprocess", "Popen"), ("numpy", "load"), ("posix", "system"),
                                          ("builtins", "getattr")])
def test_cifar_pickle_refuses_every_other_global(tmp_path, module, name):
    """A batch whose pickle calls any global outside the unpickler's list (here by the GLOBAL and REDUCE
    opcodes, as a hand-made payload would) is refused before the call, and nothing runs."""
    write_cifar_folder(tmp_path / "c", kind="py")
    marker = tmp_path / "pwned"
    payload = (f"c{module}\n{name}\n(S'open({str(marker)!r}, \"w\")'\ntR.").encode()
    (tmp_path / "c" / "data_batch_2").write_bytes(payload)
    with pytest.raises(DataError, match=f"refusing to load {module}.{name}"):
        CIFAR10(data_dir=str(tmp_path / "c")).pools()
    assert not marker.exists()


def _corrupt(folder, name, data):
    (folder / name).write_bytes(data)


BAD_FILES = {
    "missing": (lambda f: (f / "t10k-labels-idx1-ubyte").unlink(), "lacks t10k-labels-idx1-ubyte"),
    "truncated": (lambda f: _corrupt(f, "train-images-idx3-ubyte", (f / "train-images-idx3-ubyte").read_bytes()[:-5]),
                  "the file is truncated or corrupt"),
    "magic": (lambda f: _corrupt(f, "train-labels-idx1-ubyte", idx_bytes(np.zeros((40, 2, 2)), 0x803)),
              "has IDX magic number 0x00000803, expected 0x00000801"),
    "sizes": (lambda f: _corrupt(f, "train-labels-idx1-ubyte", idx_bytes(np.zeros(39), 0x801)),
              "holds 40 images but train-labels-idx1-ubyte holds 39 labels"),
    "label_range": (lambda f: _corrupt(f, "t10k-labels-idx1-ubyte", idx_bytes(np.full(20, 12), 0x801)),
                    "has label 12, outside 0..9"),
    "bad_gzip": (lambda f: [(f / "train-images-idx3-ubyte").unlink(),
                            _corrupt(f, "train-images-idx3-ubyte.gz", b"\x1f\x8b" + b"x" * 100)],
                 "corrupt or truncated gzip"),
    "truncated_gzip": (lambda f: _gzip_instead(f, "train-images-idx3-ubyte", lambda z: z[: len(z) // 2]),
                       "is a corrupt or truncated gzip file"),
    "junk_gzip": (lambda f: [(f / "train-images-idx3-ubyte").unlink(),
                             _corrupt(f, "train-images-idx3-ubyte.gz", gzip.compress(b"x" * 100)[:15])],
                  "has IDX magic number 0x78787878"),
    # headers that claim 2^32 - 1 images of 2^32 - 1 x 2^32 - 1 pixels: refused before anything is allocated
    "huge_claim": (lambda f: _corrupt(f, "train-images-idx3-ubyte", _huge_header()),
                   "needs 79228162458924105385300197391"),
    "huge_claim_gzip": (lambda f: [(f / "train-images-idx3-ubyte").unlink(),
                                   _corrupt(f, "train-images-idx3-ubyte.gz", gzip.compress(_huge_header()))],
                        "more than [0-9]+ gzipped bytes can hold"),
}


def _huge_header():
    return struct.pack(">4I", 0x803, *(3 * [2 ** 32 - 1])) + bytes(64)


def _gzip_instead(folder, name, cut):
    """Replace ``name`` by its gzipped bytes, passed through ``cut``."""
    data = (folder / name).read_bytes()
    (folder / name).unlink()
    (folder / (name + ".gz")).write_bytes(cut(gzip.compress(data)))


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_idx_files(tmp_path, case):
    folder = tmp_path / "d"
    write_idx_folder(folder)
    mutate, message = BAD_FILES[case]
    mutate(folder)
    with pytest.raises(DataError, match=message):
        MNIST(data_dir=str(folder)).load(10)


def test_bad_cifar_files(tmp_path):
    write_cifar_folder(tmp_path / "c", kind="bin")
    (tmp_path / "c" / "data_batch_2.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        CIFAR10(data_dir=str(tmp_path / "c")).pools()
    (tmp_path / "c" / "test_batch.bin").unlink()
    with pytest.raises(DataError, match=r"lacks the CIFAR10 batches; it needs data_batch_1..5 and test_batch.*kriz"):
        CIFAR10(data_dir=str(tmp_path / "c")).pools()


@pytest.mark.parametrize("case", sorted(BAD_FILES) + ["no_folder"])
def test_bad_files_on_the_command_line(tmp_path, case):
    """Each bad-file error reaches the user as one line, exit status 2, no traceback, no output."""
    folder = tmp_path / "d"
    write_idx_folder(folder)
    if case == "no_folder":
        folder, message = tmp_path / "none", "does not exist"
    else:
        mutate, message = BAD_FILES[case]
        mutate(folder)
    spec = write(tmp_path / "s.toml", f'[dataset]\nname = "mnist"\ndata_dir = "{folder}"\nn_test = 10\npca = 5\n'
                                      '[grid]\nh = 4\nalpha_tilde = 1.0\nP = 10\n')
    res = run_cli("run", spec, "-o", tmp_path / "r.nc")
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "r.nc").exists()


def test_label_maps():
    c = np.array([0, 1, 2, 3, 7, 9])
    np.testing.assert_array_equal(binary_labels(c, "parity"), [1, -1, 1, -1, -1, -1])
    np.testing.assert_array_equal(binary_labels(c, "alternate"), [1, -1, 1, -1, 1, -1])
    np.testing.assert_array_equal(binary_labels(c, "positive", (3, 9)), [-1, -1, -1, 1, -1, 1])
    with pytest.raises(dlphase.SpecError, match="positive must list the classes"):
        dlphase.specs.build_spec({"dataset": {"labels": "positive"}, "grid": {"h": 1, "alpha_tilde": 1.0, "P": 2}})
    with pytest.raises(dlphase.SpecError, match="whiten needs pca > 0"):
        dlphase.specs.build_spec({"dataset": {"pca": 0, "whiten": True}, "grid": {"h": 1, "alpha_tilde": 1.0, "P": 2}})


@pytest.mark.parametrize("separate_test", [False, True])
def test_splits_are_balanced_nested_and_disjoint(separate_test):
    rng = np.random.default_rng(0)
    y = np.where(rng.random(400) < 0.4, 1.0, -1.0)
    yt = np.where(rng.random(100) < 0.5, 1.0, -1.0) if separate_test else None
    te1, k1, tr1 = balanced_split(y, 30, 50, seed=3, n_kernel=20, y_test_pool=yt)
    te2, k2, tr2 = balanced_split(y, 30, 120, seed=3, n_kernel=20, y_test_pool=yt)
    np.testing.assert_array_equal(te1, te2)
    np.testing.assert_array_equal(np.sort(k1), np.sort(k2))
    assert set(tr1) <= set(tr2)
    pool_test = yt if separate_test else y
    for idx_, pool, n in ((te1, pool_test, 30), (k1, y, 20), (tr2, y, 120)):
        assert len(idx_) == n and (pool[idx_] == 1).sum() == n // 2
    assert not set(k2) & set(tr2)
    if not separate_test:
        assert not set(te2) & (set(tr2) | set(k2))
    te3, _, _ = balanced_split(y, 30, 50, seed=4, n_kernel=20, y_test_pool=yt)
    assert set(te3) != set(te1)


def test_whitening_and_pca_zero_shapes():
    d = MNIST(pca=6, whiten=True, n_test=100, fit_on="train").load(300)
    cov = np.cov(d.x_train.T, bias=True)
    np.testing.assert_allclose(cov, np.eye(6), atol=1e-9)
    raw = MNIST(pca=0, n_test=100, n_kernel=50).load(60)
    assert raw.x_train.shape == (60, 1, 28, 28) and raw.x_kernel.shape == (50, 1, 28, 28)
    np.testing.assert_allclose(np.linalg.norm(raw.x_train.reshape(60, -1), axis=1), 28.0)


def test_the_maps_are_fitted_on_one_pool_for_every_P(monkeypatch):
    """fit_on = "pool": a training point's vector is the same for P = 100 and P = 1000, the maps are fitted on
    the max_train points that can be training points (disjoint from the test and kernel sets); fit_on = "train"
    refits them on each training set, and the vectors move."""
    from dlphase.plugins.datasets import preprocessing

    fitted = []
    real = preprocessing.pipeline
    monkeypatch.setattr(preprocessing, "pipeline", lambda *a, **k: fitted.append(k["fit"]) or real(*a, **k))
    pool = Digits(n_kernel=50)
    small, large = pool.load(100), pool.load(1000)
    assert len(fitted[0]) == len(fitted[1]) == pool.max_train()
    np.testing.assert_array_equal(fitted[0], fitted[1])

    def matches(a, b):
        """How many rows of a appear in b (to 1e-12)."""
        return sum(bool(np.any(np.abs(b - row).max(axis=1) < 1e-12)) for row in a)

    assert matches(small.x_train, large.x_train) == 100
    np.testing.assert_array_equal(small.x_test, large.x_test)
    train = Digits(n_kernel=50, fit_on="train")
    assert matches(train.load(100).x_train, train.load(1000).x_train) == 0
    # the pool is every point but the test and kernel sets, so no test point takes part in the fit
    assert len(fitted[0]) + pool.n_test + pool.n_kernel <= 1797
    assert "fitted on a pool of" in small.attrs["preprocessing"]
    assert train.load(100).attrs["preprocessing"].endswith("fitted on the training split")


def test_digits():
    d = Digits(pca=0, n_test=200).load(100)
    assert d.x_train.shape == (100, 1, 8, 8)
    from sklearn.datasets import load_digits

    assert len(load_digits().target) == 1797
    np.testing.assert_array_equal(d.y_test, np.where(d.classes_test % 2 == 0, 1, -1))
    assert Digits(n_test=400).max_train() > 1000


def test_stripe_random_teacher():
    s = Stripe(d=5, n_test=4000).load(100)
    inside = (s.x_test[:, 0] > -0.3) & (s.x_test[:, 0] < 1.18549)
    np.testing.assert_array_equal(s.y_test, np.where(inside, 1, -1))
    assert abs(s.y_test.mean()) < 0.05  # P(y = +1) = 1/2
    big = Stripe(d=5, n_test=4000).load(300)
    np.testing.assert_array_equal(big.x_train[:100], s.x_train)  # nested
    np.testing.assert_array_equal(big.x_test, s.x_test)         # P-independent test set
    r = RandomLabels(d=3, n_test=2000, n_kernel=10).load(50)
    assert abs(r.y_test.mean()) < 0.1 and r.x_kernel.shape == (10, 3)
    t = Teacher(d=4, width=30, depth=2, n_test=500).load(200)
    import torch

    from dlphase.plugins.architectures.fc import FC

    net = FC(depth=2, activation="relu").build(30, (4,), torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_array_equal(t.y_test, np.where(net(torch.from_numpy(t.x_test)).numpy() >= 0, 1, -1))


def test_disk_cache_hit_gives_the_same_data(tmp_path, monkeypatch):
    from dlphase import data_cache

    monkeypatch.setenv("DLPHASE_CACHE", str(tmp_path / "cache"))
    ds = MNIST(pca=5, n_test=100, n_kernel=20)
    first = data_cache.load(ds, 80)
    files = list((tmp_path / "cache").glob("mnist-*.npz"))
    assert len(files) == 1
    second = data_cache.load(ds, 80)
    for field in data_cache.FIELDS:
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert dict(second.attrs) == dict(first.attrs)
    data_cache.load(MNIST(pca=6, n_test=100, n_kernel=20), 80)
    assert len(list((tmp_path / "cache").glob("mnist-*.npz"))) == 2
    files[0].write_bytes(b"garbage")  # a broken entry is recomputed, not trusted
    # a killed writer's temporary file is removed once stale; a fresh one (a write in progress) stays
    stale, fresh = (files[0].with_name(f".{files[0].name}.{tag}.npz") for tag in ("killed", "writing"))
    for tmp in (stale, fresh):
        tmp.write_bytes(b"partial")
    old = time.time() - data_cache.STALE_AFTER - 60
    os.utime(stale, (old, old))
    third = data_cache.load(ds, 80)
    np.testing.assert_array_equal(third.x_train, first.x_train)
    assert not stale.exists() and fresh.exists()


def test_a_cifar_folder_runs_through_dlphase_run(tmp_path):
    write_cifar_folder(tmp_path / "cifar", n_per_batch=260, n_test=200, kind="bin")
    spec = write(tmp_path / "s.toml", f'[dataset]\nname = "cifar10"\ndata_dir = "{tmp_path / "cifar"}"\n'
                                      'pca = 30\nn_test = 100\n[dynamics]\nmax_steps = 50\n'
                                      '[grid]\nh = 8\nalpha_tilde = 1.0\nP = 1000\n')
    res = run_cli("run", spec, "-o", tmp_path / "r.nc")
    assert res.returncode == 0, res.stderr
    cube = dlphase.open_cube(tmp_path / "r.nc")
    assert "CIFAR10 binary batches" in cube.attrs["data_source"]
    assert cube["n_params"].values.tolist() == [30 * 8 + 8 * 8 + 8]


def test_every_dataset_runs_in_a_sweep(tmp_path):
    for name, extra in [("stripe", "d = 4\nn_test = 50"), ("random", "d = 4\nn_test = 50"),
                        ("teacher", "d = 4\nn_test = 50"), ("digits", "n_test = 100\npca = 8")]:
        spec = dlphase.load_spec(write(tmp_path / f"{name}.toml", f'[dataset]\nname = "{name}"\n{extra}\n'
                                       '[dynamics]\nmax_steps = 100\n[grid]\nh = [4, 8]\nalpha_tilde = 1.0\nP = 60\n'))
        cube = dlphase.sweep(spec, tmp_path / f"{name}.nc", progress=False)
        assert (cube["status"] != "failed").all(), cube["message"].values
        assert cube["f_test"].sizes["test"] in (50, 100)


def test_per_seed_training_sets_share_the_test_set():
    """training = per_seed: seed s trains on draw s of the training stream (seed 0 on the shared set), nested in P;
    the test and kernel sets, and the labels' rule, stay those of the shared dataset."""
    shared = Stripe(d=4, n_test=50, n_kernel=10)
    own = Stripe(d=4, n_test=50, n_kernel=10, training="per_seed")
    assert shared.for_seed(3) is shared and own.for_seed(3).draw == 3
    zero, one, shared_data = own.for_seed(0).load(30), own.for_seed(1).load(30), shared.load(30)
    np.testing.assert_array_equal(zero.x_train, shared_data.x_train)
    assert np.abs(one.x_train - zero.x_train).min() > 0
    for field in ("x_test", "y_test", "x_kernel", "y_kernel"):
        np.testing.assert_array_equal(getattr(one, field), getattr(shared_data, field))
    np.testing.assert_array_equal(own.for_seed(1).load(60).x_train[:30], one.x_train)
    np.testing.assert_array_equal(one.y_train, np.where((one.x_train[:, 0] > -0.3) & (one.x_train[:, 0] < 1.18549),
                                                        1.0, -1.0))
    # random labels: each draw has labels of its own, the test labels stay
    rl = RandomLabels(d=3, n_test=40, training="per_seed")
    a, b = rl.for_seed(0).load(200), rl.for_seed(2).load(200)
    assert 0.3 < np.mean(a.y_train != b.y_train) < 0.7
    np.testing.assert_array_equal(a.y_test, b.y_test)
