"""mode_coverage on a mixture the user defines as a plain Pyro model and draws with
pyro.infer.Predictive: the counts are checked against the component each point was drawn
from (the model's own "k" site) and its distance to that mode, computed by hand; points
placed exactly on modes at an offset of 1e4 are all captured; the eight-Gaussian toy data
reach the 2D chi-square rate 1 - exp(-9/2)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from pyro_gen.data.toys import load_toy
from pyro_gen.metrics import mode_coverage, ring_modes, sample_modes

CENTERS = ring_modes(6, radius=3.0)
STD = 0.05


def mixture(n: int = 40) -> None:
    """The user's model: an equal-weight mixture of isotropic Gaussians at CENTERS."""
    with pyro.plate("data", n):
        k = pyro.sample("k", dist.Categorical(logits=torch.zeros(len(CENTERS))))
        pyro.sample("x", dist.Normal(CENTERS[k], STD).to_event(1))


def _by_hand(x: torch.Tensor, k: torch.Tensor, n_sigma: float = 3.0) -> torch.Tensor:
    """High-quality points per mode, each point taken at the mode it was drawn from (the
    modes are 60 std apart, so that is also its nearest)."""
    good = (x - CENTERS[k]).norm(dim=-1) <= n_sigma * STD
    return torch.bincount(k[good], minlength=len(CENTERS))


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_draws_are_counted_at_the_modes_they_came_from(parallel):
    pyro.set_rng_seed(0)
    draws = Predictive(mixture, num_samples=25, parallel=parallel, return_sites=["k", "x"])()
    x, k = draws["x"], draws["k"]
    assert x.shape == (25, 40, 2)  # Predictive's leading num_samples dim
    cov = mode_coverage(x, CENTERS, STD, min_count=100)
    expected = _by_hand(x.reshape(-1, 2), k.reshape(-1))
    assert torch.equal(cov.counts, expected)
    assert cov.high_quality == int(expected.sum()) / 1000
    assert cov.modes == int((expected >= 100).sum())
    # a dict of sites (Predictive's output itself) is named, not failed on
    with pytest.raises(TypeError, match=r"dict with sites \['k', 'x'\].*samples\['x'\]"):
        mode_coverage(draws, CENTERS, STD)


def test_points_on_the_modes_far_from_the_origin_are_all_captured():
    # float32 centres at 1e4: cdist's |x|^2 + |c|^2 - 2 x.c lost the 0.05 scale and
    # captured 2 of 8 modes with every point lying exactly on one
    centers = ring_modes() + 1e4
    exact = centers.repeat(30, 1)
    cov = mode_coverage(exact, centers, STD)
    assert (cov.modes, cov.high_quality) == (8, 1.0)
    assert torch.equal(cov.counts, torch.full((8,), 30))
    # 2.5 std off every mode is inside the 3-std ball, 3.5 std outside, at any offset
    off = torch.tensor([2.5 * STD, 0.0])
    assert mode_coverage(exact + off, centers, STD).high_quality == 1.0
    assert mode_coverage(exact + 1.4 * off, centers, STD).high_quality == 0.0


def test_integer_centres_and_float64_samples_are_the_same_mixture():
    pyro.set_rng_seed(1)
    x = Predictive(mixture, num_samples=5)()["x"]
    grid = torch.tensor([[0, 0], [3, 0], [0, 3]])  # a user's integer grid
    as_float = mode_coverage(x, grid.float(), 1.0, min_count=1)
    as_int = mode_coverage(x.double(), grid, 1.0, min_count=1)
    assert torch.equal(as_int.counts, as_float.counts) and as_int.modes == as_float.modes


def test_the_eight_gaussian_toy_reaches_the_chi_square_rate():
    x, _ = load_toy("eight_gaussians", num_samples=20_000)
    angle = torch.arange(8) * (2 * math.pi / 8)
    centers = 2 * math.sqrt(2) * torch.stack([angle.cos(), angle.sin()], -1)
    cov = mode_coverage(x, centers, 0.5 / math.sqrt(2))
    # P(|x - c| <= 3 std) for a 2D Gaussian, binomial sd ~ 0.0007 (the modes overlap by
    # less than 1e-6 at 3 std)
    assert cov.modes == 8 and abs(cov.high_quality - (1 - math.exp(-4.5))) < 0.003


def test_bad_mixtures_and_samples_get_one_clear_error():
    with pytest.raises(ValueError, match=r"K >= 1 .* got \(5, 2\) and \(0, 2\)"):
        mode_coverage(torch.zeros(5, 2), torch.zeros(0, 2), STD)
    with pytest.raises(ValueError, match=r"share their last dim D, got \(5, 3\)"):
        mode_coverage(torch.zeros(5, 3), CENTERS, STD)
    with pytest.raises(ValueError, match="at least one sample"):
        mode_coverage(torch.zeros(4, 0, 2), CENTERS, STD)  # Predictive of an empty batch
    diverged = torch.zeros(3, 4, 2)
    diverged[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match="1 of 12 samples hold NaN"):
        mode_coverage(diverged, CENTERS, STD)


def test_the_global_rng_is_left_alone():
    x = CENTERS.repeat(3, 1)
    state = torch.get_rng_state()
    mode_coverage(x, CENTERS, STD, min_count=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_modes_draws_around_a_users_integer_grid():
    # an integer grid failed inside randn; it is the float grid, point for point
    grid = torch.tensor([[0, 0], [3, 0], [0, 3]])
    as_int = sample_modes(grid, 0.1, 50, torch.Generator().manual_seed(0))
    as_float = sample_modes(grid.float(), 0.1, 50, torch.Generator().manual_seed(0))
    assert as_int.is_floating_point() and torch.equal(as_int, as_float)
