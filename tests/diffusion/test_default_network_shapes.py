"""``build_ddpm``'s default U-Net takes as many levels as both sides halve into: the levels
were chosen from the height alone, so an 8 x 7 image got a U-Net that refused 8 x 7."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_gen.diffusion import build_ddpm


@pytest.mark.parametrize(
    "shape, levels",
    [((8, 7), 1), ((1, 7, 8), 1), ((3, 6, 12), 2), ((8, 4), 3), ((28, 28), 3)],
)
def test_default_unet_fits_both_sides(shape, levels):
    torch.manual_seed(0)
    m = build_ddpm(shape, timesteps=4, base_channels=8)
    assert m.net.factor == 2 ** (levels - 1)  # how much the deepest level shrinks a side
    assert m.sample(2).shape == (2, *shape)
    loss = pyro.infer.Trace_ELBO().loss(m.model, m.guide, torch.rand(3, *shape))  # images in [0, 1]
    assert math.isfinite(loss)
