"""Mode coverage: real data scores the 3-sigma ceiling; collapse and spread are caught."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen.metrics import grid_modes, mode_coverage, ring_modes, sample_modes


def test_real_data_captures_every_mode_at_the_chi_square_rate():
    g = torch.Generator().manual_seed(0)
    for centers, std in ((grid_modes(), 0.05), (ring_modes(), 0.02)):
        cov = mode_coverage(sample_modes(centers, std, 20_000, g), centers, std)
        assert cov.modes == len(centers)
        # P(|x - c| <= 3 sigma) in 2D is 1 - exp(-9/2); binomial sd ~ 0.0007
        assert abs(cov.high_quality - (1 - math.exp(-4.5))) < 0.003


def test_collapse_and_blur_are_measured():
    g = torch.Generator().manual_seed(0)
    centers = ring_modes()
    half = sample_modes(centers[:4], 0.02, 2500, g)  # four modes dropped
    cov = mode_coverage(half, centers, 0.02)
    assert cov.modes == 4 and cov.counts[4:].sum() == 0
    blurred = sample_modes(centers, 0.2, 2500, g)  # ten times too wide
    cov = mode_coverage(blurred, centers, 0.02)
    # within 0.06 of a mode for sd 0.2: 1 - exp(-0.045) ~ 4.4%
    assert cov.high_quality < 0.07


def test_no_samples_and_a_zero_min_count_are_refused():
    # both read as a result: "0/8 modes, 0.0%" for no samples, and "8/8 modes, 0.0% high
    # quality" for min_count=0 with every sample far from every mode
    with pytest.raises(ValueError, match="at least one sample"):
        mode_coverage(torch.zeros(0, 2), ring_modes(), 0.02)
    with pytest.raises(ValueError, match="min_count must be at least 1"):
        mode_coverage(torch.full((10, 2), 10.0), ring_modes(), 0.02, min_count=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_samples_are_refused(bad):
    # a diverged generator's NaN samples read as "0/8 modes, 0.0% high quality", a mode
    # collapse, where frechet_distance refuses them naming the cause
    samples = torch.zeros(10, 2)
    samples[3] = bad
    with pytest.raises(ValueError, match="1 of 10 samples hold NaN or infinite values"):
        mode_coverage(samples, ring_modes(), 0.02)
