"""The naive (prior-sampling) estimate of log p(x) against the closed form of the
linear-Gaussian model, and against importance sampling with a guide at equal cost."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from pyro_gen.infer import iwae_log_likelihood
from pyro_gen.vae import DATA_PLATE, LATENT, VAE
from pyro_gen.vae.naive import naive_log_likelihood
from tests.vae.test_linear_gaussian import DZ, SIG, LinearDecoder, problem  # noqa: F401


def test_naive_estimate_converges_to_the_closed_form(problem):  # noqa: F811
    W, b, x, _ = problem
    x = x[:20]
    dec = LinearDecoder(W, b)
    vae = VAE((x.shape[1],), DZ, hidden_dim=8, decoder=dec)
    exact = dec.log_marginal(x).double()
    pyro.set_rng_seed(0)
    naive = naive_log_likelihood(vae, x, num_samples=40000, chunk=10000, per_example=True)
    assert (naive - exact).abs().max() < 0.1
    few = torch.stack(
        [naive_log_likelihood(vae, x, num_samples=10, per_example=True) for _ in range(20)]
    )
    assert float((few.mean(0) - exact).mean()) < -0.1  # Jensen: biased low at small K


def test_the_exact_posterior_as_proposal_beats_the_prior_at_equal_cost(problem):  # noqa: F811
    W, b, x, _ = problem
    x = x[:20]
    dec = LinearDecoder(W, b)
    S = torch.linalg.inv(torch.eye(DZ) + W.T @ W / SIG**2)
    loc = (x - b) @ W @ S / SIG**2

    def exact_guide(x, **kw):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.MultivariateNormal(loc, S))

    vae = VAE((x.shape[1],), DZ, decoder=dec, guide=exact_guide)
    exact = dec.log_marginal(x).double()
    pyro.set_rng_seed(1)
    naive = torch.stack(
        [naive_log_likelihood(vae, x, num_samples=5, per_example=True) for _ in range(10)]
    )
    guided = torch.stack(
        [iwae_log_likelihood(vae, x, num_samples=5, per_example=True) for _ in range(10)]
    )
    assert torch.allclose(guided, exact.expand_as(guided), atol=1e-4)  # zero variance
    assert naive.std(0).mean() > 0.1
