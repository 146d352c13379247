"""The metrics on layouts that read two ways: Predictive draws whose num_samples equals the
number of labels, channels-last colour samples against a user's channels-first classifier;
and on images, labels, points and features the user holds as numpy arrays. The first two
were scored without a word as other images than the user's (now refused with the reshape
to make); numpy arrays failed deep inside each metric (now scored as their tensors)."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Predictive
from torch import nn

from pyro_gen.metrics import (
    SmallClassifier,
    class_coverage,
    frechet_distance,
    label_agreement,
    mode_coverage,
    ring_modes,
    sample_modes,
    sample_quality,
    train_classifier,
)

Z, K = 3, 10  # latent dim, labels (one image per digit)


def cvae_model(decoder: nn.Module, y: torch.Tensor) -> None:
    """A user's conditional Bernoulli decoder: one image per requested label."""
    pyro.module("decoder", decoder)
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))
        probs = decoder(torch.cat([z, F.one_hot(y, K).float()], -1))
        pyro.sample("x", dist.Bernoulli(probs).to_event(1))


class ForwardOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_as_many_predictive_draws_as_labels_is_refused_then_counted_by_hand():
    """num_samples=10 draws for labels 0..9 give (10, 10, 784): it was read as 10 images of
    10 x 784 pixels (the classifier, flattening, saw 7840 inputs per image only by luck of
    its layout; a conv net scored it as one tall image)."""
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(Z + K, 784), nn.Sigmoid())
    y = torch.arange(K)
    pyro.set_rng_seed(0)
    x = Predictive(cvae_model, num_samples=K, return_sites=["x"])(decoder, y)["x"]
    assert x.shape == (K, K, 784)
    clf = SmallClassifier(K)
    with pytest.raises(ValueError, match=r"read two ways.*pass draws=True .* draws=False"):
        label_agreement(clf, x, y)
    # what the message says to do, against a hand count of the classifier's own predictions
    flat, labels = x.reshape(-1, *x.shape[2:]), y.repeat(K)
    with torch.no_grad():
        own = clf(flat).argmax(-1)
    hits = int((own == labels).sum())
    share, se = label_agreement(clf, flat, labels)
    assert share == hits / (K * K)
    assert math.isclose(se, math.sqrt(share * (1 - share) / (K * K)))
    assert label_agreement(clf, x, y, draws=True) == (share, se)
    # draws=False: ten (10, 784) images, one per label, as a user's own (N, H, W) images
    # with H == N are; the classifier scores them as such
    with torch.no_grad():
        tall = clf(x).argmax(-1)
    assert label_agreement(clf, x, y, draws=False)[0] == float((tall == y).double().mean())
    with pytest.raises(ValueError, match=r"after Predictive's num_samples dim \(draws=True\)"):
        label_agreement(clf, x[0], y, draws=True)
    # the unambiguous readings still work: fewer draws than labels, one image per label
    assert label_agreement(clf, x[:3], y)[0] == float((own[:30] == labels[:30]).double().mean())
    assert label_agreement(clf, x[0], y)[0] == float((own[:K] == y).double().mean())


def _scores(q) -> tuple[float, float, float, int]:
    """Every score but the real accuracy (NaN without real labels, and NaN != NaN)."""
    return q.frechet, q.confidence, q.class_kl, q.classes_covered


