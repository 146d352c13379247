"""Sample quality of MNIST-like images scored by a trained classifier: the Frechet distance
of its features, how the predicted classes cover the label set, and, for conditional
models, how often the classifier agrees with the requested label.

Everything runs on the samples' device; the classifier is moved there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.metrics.frechet import frechet_distance


@dataclass(frozen=True)
class ClassCoverage:
    """What :func:`class_coverage` measured.

    Attributes:
        histogram: share of samples predicted in each class, shape ``(num_classes,)``.
        covered: classes predicted for at least one sample.
        kl_to_uniform: :math:`\\mathrm{KL}(h \\| \\mathcal{U})= \\sum_k h_k \\log(K h_k)`, in
            nats: 0 when every class is equally frequent, :math:`\\log K` when one class
            takes every sample (mode dropping raises it).
    """

    histogram: torch.Tensor
    covered: int
    kl_to_uniform: float


def class_coverage(predicted: torch.Tensor, num_classes: int) -> ClassCoverage:
    """Histogram of predicted classes, classes covered and its KL to the uniform.

    Example:
        >>> cov = class_coverage(torch.tensor([0, 0, 0, 0]), 10)  # one class only
        >>> cov.covered, round(cov.kl_to_uniform, 4) == round(math.log(10), 4)
        (1, True)
    """
    if predicted.dim() != 1 or predicted.numel() == 0:
        raise ValueError(f"predicted must be a non-empty 1-d tensor, got {tuple(predicted.shape)}")
    # a class outside [0, num_classes) lengthened the histogram (and its KL) without a word,
    # and a float was truncated to a class
    if predicted.is_floating_point() or predicted.is_complex():
        raise ValueError(
            f"predicted must hold integer class indices, got dtype {predicted.dtype} "
            "(pass probabilities.argmax(-1))"
        )
    if int(predicted.min()) < 0 or int(predicted.max()) >= num_classes:
        raise ValueError(
            f"predicted classes must lie in [0, {num_classes}) for num_classes={num_classes}, "
            f"got values from {int(predicted.min())} to {int(predicted.max())}"
        )
    hist = predicted.long().bincount(minlength=num_classes).double() / predicted.numel()
    kl = (hist * (hist * num_classes).clamp(min=1e-300).log()).sum()
    return ClassCoverage(hist, int((hist > 0).sum()), float(kl))


#: Slack on [0, 1] for rounding (a sigmoid's 1 + 1 ulp), far below any other pixel scale.
_RANGE_SLACK = 1e-6


def _check_unit_interval(images: torch.Tensor, name: str) -> None:
    """Refuses images that are not pixels in [0, 1], saying what range was found."""
    # uint8 pixels (0..255) failed inside the first conv layer with torch's "Input type ...
    # and bias type ... should be the same"
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be floating-point pixels in [0, 1], got dtype {images.dtype} "
            "(divide integer pixels by their maximum, e.g. x / 255)"
        )
    if images.numel() == 0:
        return
    # [-1, 1] images (a tanh generator, a diffusion model's space) and 0..255 floats were
    # scored silently: the classifier, trained on [0, 1], gave meaningless features
    if not bool(torch.isfinite(images).all()):
        raise ValueError(
            f"{name} must be pixels in [0, 1], found NaN or infinite values (a diverged "
            "model's samples?): drop or fix them before scoring"
        )
    low, high = float(images.min()), float(images.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ValueError(
            f"{name} must be pixels in [0, 1], found values from {low:.4g} to {high:.4g}: "
            "map [-1, 1] images with (x + 1) / 2, divide 0..255 pixels by 255, or clamp "
            "samples that overshoot with x.clamp(0, 1)"
        )


@torch.no_grad()
def _classify(
    clf: nn.Module, images: torch.Tensor, batch_size: int, name: str = "images"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and class probabilities, in batches (a conv net on 10,000 images at once
    would hold gigabytes of activations)."""
    _check_unit_interval(images, name)
    dtype = next(clf.parameters()).dtype
    images = images.to(dtype)
    feats, probs = [], []
    for chunk in images.split(batch_size):
        f = clf.features(chunk)
        feats.append(f)
        probs.append(F.softmax(clf.head(f), -1))
    return torch.cat(feats), torch.cat(probs)


def _on(clf: nn.Module, device: torch.device) -> nn.Module:
    return clf.to(device).eval()


