"""2D toy samplers: shapes, seeding, disjoint splits, and the geometry each one promises;
``toy_log_prob`` against closed forms and scipy, on points as users hold them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_gen.data import TOYS, load, toy_log_prob


@pytest.mark.parametrize("name", sorted(TOYS))
def test_shape_dtype_seeding(name: str) -> None:
    x, y = load(name, num_samples=501, seed=3)
    assert x.shape == (501, 2) and x.dtype == torch.float32 and y is None
    assert torch.isfinite(x).all()
    assert x.equal(load(name, num_samples=501, seed=3)[0])
    assert not torch.allclose(x, load(name, num_samples=501, seed=4)[0])
    test = load(name, "test", num_samples=501, seed=3)[0]
    assert not torch.isin(test[:, 0], x[:, 0]).any()  # no point shared with train
    assert x.abs().max() < 6
    assert load(name, num_samples=0)[0].shape == (0, 2)


def test_eight_gaussians_modes() -> None:
    x, _ = load("eight_gaussians", num_samples=4000)
    angles = torch.arange(8) * math.pi / 4
    centers = 2 * math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], -1)
    dist, which = torch.cdist(x, centers).min(-1)
    assert dist.pow(2).mean().sqrt() == pytest.approx(0.5, abs=0.05)  # 2D std 0.354 each
    assert torch.bincount(which, minlength=8).min() > 400


def test_checkerboard_is_on_black_squares() -> None:
    x, _ = load("checkerboard", num_samples=4000)
    assert x.abs().max() <= 4
    cells = torch.floor(x / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    assert torch.unique(cells, dim=0).shape[0] == 8


def test_rings_radii() -> None:
    x, _ = load("rings", num_samples=4000)
    radii = x.norm(dim=-1)
    nearest = torch.round(radii / 0.75).clamp(1, 4)
    assert (radii - 0.75 * nearest).abs().max() < 0.5
    assert torch.bincount(nearest.long()).tolist()[1:] == [1000] * 4


def test_moons_two_components() -> None:
    x, _ = load("moons", num_samples=4000)
    assert x.mean(0).tolist() == pytest.approx([0.0, 0.3], abs=0.1)
    assert x[:, 0].min() < -2.5 and x[:, 0].max() > 2.5


def test_spirals_and_pinwheel_are_point_symmetric_or_balanced() -> None:
    s, _ = load("spirals", num_samples=4000)
    assert s.mean(0).abs().max() < 0.1  # two arms mirrored through the origin
    p, _ = load("pinwheel", num_samples=5000)
    angle_bins = torch.floor((torch.atan2(p[:, 1], p[:, 0]) + math.pi) / (2 * math.pi / 5))
    assert torch.bincount(angle_bins.long().clamp(0, 4)).min() > 700


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        load("moons", num_samples=-1)
    with pytest.raises(TypeError):
        load("moons", bogus=1)


# --- exact densities (toy_log_prob) ---------------------------------------------------

CLOSED_FORM = ["eight_gaussians", "checkerboard"]
GRID_STEP = 0.02


def _grid(half_width: float = 6.0) -> torch.Tensor:
    """Cell midpoints of a float64 grid over [-half_width, half_width]^2, off every edge."""
    t = torch.arange(-half_width + GRID_STEP / 2, half_width, GRID_STEP, dtype=torch.float64)
    return torch.cartesian_prod(t, t)


def _bin_probabilities(log_prob, edges: torch.Tensor) -> torch.Tensor:
    """Mass of each coarse bin, integrating the density on the fine grid."""
    g = _grid(float(edges[-1]))
    mass = log_prob(g).exp() * GRID_STEP**2
    idx = torch.bucketize(g, edges, right=True) - 1
    flat = idx[:, 0] * (len(edges) - 1) + idx[:, 1]
    return torch.zeros((len(edges) - 1) ** 2, dtype=torch.float64).index_add_(0, flat, mass)


def _histogram_z(x: torch.Tensor, probs: torch.Tensor, edges: torch.Tensor) -> float:
    """Largest |z-score| of the sample counts per coarse bin against the density's masses."""
    idx = (torch.bucketize(x.double(), edges, right=True) - 1).clamp(0, len(edges) - 2)
    counts = torch.bincount(idx[:, 0] * (len(edges) - 1) + idx[:, 1], minlength=len(probs))
    n = x.shape[0]
    sd = (n * probs * (1 - probs)).sqrt().clamp_min(1.0)
    return float(((counts - n * probs).abs() / sd).max())


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_log_prob_integrates_to_one(name: str) -> None:
    g = _grid()
    total = float(toy_log_prob(name, g).exp().sum() * GRID_STEP**2)
    assert total == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_sample_mean_log_prob_matches_grid_negentropy(name: str) -> None:
    g = _grid()
    lp = toy_log_prob(name, g)
    p = lp.exp()
    grid_value = float(torch.where(p > 0, p * lp, 0.0).sum() * GRID_STEP**2)
    x, _ = load(name, num_samples=200_000, seed=1)
    lx = toy_log_prob(name, x)
    assert torch.isfinite(lx).all()  # every sample lies in the support
    assert float(lx.double().mean()) == pytest.approx(grid_value, abs=2e-2)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_samples_histogram_matches_density(name: str) -> None:
    edges = torch.arange(-5.0, 5.01, 1.0, dtype=torch.float64)
    x, _ = load(name, num_samples=100_000, seed=2)
    probs = _bin_probabilities(lambda z: toy_log_prob(name, z), edges)
    assert _histogram_z(x, probs, edges) < 5


