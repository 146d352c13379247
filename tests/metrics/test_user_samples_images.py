"""The image metrics on what a user's own Pyro VAE gives through pyro.infer.Predictive
((num_samples, N, 784) draws, binary or float64 pixels) and on classifiers the user wrote:
every score is checked against the same score computed by hand from the classifier's
features and logits on the images reshaped by hand; the classifier's train/eval modes and
the global RNG are checked to be left as they were; bad input gets one clear error."""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Predictive
from torch import nn

from pyro_gen.data.digits import load_digits
from pyro_gen.metrics import (
    SmallClassifier,
    class_coverage,
    frechet_distance,
    label_agreement,
    sample_quality,
    train_classifier,
)

Z, N, S = 4, 6, 3  # latent dim, data plate, Predictive draws


def _decoder(num_labels: int = 0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(Z + num_labels, 784), nn.Sigmoid())


def vae_model(decoder: nn.Module, x: torch.Tensor | None = None) -> None:
    """A user's Bernoulli VAE model, written with pyro.module and pyro.sample."""
    pyro.module("decoder", decoder)
    with pyro.plate("data", N):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))
        probs = pyro.deterministic("probs", decoder(z), event_dim=1)
        pyro.sample("x", dist.Bernoulli(probs).to_event(1), obs=x)


def cvae_model(decoder: nn.Module, y: torch.Tensor) -> None:
    """The conditional version: labels y (N,) given, one image per label."""
    pyro.module("decoder", decoder)
    with pyro.plate("data", N):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))
        probs = decoder(torch.cat([z, F.one_hot(y, 10).float()], -1))
        pyro.sample("x", dist.Bernoulli(probs).to_event(1))


def _draws(site: str) -> torch.Tensor:
    pyro.set_rng_seed(0)
    return Predictive(vae_model, num_samples=S, return_sites=[site])(_decoder())[site]


def _real(n: int = 20) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _by_hand(clf: nn.Module, samples: torch.Tensor, real: torch.Tensor) -> tuple[float, float]:
    """Frechet distance and confidence from the classifier's own layers."""
    fs, fr = clf.features(samples), clf.features(real)
    return frechet_distance(fs, fr), float(F.softmax(clf.head(fs), -1).max(-1).values.mean())


def test_predictive_draws_are_scored_as_the_images_they_hold():
    probs = _draws("probs")
    assert probs.shape == (S, N, 784)  # Predictive's num_samples dim, then the plate
    torch.manual_seed(0)
    clf, real = SmallClassifier(10).eval(), _real()
    frechet, confidence = _by_hand(clf, probs.reshape(S * N, 1, 28, 28), real)
    for real_layout in (real, real.reshape(20, 784), real.reshape(20, 28, 28)):
        q = sample_quality(clf, probs, real_layout)
        # (S, N, 784) was scored as S images of N x 784 pixels
        assert math.isclose(q.frechet, frechet, rel_tol=1e-6)
        assert math.isclose(q.confidence, confidence, rel_tol=1e-6)


def test_binary_float64_and_boolean_pixels_are_the_same_images():
    x = _draws("x")  # Bernoulli draws: 0.0 and 1.0
    torch.manual_seed(0)
    clf, real = SmallClassifier(10), _real()
    base = sample_quality(clf, x, real)
    for same in (x.double(), x.bool(), x.to(torch.float64).reshape(S * N, 28, 28)):
        q = sample_quality(clf, same, real.double())
        assert math.isclose(q.frechet, base.frechet, rel_tol=1e-5)
        assert q.classes_covered == base.classes_covered
    # a float64 classifier scores float32 images
    double = sample_quality(copy.deepcopy(clf).double(), x, real)
    assert math.isclose(double.frechet, base.frechet, rel_tol=1e-4)


