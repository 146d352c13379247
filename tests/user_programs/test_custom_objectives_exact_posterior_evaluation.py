"""pyro_gen's ``evaluate_elbo`` and ``iwae_log_likelihood`` and Pyro's posterior tools after
``fit`` with the tutorial's callable loss, on a Normal-Normal model whose guide is the exact
posterior, so that every draw's ``log p(x, z) - log q(z)`` is ``log p(x)`` in closed form:
``evaluate_elbo``, ``iwae_log_likelihood``, ``pyro.infer.Importance``'s normalizer are
``log p(x)`` at the parameters ``fit`` left in the param store; ``Predictive`` and
``EmpiricalMarginal`` follow the exact posterior; pyro_gen flows after the exact posterior
as guide parts (exact at their identity initialization, Pyro's ``Trace_ELBO`` once
perturbed); the tutorial's scaled loss; a Delta read off a discrete auxiliary draw.

Programs and losses shared by the test_custom_objectives_*.py files live in
custom_objective_programs.py."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import EmpiricalMarginal, Importance, Predictive, Trace_ELBO

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.transforms import affine_coupling, inverse_autoregressive, masked_autoregressive
from tests.user_programs.custom_objective_programs import (
    LOSSES,
    X_DIM,
    B,
    N,
    _data,
    exact_guide,
    log_evidence,
    nn_model,
    simple_elbo,
)


def _fitted_exact_pair(compile: bool | None) -> torch.Tensor:
    """mu after 10 Adam epochs of fit with the tutorial's simple_elbo, left in the store."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    fit(
        nn_model,
        _data() + 2.0,
        guide=exact_guide,
        loss=simple_elbo,
        optim=pyro.optim.Adam({"lr": 0.1}),
        epochs=10,
        batch_size=B,
        compile=compile,
        progress=False,
    )
    mu = pyro.param("mu").detach().clone()
    assert (mu > 0.5).all(), mu  # trained towards the data's mean, 2 + noise
    return mu


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_evaluation_with_a_callable_loss_is_the_log_evidence(name):
    """evaluate_elbo given a callable loss is the plain ELBO (as documented): here log p(x)
    at the mu fit left in the store, as is the IWAE estimate, at any batch size."""
    mu = _fitted_exact_pair(None)
    x = _data() + 2.0
    truth = float(log_evidence(x.double(), mu.double()).mean())
    for batch_size in (5, N):
        elbo = evaluate_elbo(
            nn_model, x, guide=exact_guide, loss=LOSSES[name], batch_size=batch_size
        )
        iwae = iwae_log_likelihood(
            nn_model, x, guide=exact_guide, num_samples=4, batch_size=batch_size
        )
        assert elbo == pytest.approx(truth, abs=1e-4)
        assert iwae == pytest.approx(truth, abs=1e-4)


def test_importance_predictive_and_empirical_marginal_use_fit_params():
    """Pyro's posterior tools after fit (default step) see the mu fit trained: the
    importance normalizer is log p(X; mu) exactly (all weights equal), and the posterior
    means are (x + mu) / 2."""
    mu = _fitted_exact_pair(None)
    x = _data() + 2.0
    posterior_mean = (x + mu) / 2.0
    pyro.set_rng_seed(2)
    importance = Importance(nn_model, guide=exact_guide, num_samples=400).run(x)
    truth = float(log_evidence(x.double(), mu.double()).sum())
    assert float(importance.get_log_normalizer()) == pytest.approx(truth, abs=1e-3)
    marginal = EmpiricalMarginal(importance, sites="z")
    # posterior sd 0.5**0.5 per coordinate, 400 draws: 5 standard errors is 0.18
    torch.testing.assert_close(marginal.mean, posterior_mean, atol=0.18, rtol=0)
    samples = Predictive(nn_model, guide=exact_guide, num_samples=400)(x)
    torch.testing.assert_close(samples["z"].mean(0), posterior_mean, atol=0.18, rtol=0)
    # the predictive x is z plus unit noise: its mean is the posterior mean too
    assert samples["x"].shape == (400, N, X_DIM)


