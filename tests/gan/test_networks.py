"""The GAN networks: shapes, conditioning, spectral norm, and errors for wrong inputs."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.nn import DCGANDiscriminator, DCGANGenerator, MLPDiscriminator, MLPGenerator


@pytest.mark.parametrize("event_shape", [(28, 28), (3, 28, 28)])
def test_dcgan_shapes_and_conditioning(event_shape):
    g = DCGANGenerator(4, event_shape, width=4, context_dim=2)
    d = DCGANDiscriminator(event_shape, width=4, context_dim=2)
    context = torch.eye(2)[[0, 1, 1]]
    x = g(torch.randn(3, 4), context)
    assert x.shape == (3, *event_shape) and ((x >= 0) & (x <= 1)).all()
    assert d(x, context).shape == (3,)
    # the label changes the score: the context reaches the network
    assert not torch.allclose(d(x, context), d(x, 1 - context))


def test_spectral_norm_bounds_each_layer():
    d = DCGANDiscriminator(width=4, spectral_norm=True)
    for _ in range(30):  # power iterations run in training-mode forward passes
        d(torch.rand(8, 28, 28))
    d.eval()
    linear = d.net[-1]
    sigma = torch.linalg.matrix_norm(linear.weight.detach(), ord=2)
    assert abs(sigma.item() - 1) < 0.05
    plain = DCGANDiscriminator(width=4)
    assert torch.linalg.matrix_norm(plain.net[-1].weight.detach(), ord=2) < 0.9  # can differ


def test_mlp_networks_check_their_inputs():
    g, d = MLPGenerator(3, (2,), (8,)), MLPDiscriminator((2,), (8,))
    assert g(torch.randn(5, 3)).shape == (5, 2) and d(torch.randn(5, 2)).shape == (5,)
    with pytest.raises(ValueError, match=r"takes inputs of event shape \(2,\)"):
        d(torch.randn(5, 3))
    with pytest.raises(ValueError, match="built with context_dim=0"):
        d(torch.randn(5, 2), torch.ones(5, 1))
    with pytest.raises(ValueError, match="is conditional"):
        MLPDiscriminator((2,), (8,), context_dim=2)(torch.randn(5, 2))
    with pytest.raises(ValueError, match="sized for 28x28"):
        DCGANGenerator(4, (32, 32))
