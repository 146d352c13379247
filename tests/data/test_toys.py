"""2D toy samplers: shapes, seeding, disjoint splits, and the geometry each one promises."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen.data import TOYS, load


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
