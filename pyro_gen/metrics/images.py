"""Sample quality of MNIST-like images scored by a trained classifier: the Frechet distance
of its features, how the predicted classes cover the label set, and, for conditional
models, how often the classifier agrees with the requested label.

Everything runs on the samples' device; the classifier is moved there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyro_gen.metrics.frechet import frechet_distance
from pyro_gen.metrics.inputs import as_tensor, results_equal
from pyro_gen.metrics.pixels import check_unit_interval, images_like, labelled_images
from pyro_gen.nn.arguments import check_count


@dataclass(frozen=True, eq=False)
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

    # compares the tensor fields by value (the generated == fails on them)
    __eq__ = results_equal


def class_coverage(predicted: torch.Tensor, num_classes: int) -> ClassCoverage:
    """Histogram of predicted classes, classes covered and its KL to the uniform; every
    element of ``predicted`` (of any shape, e.g. ``(num_samples, N)``) is one prediction.

    Example:
        >>> cov = class_coverage(torch.tensor([0, 0, 0, 0]), 10)  # one class only
        >>> cov.covered, round(cov.kl_to_uniform, 4) == round(math.log(10), 4)
        (1, True)
    """
    predicted = as_tensor(predicted, "predicted", "class indices")
    # num_classes=10.0 failed inside bincount ("argument 'minlength' must be int")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive whole number, got {num_classes!r}")
    num_classes = int(num_classes)
    if predicted.numel() == 0:
        shape = tuple(predicted.shape)
        raise ValueError(f"predicted must be a non-empty tensor of classes, got {shape!r}")
    # Predictive's (num_samples, N) classes are all predictions: every element is one
    predicted = predicted.reshape(-1)
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


@torch.no_grad()
def _classify(
    clf: nn.Module, images: torch.Tensor, batch_size: int, name: str, *, features: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Features (when asked for) and class probabilities, in batches (a conv net on 10,000
    images at once would hold gigabytes of activations). A classifier with only
    ``forward`` gives probabilities from its logits."""
    layered = callable(getattr(clf, "features", None)) and callable(getattr(clf, "head", None))
    # a user's own classifier without features/head failed with "'Net' object has no
    # attribute 'features'" from in here
    if features and not layered:
        raise TypeError(
            f"clf ({type(clf).__name__}) needs features(x), its penultimate layer, and "
            "head(features), its logits, for the Frechet distance: add both methods to it "
            "(forward(x) alone is enough for label_agreement)"
        )
    batch_size = check_count("batch_size", batch_size)
    images = check_unit_interval(images, name)
    param = next(clf.parameters(), None)
    images = images.to(param.dtype if param is not None else images.dtype)
    feats, probs = [], []
    for chunk in images.split(batch_size):
        if layered:
            f = clf.features(chunk)
            # a conv net's pooled map (B, C, 1, 1) failed in frechet_distance with "features
            # must be matrices (N, D)", which the caller never passed: one row per image
            feats.append(f.reshape(f.shape[0], -1))
            probs.append(F.softmax(clf.head(f), -1))
        else:
            probs.append(F.softmax(clf(chunk), -1))
    return (torch.cat(feats) if feats else None), torch.cat(probs)


