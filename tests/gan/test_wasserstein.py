"""Wasserstein critics: the gradient penalty against finite differences, weight clipping's
bound, and the refusal of a critic that ends in a sigmoid."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch import nn
from torch.func import functional_call

from pyro_gen.gan import Generator, MinimaxGAN, WassersteinGAN, WassersteinGP, gradient_penalty
from pyro_gen.nn import MLPDiscriminator, MLPGenerator


def smooth_critic() -> nn.Module:
    # tanh: smooth, so central differences are accurate in float64
    return MLPDiscriminator((3,), (6,), activation=nn.Tanh).double()


def test_gradient_penalty_matches_finite_differences():
    critic = smooth_critic()
    real, fake = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    eps = torch.rand(5, dtype=torch.float64)
    gp = gradient_penalty(critic, real, fake, event_dim=1, eps=eps)

    x_hat = eps[:, None] * real + (1 - eps[:, None]) * fake
    h = 1e-6
    grad = torch.stack(
        [
            (critic(x_hat + h * e) - critic(x_hat - h * e)) / (2 * h)
            for e in torch.eye(3, dtype=torch.float64)
        ],
        -1,
    )
    expected = (grad.norm(dim=-1) - 1) ** 2
    torch.testing.assert_close(gp, expected.detach(), rtol=1e-6, atol=1e-9)


def test_gradient_penalty_gradient_in_the_critic_parameters_matches_finite_differences():
    # the penalty differentiates through the critic's input gradient (create_graph=True)
    critic = smooth_critic()
    names = [n for n, _ in critic.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in critic.named_parameters())
    real, fake = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    eps = torch.rand(4, dtype=torch.float64)

    def penalty(*ps: torch.Tensor) -> torch.Tensor:
        f = lambda x: functional_call(critic, dict(zip(names, ps)), (x,))  # noqa: E731
        return gradient_penalty(f, real, fake, event_dim=1, eps=eps).mean()

    assert torch.autograd.gradcheck(penalty, params)


def test_wgan_gp_critic_loss_includes_the_weighted_penalty():
    pyro.set_rng_seed(0)
    gen = Generator(MLPGenerator(2, (3,), (6,)))
    loss = WassersteinGP(MLPDiscriminator((3,), (6,)), penalty_weight=7.0)
    x = torch.randn(8, 3)
    batch = loss.batch(gen.model, gen.guide, x)
    rng = torch.get_rng_state()
    expected = (
        7.0 * gradient_penalty(loss.discriminator, batch.real, batch.fake, event_dim=1).mean()
    )
    torch.set_rng_state(rng)
    torch.testing.assert_close(loss.penalty(batch), expected)


def test_weight_clipping_keeps_every_weight_within_the_bound():
    pyro.set_rng_seed(0)
    gen = Generator(MLPGenerator(2, (2,), (8,)))
    # a large learning rate pushes weights past the bound at every step
    loss = WassersteinGAN(
        MLPDiscriminator((2,), (8,)), clip=0.02, optim=lambda p: torch.optim.SGD(p, lr=1.0)
    )
    for _ in range(5):
        loss.loss_and_grads(gen.model, gen.guide, torch.randn(32, 2) + 3)
    weights = torch.cat([p.detach().flatten() for p in loss.discriminator.parameters()])
    assert weights.abs().max() <= 0.02
    assert (weights.abs() == torch.tensor(0.02)).float().mean() > 0.5  # the bound was active


def test_wasserstein_critic_ending_in_a_sigmoid_is_refused():
    critic = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())
    for cls in (WassersteinGAN, WassersteinGP):
        with pytest.raises(ValueError, match="Wasserstein critic must return unbounded"):
            cls(critic)
    with pytest.raises(ValueError, match="returns logits"):
        MinimaxGAN(critic)


def test_gradient_penalty_refuses_bad_inputs_with_one_clear_error():
    critic, x = (lambda x: x.sum(-1)), torch.zeros(4, 2)
    # torch's "The size of tensor a (4) must match...", "shape '[4, 1]' is invalid...",
    # "check_uniform_bounds not implemented for 'Long'"; event_dim=3 gave a wrong penalty
    with pytest.raises(ValueError, match=r"one shape, got \(4, 2\) and \(3, 2\)"):
        gradient_penalty(critic, x, torch.zeros(3, 2), event_dim=1)
    for event_dim in (3, -1):
        with pytest.raises(ValueError, match="event_dim must be between 0 and the examples' 2"):
            gradient_penalty(critic, x, x, event_dim=event_dim)
    with pytest.raises(ValueError, match=r"eps must hold one weight per example, shape \(4,\)"):
        gradient_penalty(critic, x, x, event_dim=1, eps=torch.rand(3))
    with pytest.raises(ValueError, match="must be floating point"):
        gradient_penalty(critic, x.long(), x.long(), event_dim=1)
    # the weights as (B,) or (B, 1): the same penalty, here (|grad| - 1)^2 = (sqrt(2) - 1)^2
    eps = torch.rand(4)
    expected = torch.full((4,), (2**0.5 - 1) ** 2)
    for weights in (eps, eps[:, None]):
        torch.testing.assert_close(
            gradient_penalty(critic, x, x + 1, event_dim=1, eps=weights), expected
        )
