"""``toy_log_prob`` on points as users hold them: float64 (it was float32-accurate, off by
3e-6 against scipy), numpy arrays and Predictive dicts (AttributeErrors from inside), and
the dashed names ``load`` accepts (refused as unknown)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_gen.data import load, toy_log_prob


def _scipy_eight_gaussians(x: np.ndarray) -> np.ndarray:
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    radius, std = 4 / math.sqrt(2), 0.5 / math.sqrt(2)
    angles = np.arange(8) * np.pi / 4
    centers = radius * np.stack([np.cos(angles), np.sin(angles)], -1)
    parts = [stats.multivariate_normal(c, std**2 * np.eye(2)).logpdf(x) for c in centers]
    return special.logsumexp(np.stack(parts), axis=0) - math.log(8)


def test_float64_numpy_predictive_points_get_scipys_mixture_density() -> None:
    x = 2 * np.random.default_rng(0).normal(size=(3, 50, 2))  # (num_samples, N, 2)
    got = toy_log_prob("eight_gaussians", x)
    assert got.shape == (3, 50) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _scipy_eight_gaussians(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(got, toy_log_prob("eight_gaussians", torch.from_numpy(x)))


def test_the_names_load_accepts_are_accepted() -> None:
    x, _ = load("eight-gaussians", num_samples=10)
    assert torch.equal(toy_log_prob("eight-gaussians", x), toy_log_prob("eight_gaussians", x))
    assert torch.equal(toy_log_prob("Checkerboard", x), toy_log_prob("checkerboard", x))


def test_a_predictive_dict_is_refused_naming_the_site() -> None:
    with pytest.raises(TypeError, match=r"got a dict with sites \['x', 'z'\].*x\['x'\]"):
        toy_log_prob("checkerboard", {"x": torch.zeros(4, 2), "z": torch.zeros(4, 2)})
    with pytest.raises(TypeError, match="tensor or numpy array, got list"):
        toy_log_prob("checkerboard", [[0.0, 0.0]])
