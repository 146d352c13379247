"""frechet_distance on features a user's own model gives, checked against the closed form
between two Gaussians, ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), computed apart in
float64 numpy by eigendecomposition, and against 40-digit mpmath where the covariances are
singular (more features than samples), near-singular, or the features sit at 1e4."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from pyro_gen.metrics import frechet_distance


def _with_moments(n: int, mean: np.ndarray, factor: np.ndarray, seed: int) -> torch.Tensor:
    """n rows whose sample mean is ``mean`` and sample covariance ``factor @ factor.T``
    exactly (up to rounding): whitened noise, then the factor."""
    z = np.random.default_rng(seed).standard_normal((n, factor.shape[1]))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return torch.from_numpy(mean + z @ factor.T)


def _closed_form(m1, s1, m2, s2) -> float:
    """The Gaussians' Frechet distance by eigendecomposition: tr (S1 S2)^(1/2) is the sum
    of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2)."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(w)) @ v.T
    ev = np.linalg.eigvalsh(root @ s2 @ root)
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.sqrt(ev).sum())


def _mpmath_reference(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """The same distance in 40 digits from its definition, with S1's and
    S1^(1/2) S2 S1^(1/2)'s eigenvalues: float64 rounding plays no part."""
    mpmath.mp.dps = 40

    def moments(f):
        a = mpmath.matrix(f.tolist())
        n, d = a.rows, a.cols
        mu = [mpmath.fsum(a[i, j] for i in range(n)) / n for j in range(d)]
        x = mpmath.matrix(n, d)
        for i in range(n):
            for j in range(d):
                x[i, j] = a[i, j] - mu[j]
        return mu, x.T * x / (n - 1)

    (mu1, s1), (mu2, s2) = moments(f1), moments(f2)
    w, v = mpmath.eigsy(s1)
    root = v * mpmath.diag([mpmath.sqrt(max(e, 0)) for e in w]) * v.T
    ev = mpmath.eigsy(root * s2 * root)[0]
    tr = mpmath.fsum(mpmath.sqrt(max(e, 0)) for e in ev)
    d = len(mu1)
    mean = mpmath.fsum((mu1[j] - mu2[j]) ** 2 for j in range(d))
    return float(mean + mpmath.fsum(s1[j, j] + s2[j, j] for j in range(d)) - 2 * tr)


def test_gaussians_with_known_moments_match_the_closed_form():
    # covariances that do not commute, so (S1 S2)^(1/2) is not S1^(1/2) S2^(1/2)
    rng = np.random.default_rng(0)
    l1, l2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    m1, m2 = rng.standard_normal(4), rng.standard_normal(4)
    f1, f2 = _with_moments(300, m1, l1, 1), _with_moments(200, m2, l2, 2)
    expected = _closed_form(m1, l1 @ l1.T, m2, l2 @ l2.T)
    assert math.isclose(frechet_distance(f1, f2), expected, rel_tol=1e-10)
    # a user's float32 features are the same features: the distance is computed in float64
    assert math.isclose(frechet_distance(f1.float(), f2.float()), expected, rel_tol=1e-5)


def test_near_singular_covariances_keep_their_small_variances():
    # diagonal covariances, so the distance is |m1-m2|^2 + sum (sqrt(v1) - sqrt(v2))^2: a
    # variance of 1e-8 against 1e-12 contributes (1e-4 - 1e-6)^2 ~ 1e-8. Square roots of
    # the covariances' eigenvalues turned rounding of order 1e-16 into errors of 1e-8.
    v1, v2 = np.array([1.0, 1e-12, 1e-8]), np.array([4.0, 1e-12, 1e-12])
    f1 = _with_moments(50, np.zeros(3), np.diag(np.sqrt(v1)), 3)
    f2 = _with_moments(60, np.zeros(3), np.diag(np.sqrt(v2)), 4)
    expected = float(((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    assert abs(frechet_distance(f1, f2) - expected) < 1e-12


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_more_features_than_samples_against_40_digits(scale):
    # a user scoring 8 samples with 12 features: both covariances are singular
    g = torch.Generator().manual_seed(0)
    f1 = scale * torch.randn(8, 12, generator=g, dtype=torch.float64)
    f2 = scale * (torch.randn(10, 12, generator=g, dtype=torch.float64) + 0.3)
    expected = _mpmath_reference(f1, f2)
    assert math.isclose(frechet_distance(f1, f2), expected, rel_tol=1e-12)
    # a set against itself: 0, where the covariance square roots gave -266 at scale 1e4
    assert 0 <= frechet_distance(f1, f1) <= 1e-12 * scale**2


def test_a_large_common_offset_changes_nothing():
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(200, 6, generator=g, dtype=torch.float64)
    f2 = 1.5 * torch.randn(150, 6, generator=g, dtype=torch.float64) + 0.1
    expected = _mpmath_reference(f1, f2)
    assert math.isclose(frechet_distance(f1 + 1e4, f2 + 1e4), expected, rel_tol=1e-9)


def test_predictive_draws_and_bad_features_get_one_clear_error():
    # Predictive's (num_samples, N, D): the user chooses how draws become rows
    with pytest.raises(ValueError, match=r"matrices \(N, D\) .* got \(3, 5, 2\)"):
        frechet_distance(torch.zeros(3, 5, 2), torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="f1 holds NaN or infinite"):
        frechet_distance(torch.tensor([[0.0], [math.inf]]), torch.zeros(5, 1))
