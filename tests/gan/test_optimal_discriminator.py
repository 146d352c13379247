"""The minimax game's optimal discriminator and value, against closed forms (Goodfellow et
al. 2014, Proposition 1 and Theorem 1), with a fixed 1D generator; the least-squares game's
(Mao et al. 2017, Proposition 1) with a user's Normal model."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.gan import Generator, LeastSquaresGAN, MinimaxGAN

# data N(0, 1); generator x = 1 + 1.5 z, i.e. N(1, 1.5^2)
DATA_LOC, DATA_SCALE, GEN_LOC, GEN_SCALE = 0.0, 1.0, 1.0, 1.5


class FixedAffine(nn.Module):
    """G(z) = loc + scale z, with nothing to train."""

    latent_dim, event_shape = 1, (1,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return GEN_LOC + GEN_SCALE * z


class QuadraticLogit(nn.Module):
    """D(x) = sigmoid(a x^2 + b x + c): the log density ratio of two Gaussians is quadratic,
    so this family contains the optimal discriminator."""

    event_shape = (1,)

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, x.pow(2)], -1)).squeeze(-1)


def normal_pdf(x: torch.Tensor, loc: float, scale: float) -> torch.Tensor:
    return torch.exp(-0.5 * ((x - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


def test_discriminator_approaches_the_optimum_and_the_value_2jsd_minus_log4():
    pyro.set_rng_seed(0)
    gen = Generator(FixedAffine())
    loss = MinimaxGAN(QuadraticLogit(), optim=lambda p: torch.optim.Adam(p, lr=0.05))
    for _ in range(200):
        x = DATA_LOC + DATA_SCALE * torch.randn(2048, 1)
        loss.discriminator_step(gen.model, gen.guide, x)

    grid = torch.linspace(-12.0, 12.0, 20_001, dtype=torch.float64)
    p_data = normal_pdf(grid, DATA_LOC, DATA_SCALE)
    p_gen = normal_pdf(grid, GEN_LOC, GEN_SCALE)
    optimal = p_data / (p_data + p_gen)
    with torch.no_grad():
        logit = loss.discriminator.double()(grid[:, None])
    # D* = p_data / (p_data + p_g) where either density has mass
    bulk = (grid > -2.5) & (grid < 3.5)
    assert (torch.sigmoid(logit) - optimal)[bulk].abs().max() < 0.02

    # V(D*, G) = 2 JSD - log 4, the JSD by quadrature from the two densities
    m = 0.5 * (p_data + p_gen)
    jsd = 0.5 * torch.trapezoid(p_data * (p_data / m).log(), grid) + 0.5 * torch.trapezoid(
        p_gen * (p_gen / m).log(), grid
    )
    optimum = 2 * jsd - math.log(4)
    trained = torch.trapezoid(
        p_data * torch.nn.functional.logsigmoid(logit)
        + p_gen * torch.nn.functional.logsigmoid(-logit),
        grid,
    )
    assert 0.05 < jsd < math.log(2)  # the two distributions differ: the check has room to fail
    assert trained <= optimum + 1e-9  # V(D, G) <= V(D*, G) for every D
    assert optimum - trained < 2e-3

    # the loss's own Monte Carlo estimate of the value
    loss.discriminator.float()
    with torch.no_grad():
        real = loss.discriminator(torch.randn(50_000, 1))
        fake = loss.discriminator(GEN_LOC + GEN_SCALE * torch.randn(50_000, 1))
    assert abs(loss.value(real, fake).item() - optimum.item()) < 0.01


class QuadraticProbability(QuadraticLogit):
    """D(x) = sigmoid(a x^2 + b x + c) as the least-squares score itself: its optimum
    p_data / (p_data + p_g) is a probability, and this family contains it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x))


def test_least_squares_discriminator_of_a_users_normal_model_approaches_its_optimum():
    # a user's model observing a reparameterized Normal: the generator is N(1, 1.5^2) itself
    def model(x):  # noqa: ANN001, ANN202
        loc = pyro.param("loc", torch.tensor(GEN_LOC))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, GEN_SCALE).expand([x.shape[0], 1]).to_event(1), obs=x)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    loss = LeastSquaresGAN(QuadraticProbability(), optim=lambda p: torch.optim.Adam(p, lr=0.05))
    for _ in range(200):
        x = DATA_LOC + DATA_SCALE * torch.randn(2048, 1)
        loss.discriminator_step(model, lambda x: None, x)

    grid = torch.linspace(-12.0, 12.0, 20_001, dtype=torch.float64)
    p_data = normal_pdf(grid, DATA_LOC, DATA_SCALE)
    p_gen = normal_pdf(grid, GEN_LOC, GEN_SCALE)
    # Mao et al. (a=0, b=1): D* = p_data / (p_data + p_g), the minimax game's D* too
    optimal = p_data / (p_data + p_gen)
    with torch.no_grad():
        d = loss.discriminator.double()(grid[:, None])
    bulk = (grid > -2.5) & (grid < 3.5)
    assert (d - optimal)[bulk].abs().max() < 0.02
    # the discriminator's loss at D*: 1/2 E_data[(D* - 1)^2] + 1/2 E_g[D*^2]
    # = 1/2 integral of p_data p_g / (p_data + p_g)
    optimum = 0.5 * torch.trapezoid(p_data * p_gen / (p_data + p_gen), grid)
    trained = 0.5 * torch.trapezoid(p_data * (d - 1) ** 2 + p_gen * d**2, grid)
    assert 0.1 < optimum < 0.25  # the two differ: a constant D = 1/2 scores 0.25
    assert optimum - 1e-9 <= trained < optimum + 1e-3
