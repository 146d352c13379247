"""A size that is zero, negative, fractional or not a number is refused when a network is
built, with one error naming the argument (they built networks over nothing, or failed
inside torch with messages naming no argument)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_gen.nn import (
    MADE,
    MLP,
    ConditionalBatchNorm,
    DCGANDiscriminator,
    DCGANGenerator,
    MaskedLinear,
    MLPDiscriminator,
    MLPGenerator,
    ResNetConv,
    SinusoidalTimeEmbedding,
    TimeMLP,
)

CASES = [
    (lambda: MADE(0, [8]), "input_dim", "0"),  # built a network over nothing
    (lambda: MADE(-1, [8]), "input_dim", "-1"),
    (lambda: MADE(3.5, [8]), "input_dim", "3.5"),
    (lambda: MADE(True, [8]), "input_dim", "True"),
    (lambda: MADE(3, [8], 0), "num_params", "0"),
    (lambda: MADE(3, [8], -1), "num_params", "-1"),
    (lambda: MADE(3, [8], context_dim=-1), "context_dim", "-1"),
    (lambda: MADE(3, [8], context_dim=1.5), "context_dim", "1.5"),
    (lambda: MADE(3, [8], order=torch.tensor([0.0, 1.0, 2.5])), "order", "integers"),
    (lambda: MADE(3, [8], order=[[0, 1, 2]]), "order", "permutation"),
    (lambda: MaskedLinear(3, 2, torch.ones(3, 2)), "mask", r"\(2, 3\)"),
    (lambda: MLP(0, [8], 2), "in_dim", "0"),
    (lambda: MLP(3, [8], -2), "out_dim", "-2"),
    (lambda: MLP(3.0, [8], 2), "in_dim", "3.0"),
    (lambda: MLP(3, [8], 2, context_dim=-1), "context_dim", "-1"),
    (lambda: ResNetConv(0, 8, 2), "in_channels", "0"),
    (lambda: ResNetConv(1, 0, 2), "hidden_channels", "0"),
    (lambda: ResNetConv(1, 8, 0), "out_channels", "0"),
    (lambda: ResNetConv(1, 8, 2, num_blocks=-1), "num_blocks", "-1"),
    (lambda: ResNetConv(1, 8, 2, context_dim=-2), "context_dim", "-2"),
    (lambda: ResNetConv(1, 8, 2, kernel_size=-1), "kernel_size", "-1"),
    (lambda: SinusoidalTimeEmbedding(0), "dim", "0"),
    (lambda: SinusoidalTimeEmbedding(-2), "dim", "-2"),
    (lambda: SinusoidalTimeEmbedding(8, out_dim=0), "out_dim", "0"),
    (lambda: SinusoidalTimeEmbedding(8, max_period=0.5), "max_period", "0.5"),
    (lambda: TimeMLP(0), "dim", "0"),
    (lambda: TimeMLP(2, 0), "hidden_dim", "0"),
    (lambda: TimeMLP(2, 8, num_layers=-1), "num_layers", "-1"),
    (lambda: TimeMLP(2, 8, time_dim=3), "time_dim", "3"),
    (lambda: ConditionalBatchNorm(0, 2), "num_features", "0"),
    (lambda: ConditionalBatchNorm(3, 0), "context_dim", "0"),
    (lambda: MLPGenerator(0, (2,)), "latent_dim", "0"),
    (lambda: MLPGenerator(4, (0,)), "event_shape", r"\(0,\)"),
    (lambda: MLPDiscriminator((2, -1)), "event_shape", "-1"),
    (lambda: DCGANGenerator(0), "latent_dim", "0"),
    (lambda: DCGANGenerator(8, width=0), "width", "0"),
    (lambda: DCGANDiscriminator(context_dim=-1), "context_dim", "-1"),
]


@pytest.mark.parametrize("build, name, value", CASES)
def test_a_bad_size_is_refused_naming_the_argument(build, name, value) -> None:
    with pytest.raises(ValueError, match=rf"{name}\b.*{value}"):
        build()


def test_numpy_and_torch_whole_numbers_are_sizes() -> None:
    assert MLPGenerator(np.int64(4), torch.Size([2]))(torch.randn(3, 4)).shape == (3, 2)
    assert MADE(np.int64(3), [np.int64(4)], np.int64(2))(torch.randn(3)).shape == (6,)


def test_a_conditional_batch_norm_context_of_the_wrong_width_is_named() -> None:
    # was torch's "mat1 and mat2 shapes cannot be multiplied (4x5 and 2x3)"
    with pytest.raises(ValueError, match=r"context_dim=2\), got \(4, 5\)"):
        ConditionalBatchNorm(3, 2)(torch.randn(4, 3), torch.randn(4, 5))
