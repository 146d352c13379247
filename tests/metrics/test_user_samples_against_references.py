"""The metrics on samples in the forms Pyro users hold them (Predictive's leading draws,
float64, numpy, channels-last), checked against closed forms and numpy / scipy /
scikit-learn reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_gen.metrics import (
    SmallClassifier,
    class_coverage,
    frechet_distance,
    label_agreement,
    mode_coverage,
    ring_modes,
    sample_quality,
)
from tests.metrics.gaussian_reference import gaussian_frechet


def test_frechet_distance_is_the_gaussian_closed_form() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + np.eye(4), b @ b.T + 0.5 * np.eye(4)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    f1 = rng.multivariate_normal(m1, s1, 100_000)
    f2 = rng.multivariate_normal(m2, s2, 100_000)
    # the Gaussians fitted to the rows, exactly (numpy float64 against float32 torch rows)
    fitted = gaussian_frechet(f1.mean(0), np.cov(f1.T), f2.mean(0), np.cov(f2.T))
    assert frechet_distance(f1, f2) == pytest.approx(fitted, rel=1e-9)
    assert frechet_distance(torch.tensor(f1, dtype=torch.float32), f2) == pytest.approx(
        fitted, rel=1e-5
    )
    # and the population distance, within the sampling error of 100,000 rows
    assert frechet_distance(f1, f2) == pytest.approx(gaussian_frechet(m1, s1, m2, s2), rel=0.02)


def test_frechet_distance_names_the_repair_of_a_wrong_shape() -> None:
    f = torch.randn(3, 20, 2)
    with pytest.raises(ValueError, match=r"got \(3, 20, 2\).*f.reshape\(-1, f.shape\[-1\]\)"):
        frechet_distance(f, f)
    with pytest.raises(ValueError, match=r"one feature per row is \(N, 1\)"):
        frechet_distance(torch.randn(20), torch.randn(20))
    # the pooled draws the message suggests are the rows of one set
    pooled = f.reshape(-1, 2)
    assert frechet_distance(pooled, pooled + 1) == pytest.approx(2.0, rel=1e-6)  # float32 + 1


def test_sample_quality_reads_predictive_float64_channels_last_numpy_samples() -> None:
    torch.manual_seed(0)
    clf = SmallClassifier(10)
    real = torch.rand(40, 1, 28, 28)
    samples = torch.rand(3, 20, 1, 28, 28)  # Predictive's (num_samples, N, ...) draws
    expected = sample_quality(clf, samples.reshape(60, 1, 28, 28), real)
    user = samples.double().reshape(3, 20, 28, 28, 1).numpy()
    got = sample_quality(clf, user, real.permute(0, 2, 3, 1).numpy())
    assert got.frechet == pytest.approx(expected.frechet, rel=1e-5)
    assert got.classes_covered == expected.classes_covered
    with torch.no_grad():
        by_hand = frechet_distance(clf.features(samples.reshape(60, 1, 28, 28)), clf.features(real))
    assert expected.frechet == pytest.approx(by_hand, rel=1e-9)


def test_mode_coverage_matches_a_numpy_count() -> None:
    rng = np.random.default_rng(1)
    centers = ring_modes().numpy().astype(np.float64)
    # Predictive's draws of a generator that drops two modes: (num_samples, N, 2) float64
    which = rng.integers(0, 6, size=(4, 500))
    samples = centers[which] + 0.02 * rng.normal(size=(4, 500, 2))
    samples[0, :7] = [5.0, 5.0]  # stray points far from every mode
    cov = mode_coverage(samples, centers, 0.02)
    flat = samples.reshape(-1, 2)
    d = np.linalg.norm(flat[:, None] - centers[None], axis=-1)
    good = d.min(1) <= 3 * 0.02
    counts = np.bincount(d.argmin(1)[good], minlength=8)
    assert cov.counts.tolist() == counts.tolist()
    assert cov.modes == int((counts >= 20).sum()) == 6
    assert cov.high_quality == good.mean()


def test_label_agreement_is_scikit_learns_accuracy() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    torch.manual_seed(0)
    clf = SmallClassifier(10)
    samples = torch.rand(5, 30, 784, dtype=torch.float64)  # (num_samples, N, 784)
    labels = np.arange(30) % 10
    share, stderr = label_agreement(clf, samples, labels)
    with torch.no_grad():
        predicted = clf(samples.float().reshape(150, 1, 28, 28)).argmax(-1).numpy()
    expected = metrics.accuracy_score(np.tile(labels, 5), predicted)
    assert share == pytest.approx(expected, abs=1e-12)
    assert stderr == pytest.approx(np.sqrt(expected * (1 - expected) / 150), abs=1e-12)


def test_sample_quality_refuses_real_labels_the_classifier_cannot_have() -> None:
    """1-based labels 1..10 scored the classifier's accuracy near 0 without a word (what
    label_agreement already refused); the accuracy is checked against numpy's."""
    torch.manual_seed(0)
    clf = SmallClassifier(10)
    real, samples = torch.rand(40, 28, 28), torch.rand(20, 28, 28)
    labels = np.arange(40) % 10
    with pytest.raises(ValueError, match=r"real_labels must be classes of clf, in \[0, 10\)"):
        sample_quality(clf, samples, real, labels + 1)
    with pytest.raises(ValueError, match="real_labels must be integer class indices"):
        sample_quality(clf, samples, real, labels.astype(np.float32))
    with torch.no_grad():
        predicted = clf(real[:, None]).argmax(-1).numpy()
    got = sample_quality(clf, samples, real, labels).real_accuracy
    assert got == pytest.approx(float((predicted == labels).mean()), abs=1e-12)


def test_mode_coverage_std_and_class_coverage_num_classes_as_users_pass_them() -> None:
    """A per-mode std failed with "Boolean value of Tensor ... is ambiguous"; num_classes=10.0
    inside bincount. One-element and numpy scalars are the one number they are."""
    points, centers = torch.zeros(30, 2), torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"std must be one number.*shape \(2,\)"):
        mode_coverage(points, centers, torch.tensor([0.1, 0.2]))
    expected = mode_coverage(points, centers[:1], 0.1)
    for std in (torch.tensor([0.1]), np.float32(0.1), np.array(0.1)):
        got = mode_coverage(points, centers[:1], std)
        assert (got.modes, got.high_quality) == (expected.modes, expected.high_quality)
    predicted = torch.tensor([0, 1, 1, 2])
    assert class_coverage(predicted, 10.0).histogram.tolist() == [0.25, 0.5, 0.25] + [0.0] * 7
    with pytest.raises(ValueError, match="num_classes must be a positive whole number, got 2.5"):
        class_coverage(predicted, 2.5)
