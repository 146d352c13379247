"""scikit-learn digits: exact values, a fixed disjoint split."""

from __future__ import annotations

import numpy as np
import torch

from pyro_gen.data import load


def test_matches_sklearn_and_split_is_a_fixed_partition() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_train, y_train = load("digits", "train")
    x_test, y_test = load("digits", "test")
    assert x_train.shape == (1500, 8, 8) and x_test.shape == (297, 8, 8)
    assert x_train.dtype == torch.uint8 and y_train.dtype == torch.int64
    assert int(x_train.max()) == 16 and int(x_train.min()) == 0
    order = np.random.default_rng(0).permutation(1797)
    x = torch.cat([x_train, x_test]).numpy()
    y = torch.cat([y_train, y_test]).numpy()
    np.testing.assert_array_equal(x, bunch.images[order].astype(np.uint8))
    np.testing.assert_array_equal(y, bunch.target[order])
    assert np.bincount(y_test, minlength=10).min() > 15  # every class is in the test split


def test_returns_fresh_tensors() -> None:
    x, _ = load("digits", "train")
    x[0] = 0
    assert load("digits", "train")[0][0].sum() > 0
