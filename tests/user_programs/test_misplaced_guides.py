"""Guides given in the wrong place, as new Pyro users give them: an autoguide class not yet
built on the model (``guide=AutoNormal`` for ``AutoNormal(model)``), and model and guide
swapped. Pyro's SVI runs both without an error (a class called with the batch builds a guide
on it and samples nothing; the swapped pair trains a loss of 0); ``fit`` and the evaluation
helpers refuse them in one line that says what to pass."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_gen.infer import evaluate_elbo, fit, iwae_log_likelihood
from pyro_gen.vae import VAE, AutoAmortizedNormal

X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))


def model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def posterior(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.5**0.5).to_event(1))


RUNS = {
    "fit": lambda m, g: fit(m, X, guide=g, steps=1, progress=False),
    "evaluate_elbo": lambda m, g: evaluate_elbo(m, X, guide=g),
    "iwae_log_likelihood": lambda m, g: iwae_log_likelihood(m, X, guide=g, num_samples=2),
}


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("guide_class", [AutoNormal, AutoAmortizedNormal], ids=lambda c: c.__name__)
def test_an_autoguide_class_not_built_on_the_model_is_named(run, guide_class):
    """iwae_log_likelihood gave a number here (every latent drawn from the prior, with a
    warning about unguided sites) and fit said the guide had no site for 'z'."""
    pyro.clear_param_store()
    name = guide_class.__name__
    with pytest.raises(TypeError, match=rf"guide is the class {name}.*guide={name}\(model\)"):
        RUNS[run](model, guide_class)


@pytest.mark.parametrize("run", list(RUNS))
def test_a_model_class_is_named(run):
    pyro.clear_param_store()
    with pytest.raises(TypeError, match=r"model is the class AutoNormal.*an instance"):
        RUNS[run](AutoNormal, posterior)


@pytest.mark.parametrize("run", list(RUNS))
def test_model_and_guide_swapped_are_named(run):
    """Pyro's SVI trains the swapped pair with a loss of exactly 0 and only a warning of
    'non-auxiliary vars in guide but not model'."""
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"the guide observes \['x'\].*swapped"):
        RUNS[run](posterior, model)


def test_the_pair_in_its_place_still_runs():
    pyro.clear_param_store()
    fit(model, X, guide=posterior, steps=1, progress=False)
    exact = dist.Normal(0.0, 2**0.5).log_prob(X).sum(-1).mean()
    assert evaluate_elbo(model, X, guide=posterior) == pytest.approx(float(exact), abs=1e-5)


@pytest.mark.parametrize("run", list(RUNS))
@pytest.mark.parametrize("guide_class", [AutoNormal, AutoAmortizedNormal], ids=lambda c: c.__name__)
def test_an_autoguide_built_on_a_pyro_gen_module_rather_than_its_model_is_named(run, guide_class):
    """``AutoNormal(vae)`` for ``AutoNormal(vae.model)``: the autoguide calls the module,
    which has model and guide methods but no forward, and torch said only 'Module [VAE] is
    missing the required "forward" function'."""
    pyro.clear_param_store()
    vae = VAE((3,), z_dim=2, hidden_dim=4)
    name = guide_class.__name__
    with pytest.raises(
        TypeError, match=rf"{name} was built on the VAE module.*{name}\(vae\.model\)"
    ):
        RUNS[run](vae, guide_class(vae))
