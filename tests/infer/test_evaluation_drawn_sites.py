"""A latent the guide does not sample is drawn by evaluation from the model's conditional
given its parents. That proposal loosens the bound only when a scored density depends on
the drawn value; for a leaf (obs_mask's ``x_unobserved``) it is the exact posterior of the
site and the bound is that of the model with the site summed out. Evaluation warns in the
first case, naming who depends on which site, and not in the second; both are checked
here against closed forms."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood

X = torch.tensor([-1.5, -0.3, 0.4, 1.2, 2.0, 0.1], dtype=torch.float64)
MASK = torch.tensor([True, True, False, True, False, True])


def _normal_log_prob(x: torch.Tensor, var: float) -> torch.Tensor:
    return -0.5 * math.log(2 * math.pi * var) - 0.5 * x**2 / var


def _masked_model(x: torch.Tensor) -> None:
    # z ~ N(0, 1), x | z ~ N(z, 1), with x missing where MASK is False: Pyro splits x into
    # x_observed and a latent x_unobserved that nothing else depends on
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=MASK)


def _masked_exact_guide(x: torch.Tensor) -> None:
    # the exact posterior of z: N(x / 2, 1 / 2) where x is seen, the prior where it is not
    with pyro.plate("data", x.shape[0]):
        loc = torch.where(MASK, x / 2, torch.zeros_like(x))
        scale = torch.where(MASK, torch.full_like(x, 0.5**0.5), torch.ones_like(x))
        pyro.sample("z", dist.Normal(loc, scale))


def _no_drawn_site_warning(record: list[warnings.WarningMessage]) -> bool:
    return not any("no guide site" in str(w.message) for w in record)


def test_a_drawn_leaf_costs_nothing_and_is_not_warned_about():
    # with the exact guide of z the bound is log p(x_observed) exactly: the draw of the
    # leaf x_unobserved from p(x | z) is its exact posterior, not a looser proposal
    exact = torch.where(MASK, _normal_log_prob(X, 2.0), torch.zeros_like(X))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        elbo = evaluate_elbo(
            _masked_model, X, guide=_masked_exact_guide, num_particles=50, per_example=True
        )
        iwae = iwae_log_likelihood(
            _masked_model, X, guide=_masked_exact_guide, num_samples=50, per_example=True
        )
    assert _no_drawn_site_warning(record), [str(w.message) for w in record]
    assert torch.allclose(elbo, exact, atol=1e-10), (elbo, exact)
    assert torch.allclose(iwae, exact, atol=1e-10), (iwae, exact)


def _chain_model(x: torch.Tensor) -> None:
    # z ~ N(0, 1), u | z ~ N(z, 1), x | u ~ N(u, 1): the observed x depends on u
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        u = pyro.sample("u", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(u, 1.0), obs=x)


def _chain_guide(x: torch.Tensor) -> None:
    # the exact marginal posterior of z given x (x ~ N(z, 2)): N(x / 3, 2 / 3); u unguided
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 3, (2 / 3) ** 0.5))


def test_a_drawn_site_with_an_observed_child_loosens_the_bound_as_warned():
    # E_q(z) E_p(u|z) log p(x | u) + E_q log p(z)/q(z), in closed form: the gap to log p(x)
    # is KL(p(u | z) || p(u | z, x)) averaged over q, which does not vanish
    exact = _normal_log_prob(X, 3.0)
    m, v = X / 3, 2 / 3  # q(z)
    expected_log_lik = -0.5 * math.log(2 * math.pi) - 0.5 * ((X - m) ** 2 + v + 1.0)
    kl_q_prior = 0.5 * (v + m**2 - 1.0 - math.log(v))
    bound = expected_log_lik - kl_q_prior
    assert (exact - bound > 0.1).all()  # the looseness the warning speaks of
    named = r"\['u'\] have no guide site.*\('x' on 'u'\)\. Add a guide site"
    with pytest.warns(UserWarning, match=named):
        elbo = evaluate_elbo(_chain_model, X, guide=_chain_guide, num_particles=20000)
    assert elbo == pytest.approx(bound.mean().item(), abs=0.03)
    assert elbo < exact.mean().item() - 0.1


def _longer_chain_model(x: torch.Tensor) -> None:
    # z -> u -> v -> x: x depends on u only through the drawn v
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        u = pyro.sample("u", dist.Normal(z, 1.0))
        v = pyro.sample("v", dist.Normal(u, 1.0))
        pyro.sample("leaf", dist.Normal(u, 1.0))
        pyro.sample("x", dist.Normal(v, 1.0), obs=x)


def test_dependents_are_found_through_other_drawn_sites_and_leaves_are_left_out():
    with pytest.warns(UserWarning) as record:
        evaluate_elbo(_longer_chain_model, X, guide=_chain_guide, num_particles=10)
    (message,) = [str(w.message) for w in record if "no guide site" in str(w.message)]
    assert "['u', 'v'] have no guide site" in message, message
    assert "('x' on 'u'; 'x' on 'v')" in message, message
    assert "leaf" not in message, message


def test_without_the_dependencies_the_warning_says_what_drawing_costs(monkeypatch):
    from pyro_gen.infer import drawn_site_dependents

    def fails(*args, **kwargs):
        raise RuntimeError("no provenance through this model")

    monkeypatch.setattr(drawn_site_dependents, "get_dependencies", fails)
    leaf = r"\['x_unobserved'\] have no guide site.*loosens the bound only where another site"
    with pytest.warns(UserWarning, match=leaf):
        evaluate_elbo(_masked_model, X, guide=_masked_exact_guide, num_particles=5)
