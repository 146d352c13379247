"""pyro_gen's evaluation helpers sum enumerated discrete model sites out per example, in the
data plate and in a plate nested in it, against a mixture's closed-form evidence."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import torch

from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood

MEANS = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)


def _mixture(x: torch.Tensor, noise: float) -> None:
    """x_i = mu[c_i] + z_i + noise, c_i marked for enumeration as TraceEnum_ELBO would."""
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        pyro.sample("x", dist.Normal(MEANS[c] + z, noise), obs=x)


def _mixture_evidence(x: torch.Tensor, noise: float) -> torch.Tensor:
    components = dist.Normal(MEANS, (1 + noise**2) ** 0.5).log_prob(x[:, None])
    return torch.logsumexp(components + WEIGHTS.log(), -1)


def test_enumerated_model_sites_are_summed_out_per_example():
    """A mixture label that only the model has (as with TraceEnum_ELBO and an autoguide that
    leaves it out) is enumerated: with z observed-through-the-guide at its prior, IWAE
    converges to the closed-form mixture evidence, and with noise -> 0 the ELBO is exact."""

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.5))

    x = torch.tensor([-2.5, -1.0, 0.2, 1.7, 3.3], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is drawn from the prior
        iwae = iwae_log_likelihood(
            lambda x: _mixture(x, 0.5), x, guide=guide, num_samples=4000, per_example=True
        )
    assert torch.allclose(iwae, _mixture_evidence(x, 0.5), atol=0.02)

    def point_mixture(x: torch.Tensor) -> None:  # no continuous latent: exact enumeration
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MEANS[c], 1.0), obs=x)

    for fn in (evaluate_elbo, iwae_log_likelihood):
        values = fn(point_mixture, x, guide=lambda x: None, per_example=True, batch_size=2)
        assert torch.allclose(values, _mixture_evidence(x, 0.0), atol=1e-10)

    def labelled(x: torch.Tensor, c: torch.Tensor | None) -> None:  # c observed when given
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(WEIGHTS), obs=c, infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MEANS[c], 1.0), obs=x)

    labels = torch.tensor([0, 2])
    batches = [{"x": x[:2], "c": labels}, {"x": x[2:], "c": None}]  # labelled batch first
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = evaluate_elbo(labelled, batches, guide=lambda x, c: None, per_example=True)
    joint = WEIGHTS[labels].log() + dist.Normal(MEANS[labels], 1.0).log_prob(x[:2])
    assert torch.allclose(values, torch.cat([joint, _mixture_evidence(x[2:], 0.0)]), atol=1e-10)


def test_discrete_sites_in_a_plate_nested_in_the_data_plate_are_summed_out_exactly():
    """One discrete site per pixel, in a plate inside the data plate: summed out per example
    by Pyro's plated sum-product, as TraceEnum_ELBO does (they were drawn from the prior
    with a warning before, exact only as the number of samples grows)."""

    def per_pixel(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("pixels", 2, dim=-1):
            c = pyro.sample("c", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(MEANS[c], 1.0), obs=x)

    x = torch.zeros(4, 2, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no site is drawn from the prior any more
        values = iwae_log_likelihood(
            per_pixel,
            x,
            guide=lambda x: None,
            num_samples=3,
            plate_name="data",
            per_example=True,
        )
    exact = 2 * _mixture_evidence(torch.zeros(1, dtype=torch.float64), 0.0)
    assert torch.allclose(values, exact.expand(4), atol=1e-10)
