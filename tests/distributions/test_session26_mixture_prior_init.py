"""MixturePrior's scales start at one, as documented, whatever floor ``min_scale`` puts
under them (they started at 1 + min_scale: 1.3 with min_scale=0.3)."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.vae import MixturePrior


@pytest.mark.parametrize("min_scale", [0.0, 1e-3, 0.3, 0.9])
def test_the_component_scales_start_at_one(min_scale):
    prior = MixturePrior(2, num_components=3, min_scale=min_scale)
    scales = prior().scales
    assert torch.allclose(scales, torch.ones_like(scales), atol=1e-6)


def test_a_floor_above_one_starts_the_scales_just_above_it():
    scales = MixturePrior(2, num_components=3, min_scale=2.0)().scales
    assert bool((scales > 2.0).all()) and bool((scales < 2.01).all())
