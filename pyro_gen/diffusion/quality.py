"""Sample quality for MNIST-like images, now in :mod:`pyro_gen.metrics` (shared by every
family); these names stay importable from here."""

from __future__ import annotations

from pyro_gen.metrics.classifier import SmallClassifier, train_classifier
from pyro_gen.metrics.frechet import frechet_distance
from pyro_gen.metrics.images import QualityScore, sample_quality

__all__ = [
    "QualityScore",
    "SmallClassifier",
    "frechet_distance",
    "sample_quality",
    "train_classifier",
]
