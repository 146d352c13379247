"""``evaluate_elbo`` and ``iwae_log_likelihood`` on a linear Gaussian model: the ELBO is
exact with the exact posterior and loose by the closed-form KL otherwise, the IWAE bound
approaches the evidence from below, chunking leaves the estimator unchanged, and bits per
dimension convert from nats."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen.infer import bits_per_dim_from_nats, evaluate_elbo, iwae_log_likelihood
from tests.infer.evaluation_models import _data
from tests.infer.linear_gaussian import LinearGaussian


def test_elbo_is_exact_with_exact_posterior_and_loose_otherwise():
    exact_model = LinearGaussian(guide_scale=1.0)
    x = _data(exact_model)
    exact = exact_model.exact_log_likelihood(x).mean().item()
    assert evaluate_elbo(exact_model, x) == pytest.approx(exact, abs=1e-8)
    loose = LinearGaussian(guide_scale=2.0)
    elbo = evaluate_elbo(loose, x, num_particles=2000)
    # Closed-form gap: KL(q || p(z|x)) for a scaled posterior, k * (s^2/2 - 1/2 - log s).
    s, k = 2.0, 2
    assert exact - elbo == pytest.approx(k * (s**2 / 2 - 0.5 - math.log(s)), rel=0.05)


def test_iwae_approaches_exact_and_stays_below_it():
    model = LinearGaussian(guide_scale=1.8)
    x = _data(model, n=40)
    exact = model.exact_log_likelihood(x).mean().item()
    estimates, errors = {}, {}
    for k in (1, 10, 100, 1000):
        runs = torch.tensor(
            [iwae_log_likelihood(model, x, num_samples=k, chunk=256) for _ in range(8)]
        )
        estimates[k], errors[k] = runs.mean().item(), runs.std().item() / math.sqrt(len(runs))
    ks = sorted(estimates)
    assert all(estimates[a] < estimates[b] for a, b in zip(ks, ks[1:])), estimates
    # A lower bound in expectation: no estimate lies above the truth beyond Monte Carlo error.
    assert all(estimates[k] < exact + 3 * errors[k] + 1e-9 for k in ks), (estimates, errors, exact)
    assert exact - estimates[1000] < 0.1 * (exact - estimates[1])


def test_iwae_chunking_does_not_change_the_estimator():
    model = LinearGaussian(guide_scale=1.5)
    x = _data(model, n=10)
    torch.manual_seed(3)
    one = iwae_log_likelihood(model, x, num_samples=300, chunk=300)
    torch.manual_seed(3)
    same = iwae_log_likelihood(model, x, num_samples=300, chunk=300, batch_size=10)
    assert one == pytest.approx(same, rel=1e-12)
    chunked = [iwae_log_likelihood(model, x, num_samples=300, chunk=37) for _ in range(10)]
    assert sum(chunked) / 10 == pytest.approx(one, abs=0.05)


def test_bits_per_dim_conversion():
    assert bits_per_dim_from_nats(-math.log(256) * 784, 784) == pytest.approx(8.0)


def test_iwae_rejects_bad_sample_counts():
    with pytest.raises(ValueError, match="num_samples"):
        iwae_log_likelihood(LinearGaussian(), torch.zeros(2, 3, dtype=torch.float64), num_samples=0)
