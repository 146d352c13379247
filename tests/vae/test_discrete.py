"""Categorical-latent VAEs: the enumerated ELBO in closed form, exact log p(x), and the
relaxed (Concrete) latent with its temperature."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_gen.infer import fit
from pyro_gen.vae.discrete import (
    DiscreteVAE,
    ExpRelaxedCategorical,
    anneal_temperature,
    temperature_schedule,
)
from pyro_gen.vae.refine import refine_posterior
from pyro_gen.vae.sites import DATA_PLATE, LATENT

K = 4


@pytest.fixture
def exact_vae():
    pyro.clear_param_store()
    torch.manual_seed(0)
    return DiscreteVAE((6,), num_categories=K, hidden_dims=(8,), inference="enumerate")


def log_lik_per_category(vae, x):
    return vae.decoder(torch.eye(K)[:, None, :]).log_prob(x).detach()  # (K, batch)


def test_enumerated_elbo_is_the_closed_form_sum_over_categories(exact_vae):
    x = torch.rand(5, 6).round()
    q = exact_vae.encoder_logits(x)[:, 0].log_softmax(-1).detach()  # (batch, K)
    hand = (q.exp() * (log_lik_per_category(exact_vae, x).T - math.log(K) - q)).sum(-1)
    elbo = -TraceEnum_ELBO(max_plate_nesting=1).loss(exact_vae.model, exact_vae.guide, x)
    assert elbo == pytest.approx(float(hand.sum()), rel=1e-5)  # no Monte Carlo noise
    assert (hand <= exact_vae.log_prob(x) + 1e-5).all()


def test_exact_posterior_as_guide_gives_exact_log_likelihood(exact_vae):
    x = torch.rand(5, 6).round()
    posterior = log_lik_per_category(exact_vae, x).T  # uniform prior: p(k|x) ~ p(x|k)

    def exact_guide(x):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(
                LATENT, dist.OneHotCategorical(logits=posterior), infer={"enumerate": "parallel"}
            )

    elbo = -TraceEnum_ELBO(max_plate_nesting=1).loss(exact_vae.model, exact_guide, x)
    log_px = exact_vae.log_prob(x)
    assert elbo == pytest.approx(float(log_px.sum()), rel=1e-5)
    brute = torch.logsumexp(posterior - math.log(K), -1)
    assert torch.allclose(log_px, brute, atol=1e-5)


def test_log_space_latent_gives_the_relaxed_one_hot_density_ratio():
    """The ELBO's log p(z) - log q(z) is the same whether the site holds the log-space
    sample s or z = exp(s) on the simplex: the change of variables cancels."""
    q_logits, p_logits, tau = torch.randn(3, K), torch.zeros(3, K), torch.tensor(0.7)
    s = ExpRelaxedCategorical(tau, logits=q_logits).sample()
    log_space = ExpRelaxedCategorical(tau, logits=p_logits).log_prob(s) - ExpRelaxedCategorical(
        tau, logits=q_logits
    ).log_prob(s)
    simplex = dist.RelaxedOneHotCategorical(tau, logits=p_logits).log_prob(
        s.exp()
    ) - dist.RelaxedOneHotCategorical(tau, logits=q_logits).log_prob(s.exp())
    assert torch.allclose(log_space, simplex, atol=1e-4)
    assert (log_space.abs() > 0.01).all()


def test_low_temperature_samples_are_nearly_one_hot():
    vae = DiscreteVAE((6,), num_latents=3, num_categories=K, hidden_dims=(8,), temperature=0.05)
    z = pyro.poutine.trace(vae.guide).get_trace(torch.rand(200, 6)).nodes[LATENT]["value"]
    assert z.shape == (200, 3, K)
    assert torch.allclose(z.exp().sum(-1), torch.ones(200, 3), atol=1e-5)
    assert z.exp().max(-1).values.median() > 0.99
    vae.temperature = 5.0
    z = pyro.poutine.trace(vae.guide).get_trace(torch.rand(200, 6)).nodes[LATENT]["value"]
    assert z.exp().max(-1).values.median() < 0.6


def trained(compile, schedule):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.rand(40, 6).round()
    vae = DiscreteVAE((6,), num_latents=2, num_categories=3, hidden_dims=(8,))
    fit(
        vae,
        x,
        loss=Trace_ELBO(),
        steps=10,
        batch_size=20,
        progress=False,
        compile=compile,
        step_callbacks=[anneal_temperature(vae, schedule)],
    )
    return vae, torch.cat([p.detach().flatten() for p in vae.parameters()])


def test_annealed_temperature_reaches_the_compiled_step():
    """The temperature is a buffer updated in place: fit's compiled step (same draws as
    Pyro's SVI for one seed) must train exactly as plain SVI while it changes."""
    drop = temperature_schedule(1.0, 0.05, rate=1.0)
    vae, compiled = trained(None, drop)
    assert vae.temperature == pytest.approx(0.05)
    _, plain = trained(False, drop)
    assert torch.allclose(compiled, plain, atol=1e-6)
    _, constant = trained(False, lambda step: 1.0)
    assert not torch.allclose(plain, constant, atol=1e-3)  # the temperature mattered


def test_bad_temperature_and_enumeration_size_get_clear_errors():
    with pytest.raises(ValueError, match="temperature must be positive and finite, got 0"):
        DiscreteVAE((6,), temperature=0)
    vae = DiscreteVAE((6,), num_latents=2, num_categories=K, hidden_dims=(8,))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be positive"):
            vae.temperature = bad
    with pytest.raises(ValueError, match="temperature must be positive"):
        temperature_schedule(1.0, 0.0)
    with pytest.raises(ValueError, match=r"K\^L = 4\^2 joint values"):
        DiscreteVAE((6,), num_latents=2, num_categories=K, inference="enumerate")
    with pytest.raises(ValueError, match="exact only for inference='enumerate'"):
        vae.log_prob(torch.rand(2, 6))


def test_refine_posterior_refuses_the_relaxed_latent_on_the_log_simplex():
    # torch declares ExpRelaxedCategorical's support real; a Normal refinement would still
    # leave the log-simplex (logsumexp = 0), so the site is refused by name
    vae = DiscreteVAE((6,), num_latents=2, num_categories=3, hidden_dims=(8,))
    with pytest.raises(ValueError, match="log-simplex") as info:
        refine_posterior(vae, torch.rand(4, 6).round(), num_steps=1)
    assert repr(LATENT) in str(info.value)
