"""UNet as users build it: their own channel counts, odd sizes, float64; bad arguments
refused when the network is built, naming the argument."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.nn import UNet


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # built a network of empty convolutions that failed only when called
        ({"in_channels": 0}, r"in_channels must be a positive whole number"),
        # "in_channels must be divisible by groups", from inside GroupNorm
        ({"in_channels": 1.5}, r"in_channels must be a positive whole number"),
        ({"out_channels": 0}, r"out_channels must be a positive whole number"),
        # "embedding dim must be even, got 3", naming no argument of UNet
        ({"base_channels": 3}, r"base_channels must be an even whole number"),
        ({"channel_mults": ()}, r"channel_mults must be a non-empty"),  # ZeroDivisionError
        ({"channel_mults": (1, 0)}, r"channel_mults must be a non-empty"),  # built, empty level
        ({"num_res_blocks": -1}, r"num_res_blocks must be a whole number >= 0"),
        # level 5 of 3 was wrapped silently onto level 2
        ({"attention_levels": (5,)}, r"attention_levels must be level indices in \[-3, 3\)"),
        ({"attention_levels": -1}, r"attention_levels must be level indices"),
        ({"num_classes": 0}, r"num_classes must be a positive whole number"),
    ],
)
def test_bad_arguments_are_refused_when_built(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UNet(**{"base_channels": 8, **kwargs})


def test_negative_attention_levels_count_from_the_lowest_resolution() -> None:
    net = UNet(1, base_channels=8, channel_mults=(1, 2), attention_levels=(-2,))
    attended = [any(not isinstance(a, torch.nn.Identity) for a in level) for level in net.down_attn]
    assert attended == [True, False]


@pytest.mark.parametrize(
    "channels, size, mults",
    [(1, (28, 28), (1, 2, 2)), (3, (12, 20), (1, 2)), (3, (7, 9), (1,))],
)
def test_users_channels_and_sizes_in_float64(channels: int, size: tuple, mults: tuple) -> None:
    torch.manual_seed(0)
    net = UNet(channels, base_channels=8, channel_mults=mults, num_classes=3).double()
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    out = net(x, torch.rand(2, dtype=torch.float64), torch.tensor([0, 2]))
    assert out.shape == x.shape and out.dtype == torch.float64
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
