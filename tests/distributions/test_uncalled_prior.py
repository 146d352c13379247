"""A prior module handed to pyro.sample uncalled (``pyro.sample("z", prior)`` instead of
``pyro.sample("z", prior())``): Pyro accepted it, the site's value became the distribution
object and the program failed far away. Now one error names the site and says to call it."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO

from pyro_gen.distributions import ConditionalNormal, Flow, LearnedMixture, LearnedNormal
from pyro_gen.distributions.mixture import MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.priors import FlowPrior, NormalPrior

D = 2


def _vamp() -> VampPrior:
    return VampPrior((4,), 3, encode=lambda u: (u[:, :D], torch.ones(u.shape[0], D)))


PRIORS = {
    "MixturePrior": lambda: MixturePrior(D, 3),
    "VampPrior": _vamp,
    "LearnedNormal": lambda: LearnedNormal(D),
    "LearnedMixture": lambda: LearnedMixture(D, 3),
    "NormalPrior": lambda: NormalPrior(D),
    "FlowPrior": lambda: FlowPrior(D, num_flows=1, hidden_dims=(4,)),
    "Flow": lambda: Flow(D, []),
}


def _model(prior, x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", prior)
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("name", PRIORS)
def test_an_uncalled_prior_in_a_traced_model_names_the_site_and_says_call_it(name):
    prior = PRIORS[name]()
    with pytest.raises(TypeError, match=rf"site 'z' was given the {name} module.*prior\(\)"):
        poutine.trace(_model).get_trace(prior, torch.zeros(3, D))
    with pytest.raises(TypeError, match="site 'z'"):  # outside any handler too
        pyro.sample("z", prior)
    with pytest.raises(TypeError, match="site 'z'"):  # Predictive runs the model forward
        Predictive(_model, num_samples=2)(prior, torch.zeros(3, D))


@pytest.mark.parametrize("name", PRIORS)
def test_an_uncalled_prior_whose_value_the_guide_supplies_fails_naming_the_site(name):
    """Under an ELBO the model's site is replayed from the guide, so the module is never
    called; scoring it is refused (Pyro's trace names the site), a Flow's own log_prob (it
    is a density model too) included."""
    prior = PRIORS[name]()

    def guide(prior, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))

    svi = SVI(_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.raises(ValueError, match=rf"site 'z'(.|\n)*{name} module itself"):
        svi.step(prior, torch.zeros(3, D))


@pytest.mark.parametrize("name", PRIORS)
def test_a_called_prior_still_samples_and_scores_under_a_plate(name):
    prior = PRIORS[name]()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior())
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    trace = poutine.trace(model).get_trace(torch.zeros(3, D))
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == (3, D)
    expected = prior().log_prob(trace.nodes["z"]["value"])
    torch.testing.assert_close(trace.nodes["z"]["log_prob"], expected)


def test_a_conditional_prior_called_with_its_context_works_and_uncalled_is_refused():
    prior = ConditionalNormal(D, context_dim=3, hidden_dims=(4,))
    c = torch.zeros(5, 3)
    with pyro.plate("data", 5):
        assert pyro.sample("z", prior(c)).shape == (5, D)
    with pytest.raises(TypeError, match=r"prior\(context\)"):
        pyro.sample("z", prior, c)  # Pyro passes extra args to fn: still not a distribution


def test_a_flow_module_keeps_its_own_log_prob_and_sample():
    flow = Flow(D, [])
    x = torch.randn(4, D)
    torch.testing.assert_close(flow.log_prob(x), dist.Normal(0.0, 1.0).log_prob(x).sum(-1))
    assert flow.sample(3).shape == (3, D)
    with pytest.raises(TypeError, match="num_samples"):
        flow.sample()
