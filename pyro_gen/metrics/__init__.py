"""Sample-quality measures shared by every model family (imports only ``nn`` and ``data``):
mode coverage on 2D mixtures, and for images a classifier's Frechet distance, class coverage
and label agreement."""

from __future__ import annotations

from pyro_gen.metrics.classifier import SmallClassifier, train_classifier
from pyro_gen.metrics.frechet import frechet_distance
from pyro_gen.metrics.images import (
    ClassCoverage,
    QualityScore,
    class_coverage,
    label_agreement,
    sample_quality,
)
from pyro_gen.metrics.modes import (
    ModeCoverage,
    grid_modes,
    mode_coverage,
    ring_modes,
    sample_modes,
)

__all__ = [
    "ClassCoverage",
    "ModeCoverage",
    "QualityScore",
    "SmallClassifier",
    "class_coverage",
    "frechet_distance",
    "grid_modes",
    "label_agreement",
    "mode_coverage",
    "ring_modes",
    "sample_modes",
    "sample_quality",
    "train_classifier",
]