class UsersClassifier(nn.Module):
    """A user's own classifier on flat images, with dropout and batch norm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Sequential(nn.Linear(784, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout())
        self.out = nn.Linear(32, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.out(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_a_users_classifier_keeps_its_modes_and_the_rng_its_state():
    clf = UsersClassifier().train()
    clf.body[1].eval()  # the user froze the batch norm mid-training
    frozen = copy.deepcopy(clf).eval()
    samples = _draws("probs")  # (S, N, 784); the classifier takes (B, 784)
    real = _real().reshape(20, 784)
    state, stats = torch.get_rng_state(), clf.body[1].running_mean.clone()
    q = sample_quality(clf, samples, real)
    assert torch.equal(torch.get_rng_state(), state)  # dropout stayed off: no draws
    assert torch.equal(clf.body[1].running_mean, stats)  # nor batch statistics updated
    # every module's mode as the user left it (all were set to eval for good)
    assert clf.training and clf.body.training and clf.body[3].training
    assert not clf.body[1].training
    frechet, confidence = _by_hand(frozen, samples.reshape(-1, 784), real)
    assert math.isclose(q.frechet, frechet, rel_tol=1e-6)
    assert math.isclose(q.confidence, confidence, rel_tol=1e-6)
    # images in another layout than the classifier's are reshaped to the real images'
    again = sample_quality(clf, samples.reshape(S * N, 1, 28, 28), real)
    assert math.isclose(again.frechet, frechet, rel_tol=1e-6)


class ForwardOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_label_agreement_of_a_conditional_model_against_a_hand_count():
    y = torch.arange(N) % 10
    pyro.set_rng_seed(0)
    x = Predictive(cvae_model, num_samples=S, return_sites=["x"])(_decoder(10), y)["x"]
    assert x.shape == (S, N, 784)
    clf = ForwardOnly()  # only forward(x): enough for an agreement
    with torch.no_grad():
        own = clf(x.reshape(-1, 784)).argmax(-1).reshape(S, N)
    # ask for the classifier's own class in the first 2 draws, another in the last
    requested = torch.cat([own[:2], (own[2:] + 1) % 10])
    share, se = label_agreement(clf, x, requested)
    assert share == 2 / 3 and math.isclose(se, math.sqrt(2 / 3 * 1 / 3 / (S * N)))
    # the labels the model was given, (N,), stand for every draw of Predictive
    hits = int((own == y).sum())
    assert label_agreement(clf, x, y)[0] == hits / (S * N)
    with pytest.raises(TypeError, match=r"ForwardOnly.*needs features\(x\).*head"):
        sample_quality(clf, x, _real())


@pytest.mark.parametrize(
    "samples, error, match",
    [
        ((255 * _real(4)).to(torch.uint8), ValueError, "got dtype torch.uint8.*x / 255"),
        (2 * _real(4) - 1, ValueError, r"values from -0.9\d* .*\(x \+ 1\) / 2"),  # a tanh decoder
        (_real(4).masked_fill(_real(4) > 0.5, math.nan), ValueError, "NaN.*diverged"),
        (_real(1), ValueError, r"at least 2 samples .* got 1 sample\(s\)"),
        (_real(0), ValueError, r"at least 2 samples .* got 0 sample\(s\)"),
        (torch.rand(4, 100), ValueError, r"\(4, 100\) do not end in images .* \(1, 28, 28\)"),
        ({"x": _real(4)}, TypeError, r"dict with sites \['x'\].*samples\['x'\]"),
    ],
    ids=["uint8", "tanh", "nan", "one", "empty", "layout", "dict"],
)
def test_bad_samples_get_one_clear_error(samples, error, match):
    with pytest.raises(error, match=match):
        sample_quality(SmallClassifier(10), samples, _real())


def test_label_agreement_refuses_labels_of_another_shape():
    with pytest.raises(ValueError, match=r"one label per sample: samples of shape \(3, 6, 784\)"):
        label_agreement(ForwardOnly(), torch.rand(3, 6, 784), torch.zeros(5).long())
    with pytest.raises(ValueError, match="one label per sample"):  # one label for all
        label_agreement(ForwardOnly(), torch.rand(3, 784), torch.tensor(1))


def test_train_classifier_on_a_users_images_in_any_layout_and_dtype():
    x, y = load_digits("test")  # uint8 in 0..16, the way the dataset ships
    x, y = x[:64], y[:64]
    with pytest.raises(ValueError, match=r"x must be floating-point pixels.*uint8"):
        train_classifier(x, y, epochs=1)
    with pytest.raises(ValueError, match=r"values from 0 to 16"):
        train_classifier(x.float(), y, epochs=1)
    unit = x / 16
    state = torch.get_rng_state()
    base = train_classifier(unit, y, epochs=1).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    # the same images flattened, in float64 or with a channel dim: the same classifier
    for same in (unit.reshape(-1, 64), unit.double(), unit[:, None]):
        other = train_classifier(same, y, epochs=1).state_dict()
        assert all(torch.equal(base[k], other[k]) for k in base)
    with pytest.raises(ValueError, match="class indices 0, 1, ..., got -1"):
        train_classifier(unit, y - 1, epochs=1)
    with pytest.raises(ValueError, match="at least one image"):
        train_classifier(unit[:0], y[:0], epochs=1)
    with pytest.raises(ValueError, match=r"grayscale .* got shape \(64, 3, 8, 8\)"):
        train_classifier(unit[:, None].expand(-1, 3, -1, -1), y, epochs=1)


def test_class_coverage_of_predictive_classes_against_a_hand_histogram():
    # (num_samples, N) predicted classes were refused as "not 1-d"; each is one prediction
    predicted = torch.tensor([[0, 1, 1], [1, 3, 3]])
    cov = class_coverage(predicted, 4)
    hist = torch.tensor([1, 3, 0, 2], dtype=torch.float64) / 6
    torch.testing.assert_close(cov.histogram, hist)
    kl = sum(h * math.log(4 * h) for h in hist.tolist() if h > 0)
    assert cov.covered == 3 and math.isclose(cov.kl_to_uniform, kl, rel_tol=1e-12)
    with pytest.raises(ValueError, match=r"non-empty tensor of classes, got \(2, 0\)"):
        class_coverage(torch.zeros(2, 0).long(), 4)
