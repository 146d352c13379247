"""``GaussianMixture.entropy()`` raised torch's bare ``NotImplementedError``. A mixture has
no closed-form entropy; the error (still NotImplementedError, the type torch and Pyro raise
for it, so callers that catch it keep working) says so and what to use instead, and the
estimate it recommends is checked against the entropy of well separated components."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen.distributions import GaussianMixture


def test_entropy_says_there_is_no_closed_form_and_what_to_use():
    p = GaussianMixture(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(NotImplementedError, match="no closed-form entropy.*Monte Carlo") as e:
        p.entropy()
    assert "-p.log_prob(p.sample((n,))).mean(0)" in str(e.value)


def test_the_recommended_monte_carlo_estimate_matches_separated_components():
    """Two equal-weight components 40 standard deviations apart: the entropy is one
    component's plus log 2 (the overlap changes it by far less than float64 resolves)."""
    torch.manual_seed(0)
    d, n = 2, 20000
    locs = torch.tensor([[-20.0, 0.0], [20.0, 0.0]], dtype=torch.float64)
    scales = torch.tensor([[1.0, 0.5], [1.0, 0.5]], dtype=torch.float64)
    p = GaussianMixture(torch.zeros(2, dtype=torch.float64), locs, scales)
    exact = 0.5 * d * math.log(2 * math.pi * math.e) + scales[0].log().sum().item() + math.log(2)
    draws = -p.log_prob(p.sample((n,)))
    estimate, stderr = draws.mean(0).item(), (draws.std() / math.sqrt(n)).item()
    assert abs(estimate - exact) < 4 * stderr
