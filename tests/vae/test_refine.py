"""Per-example and semi-amortized refinement of the Normal posterior."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_gen.vae import VAE, semi_amortized_elbo


@pytest.fixture
def setup():
    pyro.clear_param_store()
    torch.manual_seed(0)
    return VAE((6,), z_dim=2, hidden_dim=8), torch.rand(4, 6).round()


def test_per_example_inference_starts_at_the_prior(setup):
    vae, x = setup
    # zero steps from N(0, I): the ELBO is E_p(z) log p(x | z), its KL term being zero
    pyro.set_rng_seed(1)
    elbo = semi_amortized_elbo(vae, x, num_steps=0, num_particles=4000, start="standard_normal")
    with torch.no_grad():
        z = torch.randn(4000, 1, 2)
        log_lik = vae.decoder(z).log_prob(x)  # (draws, examples)
    expected = log_lik.mean(0).mean().item()
    se = log_lik.mean(1).std().item() / math.sqrt(4000)
    assert abs(elbo - expected) < 5 * se + 1e-3, (elbo, expected, se)


def test_per_example_and_semi_amortized_reach_the_same_optimum(setup):
    vae, x = setup
    pyro.set_rng_seed(2)
    start = {s: semi_amortized_elbo(vae, x, 0, start=s) for s in ("encoder", "standard_normal")}
    pyro.set_rng_seed(2)
    end = {
        s: semi_amortized_elbo(vae, x, 300, lr=5e-2, num_particles=2000, start=s)
        for s in ("encoder", "standard_normal")
    }
    # the same per-example objective: different starts, the same Gaussian optimum
    assert end["encoder"] == pytest.approx(end["standard_normal"], abs=0.1)
    assert all(end[s] > start[s] for s in start)
    with pytest.raises(ValueError, match="start must be 'encoder' or 'standard_normal'"):
        semi_amortized_elbo(vae, x, 1, start="prior")
