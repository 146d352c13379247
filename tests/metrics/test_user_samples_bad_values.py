"""Samples and features a user may hand the metrics by mistake (complex values, rows with no
columns, a fractional count or batch size), each refused with one error that says what to
pass instead, and the metrics' invariance to the order of the samples and to batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_gen.metrics import (
    SmallClassifier,
    class_coverage,
    frechet_distance,
    grid_modes,
    label_agreement,
    mode_coverage,
    ring_modes,
    sample_modes,
    sample_quality,
    train_classifier,
)


@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensor", "numpy"])
def test_complex_values_are_refused_not_cast_to_their_real_part(as_numpy):
    # a spectrum's coefficients: before, the imaginary part was dropped with torch's warning
    f = torch.randn(50, 3, dtype=torch.complex128)
    real = torch.randn(50, 3, dtype=torch.float64)
    wrap = (lambda t: t.numpy()) if as_numpy else (lambda t: t)
    with pytest.raises(TypeError, match=r"f1 must be features.*real values.*x\.real"):
        frechet_distance(wrap(f), real)
    with pytest.raises(TypeError, match=r"f2 must be features.*real values"):
        frechet_distance(real, wrap(f))
    points = sample_modes(ring_modes(), 0.02, 200).to(torch.complex64)
    with pytest.raises(TypeError, match="samples must be points.*real values"):
        mode_coverage(wrap(points), ring_modes(), 0.02)
    with pytest.raises(TypeError, match="predicted must be class indices with real values"):
        class_coverage(wrap(torch.zeros(4, dtype=torch.complex64)), 3)


def test_features_or_points_without_columns_are_refused():
    # (N, 0) features gave 0.0, the distance of identical distributions
    with pytest.raises(ValueError, match="at least one column"):
        frechet_distance(torch.randn(5, 0), torch.randn(7, 0))
    # D = 0 put every sample on every mode: "8/8 modes, 100.0% high quality"
    with pytest.raises(ValueError, match="K >= 1 and D >= 1"):
        mode_coverage(torch.zeros(100, 0), torch.zeros(8, 0), 0.1)


@pytest.mark.parametrize("min_count", [2.5, 20.0, True])
def test_a_count_that_is_not_a_whole_number_is_refused(min_count):
    # 2.5 counted as 3 without a word
    x = sample_modes(ring_modes(), 0.02, 400, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="min_count must be at least 1 and a whole number"):
        mode_coverage(x, ring_modes(), 0.02, min_count=min_count)
    # a numpy integer is a whole number: the same counts as the int
    assert mode_coverage(x, ring_modes(), 0.02, min_count=np.int64(20)) == mode_coverage(
        x, ring_modes(), 0.02, min_count=20
    )


def test_the_order_of_the_samples_changes_nothing():
    gen = torch.Generator().manual_seed(1)
    f1 = torch.randn(300, 4, generator=gen, dtype=torch.float64)
    f2 = torch.randn(200, 4, generator=gen, dtype=torch.float64) * 2 + 1
    p1, p2 = torch.randperm(300, generator=gen), torch.randperm(200, generator=gen)
    distance = frechet_distance(f1, f2)
    assert distance > 1.0  # far apart: the comparison has room to fail
    assert frechet_distance(f1[p1], f2[p2]) == pytest.approx(distance, rel=1e-12)
    # swapping the two sets is the same distance: W2 is symmetric
    assert frechet_distance(f2, f1) == pytest.approx(distance, rel=1e-12)
    x = sample_modes(ring_modes(), 0.05, 500, gen)
    x = torch.cat([x, torch.full((20, 2), 7.0)])  # a few strays far from every mode
    got = mode_coverage(x, ring_modes(), 0.05)
    shuffled = mode_coverage(x[torch.randperm(len(x), generator=gen)], ring_modes(), 0.05)
    assert got.high_quality < 1.0 and got == shuffled
    # results compare by value: == on them failed with torch's "Boolean value of Tensor..."
    assert got != mode_coverage(x[:400], ring_modes(), 0.05)
    predicted = torch.randint(0, 5, (100,), generator=gen)
    classes = class_coverage(predicted, 6)
    assert classes == class_coverage(predicted[torch.randperm(100, generator=gen)], 6)
    assert classes != class_coverage(predicted, 7) and classes.covered == 5
    # the modes' order permutes the per-mode counts and nothing else
    order = torch.randperm(8, generator=gen)
    reordered = mode_coverage(x, ring_modes()[order], 0.05)
    assert torch.equal(reordered.counts, got.counts[order])
    assert (reordered.modes, reordered.high_quality) == (got.modes, got.high_quality)


@pytest.mark.parametrize("value", [0, 7.5, -1, True])
def test_a_batch_size_or_epochs_that_is_not_a_whole_number_is_refused(value):
    # 0 failed inside Tensor.split or range, 7.5 inside split_with_sizes or range
    x, y = torch.rand(8, 8, 8), torch.arange(8) % 2
    clf = SmallClassifier(2)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        sample_quality(clf, x, x, batch_size=value)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        label_agreement(clf, x, y, draws=False, batch_size=value)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        train_classifier(x, y, batch_size=value)
    if value != 0:  # epochs=0 is the seeded initial classifier
        with pytest.raises(ValueError, match="epochs must be a whole number >= 0"):
            train_classifier(x, y, epochs=value)


def test_a_batch_size_changes_no_score():
    x = torch.rand(9, 8, 8, generator=torch.Generator().manual_seed(2))
    clf = train_classifier(x, torch.arange(9) % 3, epochs=1, batch_size=np.int64(4))
    clf = clf.double()  # float64 features: no batch-dependent float32 kernels in the way
    one, chunked = (
        sample_quality(clf, x[:5], x[5:]),
        sample_quality(clf, x[:5], x[5:], batch_size=2),
    )
    assert chunked.frechet == pytest.approx(one.frechet, rel=1e-9, abs=1e-12)
    assert (chunked.confidence, chunked.classes_covered) == pytest.approx(
        (one.confidence, one.classes_covered), rel=1e-6
    )


def test_mixtures_and_draws_from_them_refuse_counts_and_spreads_they_cannot_have():
    # ring_modes(0) raised ZeroDivisionError, ring_modes(2.5) gave 3 points spaced for 2.5,
    # grid_modes(0) no modes; sample_modes drew with a negative std, and failed inside torch
    # for no centers or a negative count
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError, match="num_modes must be a whole number >= 1"):
            ring_modes(bad)
        with pytest.raises(ValueError, match="size must be a whole number >= 1"):
            grid_modes(bad)
    for std in (-0.1, float("nan"), torch.tensor([0.1, -0.1])):
        with pytest.raises(ValueError, match="std must be finite and non-negative"):
            sample_modes(ring_modes(), std, 10)
    with pytest.raises(ValueError, match=r"centers must be the modes' means \(K, D\)"):
        sample_modes(torch.zeros(0, 2), 0.1, 10)
    with pytest.raises(ValueError, match="num_samples must be a whole number >= 0"):
        sample_modes(ring_modes(), 0.1, -3)
    # numpy counts are whole numbers; a per-axis spread (D,) and a zero spread are draws
    assert ring_modes(np.int64(4)).shape == (4, 2) and grid_modes(np.int64(3)).shape == (9, 2)
    gen = torch.Generator().manual_seed(0)
    exact = sample_modes(ring_modes(), 0.0, 50, gen)
    assert all(bool((ring_modes() == row).all(-1).any()) for row in exact)
    assert sample_modes(ring_modes(), torch.tensor([0.1, 0.0]), 5, gen).shape == (5, 2)