class RGBClassifier(nn.Module):
    """A user's own CIFAR-style classifier: (B, 3, H, W) in, features and head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(16, K)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_channels_last_colour_samples_are_refused_not_scrambled():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(12, 3, 8, 8, generator=gen)
    samples = torch.rand(10, 3, 8, 8, generator=gen)
    clf = RGBClassifier()
    expected = sample_quality(clf, samples, real)
    with torch.no_grad():  # by hand from the classifier's own layers
        fs, fr = clf.features(samples), clf.features(real)
    assert math.isclose(expected.frechet, frechet_distance(fs, fr), rel_tol=1e-12)
    channels_last = samples.permute(0, 2, 3, 1)  # (N, H, W, 3), the PIL / numpy layout
    with pytest.raises(ValueError, match=r"scramble.*channels-last: x.permute\(0, 3, 1, 2\)"):
        sample_quality(clf, channels_last, real)
    assert _scores(sample_quality(clf, channels_last.permute(0, 3, 1, 2), real)) == _scores(
        expected
    )
    # Predictive's leading draws and a flat (N, 3 * 8 * 8) layout stay the same images
    assert _scores(sample_quality(clf, samples.reshape(2, 5, 3, 8, 8), real)) == _scores(expected)
    assert _scores(sample_quality(clf, samples.reshape(10, -1), real)) == _scores(expected)


def test_grayscale_channels_last_samples_are_the_same_images():
    gen = torch.Generator().manual_seed(2)
    real = torch.rand(8, 1, 28, 28, generator=gen)
    samples = torch.rand(6, 1, 28, 28, generator=gen)
    clf = SmallClassifier(K)
    expected = sample_quality(clf, samples, real)
    assert _scores(sample_quality(clf, samples.permute(0, 2, 3, 1), real)) == _scores(
        expected
    )  # (N, 28, 28, 1)
    assert _scores(sample_quality(clf, samples[:, 0], real)) == _scores(expected)  # (N, 28, 28)


def test_numpy_features_give_the_closed_form_distance():
    """Features a user saved with numpy: diagonal covariances with exact sample moments, so
    the distance is |m1 - m2|^2 + sum_j (sqrt(v1_j) - sqrt(v2_j))^2."""
    # rows +-1 on each axis in turn: sample mean 0, sample covariance (2 / (2D - 1)) I
    d = 3
    unit = np.concatenate([np.eye(d), -np.eye(d)])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([3.0, -1.0, 2.0])
    scale = math.sqrt((2 * d - 1) / 2)
    f1, f2 = m1 + scale * unit * np.sqrt(v1), m2 + scale * unit * np.sqrt(v2)
    np.testing.assert_allclose(np.cov(f1.T), np.diag(v1), atol=1e-12)
    expected = float(((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())
    assert math.isclose(frechet_distance(f1, f2), expected, rel_tol=1e-12)
    assert frechet_distance(f1, torch.from_numpy(f2)) == frechet_distance(f1, f2)
    with pytest.raises(
        TypeError, match=r"f2 must be features \(N, D\), a tensor or numpy array, got list"
    ):
        frechet_distance(f1, f2.tolist())
    with pytest.raises(TypeError, match=r"f1 must be features.*dict with sites \['x'\]"):
        frechet_distance({"x": torch.from_numpy(f1)}, f2)


def test_numpy_points_and_modes_give_the_exact_counts():
    """Constructed samples: 25 on each of modes 0..4, 10 on mode 5 (too few to count), and 5
    far from every mode; numpy arrays (a JAX or numpy sampler's output) give the same."""
    centers = ring_modes()
    on = torch.cat([centers[:5].repeat_interleave(25, 0), centers[5:6].repeat(10, 1)])
    samples = torch.cat([on, torch.full((5, 2), 10.0)])
    cov = mode_coverage(samples.numpy(), centers.numpy().astype(np.float64), 0.02)
    assert (cov.modes, cov.num_modes, cov.high_quality) == (5, 8, 135 / 140)
    assert cov.counts.tolist() == [25] * 5 + [10, 0, 0]
    torch.testing.assert_close(cov.counts, mode_coverage(samples, centers, 0.02).counts)
    gen = torch.Generator().manual_seed(0)
    drawn = sample_modes(centers.numpy(), 0.02, 50, gen)
    assert torch.equal(drawn, sample_modes(centers, 0.02, 50, torch.Generator().manual_seed(0)))
    with pytest.raises(TypeError, match=r"centers must be the modes' means \(K, D\).*list"):
        mode_coverage(samples, centers.tolist(), 0.02)


def test_numpy_images_labels_and_classes_score_as_their_tensors():
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(40, 8, 8, generator=gen), torch.arange(40) % 3
    clf = train_classifier(x.numpy(), y.numpy(), epochs=1)
    same = train_classifier(x, y, epochs=1)
    for a, b in zip(clf.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        own = clf(x).argmax(-1)
    assert label_agreement(clf, x.numpy(), y.numpy())[0] == float((own == y).double().mean())
    q = sample_quality(clf, x[:20].numpy(), x[20:].numpy(), y[20:].numpy())
    assert q.real_accuracy == float((own[20:] == y[20:]).double().mean())
    assert _scores(q) == _scores(sample_quality(clf, x[:20], x[20:], y[20:]))
    cov = class_coverage(np.array([0, 0, 1, 2]), 4)  # 1/2, 1/4, 1/4, 0
    assert cov.histogram.tolist() == [0.5, 0.25, 0.25, 0.0] and cov.covered == 3
    assert math.isclose(cov.kl_to_uniform, 0.5 * math.log(2) + 0.5 * math.log(1), abs_tol=0)


def test_a_classifier_trained_on_a_generators_output_leaves_the_generator_alone():
    """train_classifier(generator(z), y) without a detach: the first batch's backward wrote
    gradients into the user's generator, the second failed with "Trying to backward through
    the graph a second time"."""
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(3, 64), nn.Sigmoid())
    x = generator(torch.randn(40, 3)).reshape(40, 8, 8)
    y = torch.arange(40) % 3
    clf = train_classifier(x, y, epochs=2, batch_size=8)
    assert all(p.grad is None for p in generator.parameters())
    same = train_classifier(x.detach(), y, epochs=2, batch_size=8)
    for a, b in zip(clf.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)


class PooledFeatures(nn.Module):
    """A user's conv classifier whose penultimate layer is a pooled map (B, C, 1, 1)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv, self.pool, self.fc = nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f.flatten(1))


def test_a_pooled_feature_map_is_one_feature_row_per_image():
    gen = torch.Generator().manual_seed(6)
    samples, real = torch.rand(10, 1, 8, 8, generator=gen), torch.rand(12, 1, 8, 8, generator=gen)
    clf = PooledFeatures()
    q = sample_quality(clf, samples, real)
    with torch.no_grad():
        fs, fr = clf.features(samples).flatten(1), clf.features(real).flatten(1)
        probs = F.softmax(clf.head(clf.features(samples)), -1)
    assert q.frechet == frechet_distance(fs, fr)
    assert q.confidence == float(probs.max(-1).values.mean())


def test_one_hot_and_one_based_labels_are_refused_not_scored():
    """Labels from OneHotCategorical (a semi-supervised VAE's y) against 10x10 images read
    as ten 0/1 labels per image; labels 1..10 for a 10-class classifier were never agreed
    with. Both lowered the agreement without a word."""
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(6, 10, 10, generator=gen)
    clf = SmallClassifier(K)
    y = torch.arange(6)
    one_hot = dist.OneHotCategorical(probs=torch.ones(K)).sample((6,))
    with pytest.raises(ValueError, match=r"integer class indices.*labels.argmax\(-1\)"):
        label_agreement(clf, x, one_hot)
    with pytest.raises(ValueError, match=r"in \[0, 10\).*from 1 to 10.*labels - 1"):
        label_agreement(clf, x, torch.tensor([1, 2, 3, 4, 5, 10]))
    with torch.no_grad():
        own = clf(x).argmax(-1)
    assert label_agreement(clf, x, y)[0] == float((own == y).double().mean())
    assert label_agreement(clf, x, own)[0] == 1.0


def test_channels_last_grayscale_images_train_and_score_as_channels_first():
    """(N, 28, 28, 1) is how numpy, PIL and TensorFlow datasets hold grayscale images:
    train_classifier and the real images of sample_quality refused them."""
    gen = torch.Generator().manual_seed(8)
    x, y = torch.rand(30, 8, 8, generator=gen), torch.arange(30) % 3
    last = x[..., None]  # (N, 8, 8, 1)
    clf = train_classifier(last, y, epochs=1)
    for a, b in zip(clf.parameters(), train_classifier(x, y, epochs=1).parameters(), strict=True):
        assert torch.equal(a, b)
    expected = sample_quality(clf, x[:15], x[15:], y[15:])
    got = sample_quality(clf, last[:15], last[15:], y[15:])
    assert _scores(got) == _scores(expected) and got.real_accuracy == expected.real_accuracy


def test_a_zero_radius_is_refused_not_read_as_mode_collapse():
    centers = ring_modes()
    on_modes = centers.repeat(20, 1)
    assert mode_coverage(on_modes, centers, 0.02).modes == 8
    for n_sigma in (0.0, -3.0):
        with pytest.raises(ValueError, match=r"n_sigma must be positive.*got"):
            mode_coverage(on_modes, centers, 0.02, n_sigma=n_sigma)
