"""The GAN networks: shapes, conditioning, spectral norm, and errors for wrong inputs."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_gen.gan import Generator, WassersteinGP
from pyro_gen.infer import fit
from pyro_gen.nn import (
    ConditionalBatchNorm,
    ConvTranslator,
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)


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


def test_dcgan_trains_through_fit_with_a_gradient_penalty():
    pyro.set_rng_seed(0)
    gen = Generator(DCGANGenerator(8, width=4))
    loss = WassersteinGP(DCGANDiscriminator(width=4, spectral_norm=True), n_critic=1)
    # the critic's output bias cancels in E f(real) - E f(fake) and is left out
    params = [
        *gen.parameters(),
        *(p for n, p in loss.named_parameters() if n != "discriminator.net.5.bias"),
    ]
    before = [p.detach().clone() for p in params]
    result = fit(gen, torch.rand(4, 28, 28), steps=1, batch_size=4, loss=loss, progress=False)
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))
    assert all(not torch.equal(a, p.detach()) for a, p in zip(before, params))  # both trained
    assert gen.sample(3).shape == (3, 28, 28)


def test_the_translator_starts_as_the_identity_and_stays_in_the_unit_interval():
    t = ConvTranslator(1, width=4, num_blocks=1)
    x = torch.rand(3, 1, 28, 28) * 0.98 + 0.01
    torch.testing.assert_close(t(x), x, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p))  # any weights: the output stays a valid pixel
    y = t(x)
    assert y.shape == x.shape and ((y >= 0) & (y <= 1)).all() and not torch.allclose(y, x)


def test_the_projection_discriminator_is_its_unconditional_score_plus_a_label_inner_product():
    # Miyato & Koyama: D(x, c) = psi(phi(x)) + c^T V phi(x), so D is affine in the context
    # and two labels differ by (c1 - c2)^T V phi(x) exactly
    torch.manual_seed(0)
    d = DCGANDiscriminator(width=4, context_dim=3)
    x, c1, c2 = torch.rand(5, 28, 28), torch.eye(3)[[0, 1, 2, 0, 1]], torch.eye(3)[[2, 2, 0, 1, 0]]
    phi = d.net[:-1](x[:, None])
    expected = d.net[-1](phi).squeeze(-1) + ((c1 @ d.embed.weight.T) * phi).sum(-1)
    torch.testing.assert_close(d(x, c1), expected)
    torch.testing.assert_close(d(x, 0.3 * c1 + 0.7 * c2), 0.3 * d(x, c1) + 0.7 * d(x, c2))
    d(x, c1).sum().backward()
    assert d.embed.weight.grad.abs().sum() > 0  # the embedding trains
    with pytest.raises(ValueError, match="conditioning must be 'projection' or 'concat'"):
        DCGANDiscriminator(context_dim=3, conditioning="sum")


def test_conditional_batch_norm_is_batch_norm_with_a_scale_and_shift_per_class():
    torch.manual_seed(0)
    bn = ConditionalBatchNorm(4, context_dim=3)
    with torch.no_grad():
        bn.scale.weight.normal_()
        bn.shift.weight.normal_()
    h, labels = torch.randn(6, 4, 5, 5), torch.tensor([0, 1, 2, 2, 1, 0])
    c = torch.eye(3)[labels]
    gain = 1 + bn.scale.weight.T[labels][:, :, None, None]
    bias = bn.shift.weight.T[labels][:, :, None, None]
    plain = torch.nn.BatchNorm2d(4, affine=False)
    torch.testing.assert_close(bn(h, c), plain(h) * gain + bias)
    bn.eval(), plain.eval()  # the running statistics, as batch norm keeps them
    torch.testing.assert_close(bn(h, c), plain(h) * gain + bias)
    with pytest.raises(ValueError, match="one context per example"):
        bn(h, c[:2])


def test_the_conditional_batch_norm_generator_starts_as_the_concat_one_and_uses_the_label():
    torch.manual_seed(0)
    concat = DCGANGenerator(4, width=4, context_dim=3)
    cbn = DCGANGenerator(4, width=4, context_dim=3, conditioning="batchnorm")
    shared = {k: v for k, v in concat.state_dict().items() if not k.startswith(("fc.1", "conv.1"))}
    cbn.load_state_dict(shared, strict=False)
    z, c = torch.randn(6, 4), torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    torch.testing.assert_close(cbn(z, c), concat(z, c))  # zero-initialised scales and shifts
    cbn(z, c).sum().backward()
    assert (
        cbn.fc[1].scale.weight.grad.abs().sum() > 0
        and cbn.conv[1].shift.weight.grad.abs().sum() > 0
    )
    with pytest.raises(ValueError, match="conditioning must be 'concat' or 'batchnorm'"):
        DCGANGenerator(4, context_dim=3, conditioning="projection")
