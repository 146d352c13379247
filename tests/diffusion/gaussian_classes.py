"""The Gaussian data of the user-program tests of score models and flow matching: per
coordinate N(MU, S^2), or given a label N(MEANS[label], S^2), in float64, where the score,
the velocity field and every marginal are closed forms."""

from __future__ import annotations

import torch

D = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=D)
S = torch.tensor([0.6, 0.3], dtype=D)
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, 3.0]], dtype=D)  # one per label


def assert_each_class_at_its_gaussian(x: torch.Tensor, y: torch.Tensor, slack: float) -> None:
    """Each label's draws have its class mean (5 standard errors, plus ``slack`` for a
    sampler's discretization) and the standard deviation S (within 20%)."""
    for label in range(len(MEANS)):
        got = x[y == label]
        se = S / len(got) ** 0.5
        assert ((got.mean(0) - MEANS[label]).abs() < 5 * se + slack).all(), label
        assert ((got.std(0) / S - 1).abs() < 0.2).all(), label
