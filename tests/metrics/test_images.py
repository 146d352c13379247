"""Image metrics: the Frechet distance against scipy's matrix square root and a closed form,
class coverage and label agreement from their definitions, and scores computed on the
samples' device (CUDA when there is one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_gen.metrics import (
    SmallClassifier,
    class_coverage,
    frechet_distance,
    label_agreement,
    sample_quality,
    train_classifier,
)
from tests.metrics import gaussian_reference
from tests.metrics.gaussian_reference import gaussian_frechet


def test_frechet_distance_matches_scipys_matrix_square_root():
    g = torch.Generator().manual_seed(0)
    # correlated features whose covariances do not commute
    f1 = torch.randn(400, 5, generator=g) @ torch.randn(5, 5, generator=g)
    f2 = torch.randn(300, 5, generator=g) @ torch.randn(5, 5, generator=g) + 0.5
    a, b = f1.double().numpy(), f2.double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # scipy's sqrtm where scipy is installed, an eigendecomposition either way
    for use_scipy in {gaussian_reference.scipy is not None, False}:
        expected = gaussian_frechet(a.mean(0), s1, b.mean(0), s2, use_scipy=use_scipy)
        assert math.isclose(frechet_distance(f1, f2), expected, rel_tol=1e-8)


def test_frechet_distance_of_gaussians_approaches_the_closed_form():
    # N(m1, diag(v1)) against N(m2, diag(v2)): |m1 - m2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    g = torch.Generator().manual_seed(1)
    sd1, sd2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    m1, m2 = torch.zeros(3), torch.tensor([1.0, -1.0, 0.0])
    f1 = m1 + sd1 * torch.randn(200_000, 3, generator=g)
    f2 = m2 + sd2 * torch.randn(200_000, 3, generator=g)
    exact = float((m1 - m2).square().sum() + (sd1 - sd2).square().sum())  # 2 + 0.25 + 1
    assert abs(frechet_distance(f1, f2) - exact) < 0.05


def test_frechet_distance_refuses_mismatched_features():
    with pytest.raises(ValueError, match="same width"):
        frechet_distance(torch.zeros(5, 2), torch.zeros(5, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_frechet_distance_refuses_non_finite_features(bad):
    # an inf row gave a finite-looking 0.82 and a NaN row gave NaN, neither naming the set
    f = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    g = f.clone()
    g[1, 1] = bad
    with pytest.raises(ValueError, match="f2 holds NaN or infinite"):
        frechet_distance(f, g)


@pytest.mark.parametrize(
    "predicted, match",
    [([0, 1, 12], r"\[0, 10\)"), ([0, -1], r"\[0, 10\)"), ([0.5, 1.7], "integer class")],
)
def test_class_coverage_refuses_classes_outside_the_label_set(predicted, match):
    # class 12 of 10 gave a 13-bin histogram and a KL against the wrong uniform
    with pytest.raises(ValueError, match=match):
        class_coverage(torch.tensor(predicted), 10)


def test_label_agreement_and_sample_quality_name_a_bad_argument():
    clf = SmallClassifier(10)
    # no samples: a ZeroDivisionError from the standard error
    with pytest.raises(ValueError, match="at least one sample"):
        label_agreement(clf, torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    # 3 labels for 5 real images: torch's size-mismatch error from inside the accuracy
    with pytest.raises(ValueError, match="real_labels must hold one label per real image"):
        sample_quality(clf, torch.rand(5, 8, 8), torch.rand(5, 8, 8), torch.zeros(3).long())
    # one image: "each feature set needs at least 2 rows", from inside the Frechet distance
    with pytest.raises(ValueError, match=r"2 real images, got 1 sample\(s\) and 5"):
        sample_quality(clf, torch.rand(1, 8, 8), torch.rand(5, 8, 8))


def test_train_classifier_refuses_labels_that_do_not_match_the_images():
    # 9 labels for 10 images: an IndexError from the batch loop
    with pytest.raises(ValueError, match="one integer label per image: 10 images"):
        train_classifier(torch.rand(10, 8, 8), torch.zeros(9).long(), epochs=1)


def test_images_of_another_dtype_are_scored_or_refused_clearly():
    torch.manual_seed(0)
    clf, x = SmallClassifier(10), torch.rand(6, 8, 8)
    # float64 images are the same images: the same scores (they failed with a dtype error)
    q32, q64 = sample_quality(clf, x, x), sample_quality(clf, x.double(), x.double())
    assert math.isclose(q32.confidence, q64.confidence, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\], got dtype torch.uint8"):
        label_agreement(clf, (x * 255).to(torch.uint8), torch.zeros(6).long())


@pytest.mark.parametrize(
    "argument, scale, found",
    [
        ("samples", lambda x: 2 * x - 1, r"values from -0.9\d* to 0.9\d*"),  # a [-1, 1] model
        ("real", lambda x: 255 * x, r"values from 0.\d+ to 2\d\d"),  # 8-bit floats
        ("samples", lambda x: x.masked_fill(x > 0.9, math.nan), "NaN"),
    ],
)
def test_images_outside_the_unit_interval_are_refused_naming_the_range(argument, scale, found):
    # [-1, 1] or 0..255 float images were scored silently, as if they were pixels in [0, 1]
    clf, x = SmallClassifier(10), torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(0))
    images = {"samples": x, "real": x, argument: scale(x)}
    with pytest.raises(ValueError, match=rf"{argument} must be pixels in \[0, 1\].*{found}"):
        sample_quality(clf, images["samples"], images["real"])
    if argument == "samples":
        with pytest.raises(ValueError, match=rf"samples must be pixels in \[0, 1\].*{found}"):
            label_agreement(clf, images["samples"], torch.zeros(6).long())


def test_class_coverage_and_label_agreement_follow_their_definitions():
    cov = class_coverage(torch.tensor([0, 0, 1, 3]), 4)
    torch.testing.assert_close(cov.histogram, torch.tensor([0.5, 0.25, 0.0, 0.25]).double())
    assert cov.covered == 3
    assert math.isclose(cov.kl_to_uniform, 0.5 * math.log(2) + 0.5 * math.log(1), abs_tol=1e-12)
    torch.manual_seed(0)
    clf = SmallClassifier(10)
    x = torch.rand(40, 1, 28, 28)
    own = clf(x).argmax(-1)
    wrong = (own + 1) % 10
    share, se = label_agreement(clf, x, torch.cat([own[:30], wrong[30:]]))
    assert share == 0.75 and math.isclose(se, math.sqrt(0.75 * 0.25 / 40))
    with pytest.raises(ValueError, match="one label per sample"):
        label_agreement(clf, x, own[:5])


def _scores(device: str) -> tuple[float, float, float, int]:
    torch.manual_seed(0)
    clf = SmallClassifier(10)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(200, 1, 28, 28, generator=g)
    other = torch.rand(200, 1, 28, 28, generator=g)
    shifted = (other * 0.3).to(device)
    same = sample_quality(clf, other.to(device), real, batch_size=64)
    far = sample_quality(clf, shifted, real, batch_size=64)
    assert next(clf.parameters()).device.type == torch.device(device).type
    return same.frechet, far.frechet, far.confidence, far.classes_covered


def test_sample_quality_separates_real_from_shifted_images():
    same, far, confidence, covered = _scores("cpu")
    assert same < far / 10  # two halves of one distribution against a darkened copy
    assert 0.1 <= confidence <= 1 and 1 <= covered <= 10


@pytest.mark.requires_cuda
def test_sample_quality_runs_on_the_samples_device():
    cpu, cuda = _scores("cpu"), _scores("cuda")
    for a, b in zip(cpu, cuda):
        assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4), (cpu, cuda)


def test_the_diffusion_names_still_import():
    from pyro_gen.diffusion import quality

    assert quality.frechet_distance is frechet_distance
    assert quality.sample_quality is sample_quality


def test_training_a_classifier_leaves_the_cuda_generators_alone(monkeypatch):
    """Its initial weights come from the CPU generator under fork_rng, which restores only the
    CPU's; torch.manual_seed would also reseed every CUDA generator of the caller."""
    from pyro_gen.metrics import train_classifier

    reseeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    x, y = torch.rand(32, 8, 8), torch.randint(0, 3, (32,))
    untrained = [train_classifier(x, y, epochs=0).state_dict() for _ in range(2)]
    assert reseeded == []
    # the seed still fixes the initial weights
    assert all(torch.equal(a, b) for a, b in zip(*(s.values() for s in untrained)))
