"""``refine_posterior`` and ``semi_amortized_elbo`` on users' own Pyro models and guides.

Checked against the closed form of a linear-Gaussian model, x = W z + b + s eps with a
correlated posterior N(m(x), L^-1), L = I + W^T W / s^2: the best diagonal Normal has mean
m(x) and variances 1 / L_jj, and its ELBO is log p(x) - (sum_j log L_jj - log det L) / 2.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.transforms import inverse_autoregressive
from pyro_gen.vae import refine_posterior, semi_amortized_elbo

DZ, DX, SIG = 2, 3, 0.5


@pytest.fixture
def linear():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(DX, DZ, generator=g), torch.randn(DX, generator=g)
    L = torch.eye(DZ) + W.T @ W / SIG**2  # posterior precision

    def model(x):
        with pyro.plate("examples", x.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, SIG).to_event(1), obs=x)

    def guide(x):  # a poor amortized guide: right family, wrong place
        with pyro.plate("examples", x.shape[0]):
            pyro.sample("code", dist.Normal(x[:, :DZ] * 0.1, 1.0).to_event(1))

    x = torch.randn(4, DX, generator=g) * 2
    mean = torch.linalg.solve(L, W.T @ (x - b).T / SIG**2).T
    log_px = dist.MultivariateNormal(b, W @ W.T + SIG**2 * torch.eye(DX)).log_prob(x)
    kl_gap = (L.diagonal().log().sum() - torch.logdet(L)) / 2
    return model, guide, x, mean, 1 / L.diagonal(), float((log_px - kl_gap).mean())


def test_a_users_guide_is_refined_to_the_best_diagonal_normal(linear):
    model, guide, x, mean, var, _ = linear
    pyro.set_rng_seed(0)
    loc, scale = refine_posterior(model, x, 400, lr=5e-2, num_particles=64, guide=guide)
    assert loc.shape == (4, DZ)
    assert (loc - mean).abs().max() < 0.05
    assert (scale**2 / var - 1).abs().max() < 0.1
    assert (x[:, :DZ] * 0.1 - mean).abs().max() > 0.5  # the start was far


def test_the_semi_amortized_elbo_reaches_the_closed_form(linear):
    model, guide, x, _, _, best = linear
    pyro.set_rng_seed(1)
    start = semi_amortized_elbo(model, x, 0, num_particles=2000, guide=guide)
    end = semi_amortized_elbo(
        model, x, 400, lr=5e-2, num_particles=4000, refine_particles=64, guide=guide
    )
    # the ELBO's sampling error on 4 examples x 4000 draws is about 0.01 here
    assert end == pytest.approx(best, abs=0.05)
    assert start < best - 1.0


def test_per_example_inference_from_the_standard_normal_reaches_it_too(linear):
    model, guide, x, mean, _, _ = linear
    pyro.set_rng_seed(2)
    loc, _ = refine_posterior(
        model, x, 400, lr=5e-2, num_particles=64, start="standard_normal", guide=guide
    )
    assert (loc - mean).abs().max() < 0.05


def test_a_flow_guide_starts_from_the_moments_of_its_draws(linear):
    model, _, x, mean, _, _ = linear
    flow = inverse_autoregressive(DZ, [8])  # zero-initialised: the identity

    def flow_guide(x):
        pyro.module("flow", flow)
        with pyro.plate("examples", x.shape[0]):
            base = dist.Normal(torch.full((x.shape[0], DZ), 3.0), 0.2).to_event(1)
            pyro.sample("code", dist.TransformedDistribution(base, [flow]))

    pyro.set_rng_seed(3)
    loc, scale = refine_posterior(model, x, 0, guide=flow_guide)
    # 64 draws of N(3, 0.2^2): mean within 4 standard errors, standard deviation within 30%
    assert (loc - 3.0).abs().max() < 4 * 0.2 / math.sqrt(64)
    assert (scale / 0.2 - 1).abs().max() < 0.3
    loc, _ = refine_posterior(model, x, 300, lr=5e-2, num_particles=32, guide=flow_guide)
    assert (loc - mean).abs().max() < 0.1


def test_one_layer_of_a_hierarchy_is_refined_and_the_next_follows_it():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            z2 = pyro.sample("z2", dist.Normal(z1, 0.5))
            pyro.sample("x", dist.Normal(z2, 0.5), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
            pyro.sample("z2", dist.Normal(z1 + 0.5 * (x - z1), 0.4))

    x = torch.tensor([2.0, -1.0, 0.5])
    with pytest.raises(ValueError, match=r"latent sites \['z1', 'z2'\] .* site=\.\.\."):
        refine_posterior(model, x, 1, guide=guide)
    with pytest.raises(ValueError, match="site 'w' is not a latent site of the guide"):
        refine_posterior(model, x, 1, guide=guide, site="w")
    pyro.set_rng_seed(4)
    before = semi_amortized_elbo(model, x, 0, num_particles=4000, guide=guide, site="z1")
    after = semi_amortized_elbo(
        model, x, 300, lr=5e-2, num_particles=4000, refine_particles=32, guide=guide, site="z1"
    )
    # sampling error of each about 0.02: a gain of a few tenths is the refinement's
    assert after > before + 0.1


def test_a_constrained_latent_is_refused_by_name():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("rate", dist.Gamma(x + 1.0, 1.0))

    with pytest.raises(
        ValueError,
        match="site 'rate' with a Normal, but the guide's distribution of it has support",
    ):
        refine_posterior(model, torch.tensor([1.0, 3.0]), 1, guide=guide)