@contextlib.contextmanager
def _scoring(clf: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``clf`` on ``device`` in eval mode (dropout off, batch-norm statistics frozen), each
    submodule's train/eval mode restored afterwards: a user's classifier in the middle of
    its own training loop was left in eval mode."""
    modes = [(m, m.training) for m in clf.modules()]
    try:
        yield clf.to(device).eval()
    finally:
        for m, training in modes:
            m.training = training


def _check_classes(labels: torch.Tensor, num_classes: int, name: str) -> None:
    """1-based labels (1..10 for a 10-class classifier) lowered the share (or the accuracy)
    without a word: a class the classifier does not have is never agreed with."""
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{name} must be integer class indices, got dtype {labels.dtype} (one-hot labels: "
            "pass labels.argmax(-1))"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"{name} must be classes of clf, in [0, {num_classes}) for its {num_classes} "
            f"outputs, got values from {int(labels.min())} to {int(labels.max())} (shift "
            f"1-based labels with {name} - 1)"
        )


def label_agreement(
    clf: nn.Module,
    samples: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 1000,
    draws: bool | None = None,
) -> tuple[float, float]:
    """Share of conditional samples the classifier assigns to the label they were generated
    for, with its binomial standard error.

    ``labels`` has the samples' leading shape (``(N,)`` for ``(N, ...)`` images), or the
    samples carry one more leading dim (``pyro.infer.Predictive``'s ``num_samples``, drawn
    for the same labels). Samples that fit both, such as ``num_samples=10`` draws
    ``(10, 10, 784)`` for the labels ``0..9``, need ``draws=True`` (Predictive's draws) or
    ``draws=False`` (one image per label); ``None`` refuses them. ``clf`` needs only
    ``forward(x)`` giving logits; it is moved to the samples' device and scored in eval
    mode, its train/eval mode restored.

    Example:
        >>> from pyro_gen.metrics.classifier import SmallClassifier
        >>> clf = SmallClassifier(10)
        >>> x = torch.rand(6, 1, 28, 28)
        >>> own = clf(x).argmax(-1)
        >>> label_agreement(clf, x, own)
        (1.0, 0.0)
    """
    samples, labels = labelled_images(samples, labels, draws)
    if samples.shape[0] == 0:
        raise ValueError("label_agreement needs at least one sample, got none")
    with _scoring(clf, samples.device) as clf:
        _, probs = _classify(clf, samples, batch_size, "samples", features=False)
    _check_classes(labels, probs.shape[-1], "labels")
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
        clf: a classifier with ``features(x)`` (any shape ``(B, ...)``, e.g. a pooled
            conv map, flattened to one row per image) and ``head(features)`` (moved to the
            samples' device, scored in eval mode, its train/eval mode restored).
        samples: generated images in [0, 1], ``(N, 1, H, W)``, ``(N, H, W)`` or
            ``(N, H * W)``; leading dims (``pyro.infer.Predictive``'s ``num_samples``) are
            more samples, and a layout other than ``real``'s is reshaped to it.
        real: real images ``(M, ...)`` in [0, 1], in the layout ``clf`` takes.
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
    real = images_like(real, None, "real")
    samples = images_like(samples, real.shape[1:], "samples")
    if samples.shape[0] < 2 or real.shape[0] < 2:  # the Frechet distance's covariances
        counts = f"{samples.shape[0]} sample(s) and {real.shape[0]} real image(s)"
        raise ValueError(
            f"sample_quality needs at least 2 samples and 2 real images, got {counts}: the "
            "Frechet distance compares the covariances of their features"
        )
    if real_labels is not None:
        real_labels = as_tensor(real_labels, "real_labels", "one class index per real image")
    if real_labels is not None and real_labels.shape != real.shape[:1]:
        raise ValueError(
            f"real_labels must hold one label per real image: {real.shape[0]} images, labels "
            f"of shape {tuple(real_labels.shape)}"
        )
    device = samples.device
    with _scoring(clf, device) as clf:
        fs, probs = _classify(clf, samples, batch_size, "samples")
        fr, real_probs = _classify(clf, real.to(device), batch_size, "real")
    coverage = class_coverage(probs.argmax(-1), probs.shape[-1])
    acc = float("nan")
    if real_labels is not None:
        # 1-based or float labels gave an accuracy near 0 (or a truncated class) silently
        _check_classes(real_labels, real_probs.shape[-1], "real_labels")
        acc = float((real_probs.argmax(-1) == real_labels.to(device)).double().mean())
    return QualityScore(
        frechet=frechet_distance(fs, fr),
        confidence=float(probs.max(-1).values.mean()),
        class_kl=coverage.kl_to_uniform,
        real_accuracy=acc,
        classes_covered=coverage.covered,
    )