def test_histogram_check_catches_a_mismatched_density() -> None:
    """The same check rejects densities a little off the sampler: it has the power to fail."""
    edges = torch.arange(-5.0, 5.01, 1.0, dtype=torch.float64)
    x, _ = load("eight_gaussians", num_samples=100_000, seed=2)
    wider = _bin_probabilities(  # std 10% too large
        lambda z: toy_log_prob("eight_gaussians", z / 1.1) - 2 * math.log(1.1), edges
    )
    assert _histogram_z(x, wider, edges) > 10
    x, _ = load("checkerboard", num_samples=100_000, seed=2)
    flipped = _bin_probabilities(  # the other colour of squares
        lambda z: toy_log_prob("checkerboard", z + torch.tensor([2.0, 0.0], dtype=z.dtype)),
        edges,
    )
    assert _histogram_z(x, flipped, edges) > 10


def test_log_prob_values_dtype_and_edges() -> None:
    assert toy_log_prob("checkerboard", torch.tensor([[1.0, 1.0], [1.0, -1.0]])).tolist() == [
        pytest.approx(-math.log(32)),
        -math.inf,
    ]
    # a square's outer edge (which float32 rounding in the sampler can produce) is inside
    assert toy_log_prob("checkerboard", torch.tensor([[3.0, 4.0], [4.0, 3.0]])).isfinite().all()
    assert toy_log_prob("checkerboard", torch.tensor([[3.0, 4.5], [4.5, 3.0]])).isinf().all()
    x = torch.zeros(3, 4, 2, dtype=torch.float64)
    out = toy_log_prob("eight_gaussians", x)
    assert out.shape == (3, 4) and out.dtype == torch.float64
    # at the origin every mode is 2 sqrt 2 away: p(0) = N(2 sqrt 2; 0, sigma^2) in 2D
    var = 0.125
    assert float(out[0, 0]) == pytest.approx(-4 / var - math.log(2 * math.pi * var))


@pytest.mark.parametrize("name", ["moons", "rings", "spirals", "pinwheel"])
def test_log_prob_without_closed_form_raises(name: str) -> None:
    with pytest.raises(ValueError, match="eight_gaussians, checkerboard"):
        toy_log_prob(name, torch.zeros(1, 2))


def test_log_prob_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown toy"):
        toy_log_prob("bogus", torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        toy_log_prob("checkerboard", torch.zeros(1, 3))


@pytest.mark.parametrize("kwargs", [{"seed": None}, {"num_samples": 10.5}, {"num_samples": True}])
def test_counts_and_seeds_must_be_whole_numbers(kwargs):
    """seed=None failed inside torch on int(None); 10.5 points were silently 10."""
    with pytest.raises(TypeError, match="must be a whole number"):
        load("moons", **kwargs)


# toy_log_prob on points as users hold them: float64 (it was float32-accurate, off by 3e-6
# against scipy), numpy arrays and Predictive dicts (AttributeErrors from inside), and the
# dashed names load accepts (refused as unknown).
def _scipy_eight_gaussians(x: np.ndarray) -> np.ndarray:
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    radius, std = 4 / math.sqrt(2), 0.5 / math.sqrt(2)
    angles = np.arange(8) * np.pi / 4
    centers = radius * np.stack([np.cos(angles), np.sin(angles)], -1)
    parts = [stats.multivariate_normal(c, std**2 * np.eye(2)).logpdf(x) for c in centers]
    return special.logsumexp(np.stack(parts), axis=0) - math.log(8)


def test_float64_numpy_predictive_points_get_scipys_mixture_density() -> None:
    x = 2 * np.random.default_rng(0).normal(size=(3, 50, 2))  # (num_samples, N, 2)
    got = toy_log_prob("eight_gaussians", x)
    assert got.shape == (3, 50) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _scipy_eight_gaussians(x), rtol=1e-12, atol=1e-12)
    assert torch.equal(got, toy_log_prob("eight_gaussians", torch.from_numpy(x)))


def test_the_names_load_accepts_are_accepted() -> None:
    x, _ = load("eight-gaussians", num_samples=10)
    assert torch.equal(toy_log_prob("eight-gaussians", x), toy_log_prob("eight_gaussians", x))
    assert torch.equal(toy_log_prob("Checkerboard", x), toy_log_prob("checkerboard", x))


def test_a_predictive_dict_is_refused_naming_the_site() -> None:
    with pytest.raises(TypeError, match=r"got a dict with sites \['x', 'z'\].*x\['x'\]"):
        toy_log_prob("checkerboard", {"x": torch.zeros(4, 2), "z": torch.zeros(4, 2)})
    with pytest.raises(TypeError, match="tensor or numpy array, got list"):
        toy_log_prob("checkerboard", [[0.0, 0.0]])