def label_agreement(
    clf: nn.Module, samples: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000
) -> tuple[float, float]:
    """Share of conditional samples the classifier assigns to the label they were generated
    for, with its binomial standard error.

    Example:
        >>> from pyro_gen.metrics.classifier import SmallClassifier
        >>> clf = SmallClassifier(10)
        >>> x = torch.rand(6, 1, 28, 28)
        >>> own = clf(x).argmax(-1)
        >>> label_agreement(clf, x, own)
        (1.0, 0.0)
    """
    if labels.shape != samples.shape[:1]:
        raise ValueError(
            f"labels must hold one label per sample: {samples.shape[0]} samples, labels of "
            f"shape {tuple(labels.shape)}"
        )
    if samples.shape[0] == 0:
        raise ValueError("label_agreement needs at least one sample, got none")
    clf = _on(clf, samples.device)
    _, probs = _classify(clf, samples, batch_size, "samples")
    hit = (probs.argmax(-1) == labels.to(samples.device)).double()
    share = float(hit.mean())
    return share, math.sqrt(share * (1 - share) / len(hit))


@dataclass
class QualityScore:
    """What :func:`sample_quality` measured."""

    frechet: float  #: Frechet distance between classifier features of samples and real data
    confidence: float  #: mean max class probability on samples (sharp digits score high)
    class_kl: float  #: KL(class histogram of samples || uniform): mode dropping raises it
    real_accuracy: float  #: classifier accuracy on the real held-out images (sanity check)
    classes_covered: int  #: classes predicted for at least one sample


def sample_quality(
    clf: nn.Module,
    samples: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor | None = None,
    *,
    batch_size: int = 1000,
) -> QualityScore:
    """Scores samples against real held-out images with a trained classifier (for example
    :func:`~pyro_gen.metrics.train_classifier`), on the samples' device.

    Unconditional samples have no labels, so "accuracy on samples" is measured by the
    classifier's confidence on them and by how evenly they spread over the classes; the
    classifier's own accuracy on ``real`` (when labels are given) shows the features mean
    something. Compare Frechet distances only at equal sample counts (the estimate is
    biased upward at small counts): the distance between two sets of real images of the
    same size is the floor. Not comparable to Inception FID.

    Args:
        clf: a classifier with ``features(x)`` and ``head(features)`` (moved to the
            samples' device, in eval mode).
        samples: generated images in [0, 1], ``(N, 1, H, W)`` or ``(N, H, W)``.
        real: real images, same layout and range.
        real_labels: the real images' labels, for the classifier's accuracy.
        batch_size: images per classifier call.

    Example:
        >>> from pyro_gen.metrics.classifier import SmallClassifier
        >>> q = sample_quality(SmallClassifier(10), torch.rand(50, 28, 28), torch.rand(50, 28, 28))
        >>> 1 <= q.classes_covered <= 10 and q.frechet >= 0
        True

    Raises:
        ValueError: images that are not floating-point pixels in [0, 1] (the range found
            is named), or labels of another length than the real images.
    """
    if samples.shape[0] < 2 or real.shape[0] < 2:  # the Frechet distance's covariances
        counts = f"{samples.shape[0]} sample(s) and {real.shape[0]} real image(s)"
        raise ValueError(
            f"sample_quality needs at least 2 samples and 2 real images, got {counts}: the "
            "Frechet distance compares the covariances of their features"
        )
    if real_labels is not None and real_labels.shape != real.shape[:1]:
        raise ValueError(
            f"real_labels must hold one label per real image: {real.shape[0]} images, labels "
            f"of shape {tuple(real_labels.shape)}"
        )
    device = samples.device
    clf = _on(clf, device)
    fs, probs = _classify(clf, samples, batch_size, "samples")
    fr, real_probs = _classify(clf, real.to(device), batch_size, "real")
    coverage = class_coverage(probs.argmax(-1), probs.shape[-1])
    acc = float("nan")
    if real_labels is not None:
        acc = float((real_probs.argmax(-1) == real_labels.to(device)).double().mean())
    return QualityScore(
        frechet=frechet_distance(fs, fr),
        confidence=float(probs.max(-1).values.mean()),
        class_kl=coverage.kl_to_uniform,
        real_accuracy=acc,
        classes_covered=coverage.covered,
    )
