"""The size arguments of the ready-made flows that users get wrong: each is one clear error.

``num_layers=0`` or ``-1`` (``depth``, CNF's ``num_blocks``) built a flow with no layers at
all, a fixed standard normal that SVI "trained" without a word; a ``num_levels`` too deep for
the image failed in a squeeze of a shape the user never passed.
"""

from __future__ import annotations

import pytest
import torch

from pyro_gen.flows import CNF, MAF, NICE, NSF, Glow, RealNVP, ResidualFlow

SIZE_ARGUMENTS = {
    "NICE num_layers": lambda v: NICE((2,), num_layers=v, hidden_dims=(4,)),
    "RealNVP num_layers": lambda v: RealNVP((2,), num_layers=v, hidden_dims=(4,)),
    "RealNVP image num_layers": lambda v: RealNVP(
        (1, 4, 4), num_layers=v, hidden_channels=4, num_blocks=1
    ),
    "MAF num_layers": lambda v: MAF((2,), num_layers=v, hidden_dims=(4,)),
    "NSF num_layers": lambda v: NSF((2,), num_layers=v, hidden_dims=(4,)),
    "ResidualFlow num_layers": lambda v: ResidualFlow((2,), num_layers=v, hidden_dims=(4,)),
    "Glow depth": lambda v: Glow((2,), depth=v, hidden_dims=(4,)),
    "CNF num_blocks": lambda v: CNF((2,), num_blocks=v, hidden_dims=(4,)),
    "Glow num_levels": lambda v: Glow(
        (1, 4, 4), depth=1, num_levels=v, hidden_channels=4, num_blocks=1
    ),
    "RealNVP num_levels": lambda v: RealNVP(
        (1, 4, 4), num_layers=1, num_levels=v, hidden_channels=4, num_blocks=1
    ),
    "RealNVP hidden_channels": lambda v: RealNVP(
        (1, 4, 4), num_layers=1, hidden_channels=v, num_blocks=1
    ),
}


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
@pytest.mark.parametrize("name", list(SIZE_ARGUMENTS))
def test_a_size_argument_that_is_no_count_is_one_clear_error(name: str, value) -> None:
    argument = name.split()[-1]
    with pytest.raises(ValueError, match=rf"^{argument} must be a whole number >= 1, got "):
        SIZE_ARGUMENTS[name](value)


@pytest.mark.parametrize("value", [-1, 2.5])
def test_num_blocks_of_an_image_conditioner_is_a_count_from_zero(value) -> None:
    with pytest.raises(ValueError, match=r"^num_blocks must be a whole number >= 0, got "):
        RealNVP((1, 4, 4), num_layers=1, hidden_channels=4, num_blocks=value)
    # zero residual blocks is a conv net all the same (in, hidden, out convolutions)
    flow = RealNVP((1, 4, 4), num_layers=1, hidden_channels=4, num_blocks=0)
    assert flow.log_prob(torch.rand(2, 1, 4, 4)).shape == (2,)


@pytest.mark.parametrize(
    "make, most",
    [
        (lambda: Glow((1, 4, 4), depth=1, num_levels=3, hidden_channels=4, num_blocks=1), 2),
        (lambda: Glow((1, 6, 6), depth=1, num_levels=2, hidden_channels=4, num_blocks=1), 1),
        (lambda: RealNVP((1, 4, 4), num_layers=1, num_levels=3, hidden_channels=4), 2),
        (lambda: NSF((1, 4, 4), num_layers=1, num_levels=3, hidden_channels=4), 2),
    ],
    ids=["glow_4x4", "glow_6x6", "realnvp_4x4", "nsf_4x4"],
)
def test_too_many_levels_for_the_image_name_the_most_it_takes(make, most: int) -> None:
    with pytest.raises(ValueError, match=rf"num_levels=\d does not fit .* at most {most} "):
        make()


def test_the_levels_the_image_takes_are_built() -> None:
    # the most levels are still allowed, beyond the default's cap of 3
    glow = Glow((1, 16, 16), depth=1, num_levels=4, hidden_channels=4, num_blocks=1)
    assert glow.sample(2).shape == (2, 1, 16, 16)
    realnvp = RealNVP((1, 4, 4), num_layers=1, num_levels=2, hidden_channels=4, num_blocks=1)
    assert realnvp.log_prob(torch.rand(3, 1, 4, 4)).shape == (3,)
    # one level without a squeeze leaves odd sizes to the masks, as before
    assert RealNVP((1, 3, 5), num_layers=1, hidden_channels=4, num_blocks=1).sample(1).shape == (
        1,
        1,
        3,
        5,
    )


def test_glow_on_odd_images_says_that_every_level_squeezes() -> None:
    with pytest.raises(ValueError, match=r"Glow squeezes at every level, so H and W must be even"):
        Glow((3, 3), depth=1, hidden_channels=4, num_blocks=1)


@pytest.mark.parametrize("value", [0, 2.5])
def test_num_bins_that_is_no_count_is_one_clear_error(value) -> None:
    # bits_per_dim(x, num_bins=0) failed with "math domain error"; 2.5 bins were taken as 2,
    # a bits/dim of the wrong number of levels without a word
    flow = RealNVP((2,), num_layers=2, hidden_dims=(4,))
    with pytest.raises(ValueError, match=r"^num_bins must be a whole number >= 1, got "):
        flow.bits_per_dim(torch.rand(3, 2), num_bins=value)
    with pytest.raises(ValueError, match=r"^num_bins must be a whole number >= 1, got "):
        RealNVP((2,), num_layers=2, hidden_dims=(4,), num_bins=value)