FLOWS = {
    "inverse_autoregressive": lambda: inverse_autoregressive(X_DIM, [8]),
    "masked_autoregressive": lambda: masked_autoregressive(X_DIM, [8]),
    "affine_coupling": lambda: affine_coupling(X_DIM, [8]),
}


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_flow_on_the_exact_posterior_in_the_evaluation_helpers(flow):
    """A pyro_gen flow after the exact posterior, as a guide part: at its identity
    initialization both bounds are log p(x) exactly (any batch size, particles vectorized);
    with random weights evaluate_elbo is Pyro's Trace_ELBO per example."""
    x = _data() + 2.0
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    transform = FLOWS[flow]()

    def guide(x: torch.Tensor) -> None:
        pyro.module("flow", transform)
        mu = pyro.param("mu", torch.ones(X_DIM))
        base = dist.Normal((x + mu) / 2.0, 0.5**0.5).to_event(1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.TransformedDistribution(base, [transform]))

    guide(x)
    truth = float(log_evidence(x.double(), torch.ones(X_DIM, dtype=torch.float64)).mean())
    elbo = evaluate_elbo(nn_model, x, guide=guide, num_particles=4, batch_size=5)
    iwae = iwae_log_likelihood(nn_model, x, guide=guide, num_samples=4, batch_size=5)
    assert elbo == pytest.approx(truth, abs=1e-4) and iwae == pytest.approx(truth, abs=1e-4)
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(0.15 * torch.randn_like(p))
    reference = -Trace_ELBO(num_particles=2000, vectorize_particles=True).loss(nn_model, guide, x)
    elbo = evaluate_elbo(nn_model, x, guide=guide, num_particles=2000, batch_size=5)
    assert elbo == pytest.approx(reference / N, abs=0.1)
    assert elbo < truth


def test_tutorials_scaled_loss():
    """The tutorial's "scaling the loss", poutine.scale(model and guide, 1/N): train_loss is
    the scaled loss per example (-log p(x) / N here), evaluate_elbo keeps the scale (as
    documented) and iwae_log_likelihood refuses it naming the site and the scale."""
    x = _data()
    model = poutine.scale(nn_model, scale=1.0 / N)
    guide = poutine.scale(exact_guide, scale=1.0 / N)
    truth = float(log_evidence(x.double(), torch.zeros(X_DIM, dtype=torch.float64)).mean())
    pyro.clear_param_store()
    result = fit(
        model,
        x,
        guide=guide,
        loss=simple_elbo,
        epochs=1,
        batch_size=N,
        optim=pyro.optim.SGD({"lr": 0.0}),
        compile=False,
        progress=False,
    )
    assert result.history[0]["train_loss"] == pytest.approx(-truth / N, rel=1e-5)
    assert evaluate_elbo(model, x, guide=guide) == pytest.approx(truth / N, rel=1e-5)
    with pytest.raises(ValueError, match="site 'z' has scale 0.083"):
        iwae_log_likelihood(model, x, guide=guide)


def test_delta_read_off_a_discrete_auxiliary_draw_is_a_density():
    """A discrete model site guided by a Categorical auxiliary draw and a Delta of it (the
    pattern of an enumerating easyguide) has the auxiliary's pmf: with the exact posterior
    both bounds are log p(x) = log sum_k p(k) N(x; m_k, 1), not a point-mass refusal."""
    x = _data()[:, 0] + 1.0
    probs, means = torch.tensor([0.3, 0.7]), torch.tensor([0.0, 2.0])

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            k = pyro.sample("k", dist.Categorical(probs))
            pyro.sample("x", dist.Normal(means[k], 1.0), obs=x)

    def guide(x: torch.Tensor) -> None:
        logits = probs.log() + dist.Normal(means, 1.0).log_prob(x[:, None])
        with pyro.plate("data", x.shape[0]):
            j = pyro.sample("j", dist.Categorical(logits=logits), infer={"is_auxiliary": True})
            pyro.sample("k", dist.Delta(j))

    truth = float(
        torch.logsumexp(probs.log() + dist.Normal(means, 1.0).log_prob(x[:, None]), -1).mean()
    )
    assert evaluate_elbo(model, x, guide=guide, num_particles=4) == pytest.approx(truth, abs=1e-5)
    assert iwae_log_likelihood(model, x, guide=guide, num_samples=4) == pytest.approx(
        truth, abs=1e-5
    )
