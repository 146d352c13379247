"""pyro_gen's evaluation helpers on any model, any plate: exact per-example values whatever
the data plate is named, deterministic and factor sites outside it, every data form, a plate
that subsamples itself, the user's scale and mask, the mean-field closed-form KL, model
latents without a guide site, and models that do not broadcast over particles."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood
from tests.infer.evaluation_models import X, _data, _exact_scalar, _scalar_model
from tests.infer.linear_gaussian import LinearGaussian


@pytest.mark.parametrize("plate", ["batch", "N"])
def test_any_plate_name_gives_exact_per_example_values(plate):
    model, guide = _scalar_model(plate)
    for estimate in (
        evaluate_elbo(model, X, guide=guide, per_example=True, batch_size=5),
        iwae_log_likelihood(model, X, guide=guide, num_samples=7, per_example=True),
    ):
        assert estimate.shape == (12,)
        assert torch.allclose(estimate, _exact_scalar(X), atol=1e-10)


def test_deterministic_and_factor_sites_outside_the_plate_do_not_hide_it():
    """pyro.deterministic is no data; a global pyro.factor is a global term, counted once."""

    def model(x: torch.Tensor) -> None:
        pyro.factor("penalty", torch.tensor(-3.0, dtype=x.dtype))
        pyro.deterministic("total", x.sum())
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("x", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0), obs=x)

    exact = dist.Normal(torch.zeros((), dtype=torch.float64), 1.0).log_prob(X)
    for batch_size in (5, 12):
        values = evaluate_elbo(
            model, X, guide=lambda x: None, per_example=True, batch_size=batch_size
        )
        assert torch.allclose(values, exact - 3.0 / 12, atol=1e-12)


def test_data_forms_give_the_same_estimate():
    def model(x: torch.Tensor, shift: torch.Tensor) -> None:
        with pyro.plate("obs", x.shape[0]):
            z = pyro.sample("z", dist.Normal(shift, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x: torch.Tensor, shift: torch.Tensor) -> None:
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("z", dist.Normal((x + shift) / 2, 0.5**0.5))

    shift = torch.full_like(X, 0.5)
    exact = _exact_scalar(X - 0.5).mean().item()
    batches = [(X[:5], shift[:5]), (X[5:], shift[5:])]
    forms = {
        "tuple": (X, shift),
        "dict": {"x": X, "shift": shift},
        "list of tuples": batches,
        "list of dicts": [{"x": a, "shift": b} for a, b in batches],
        "batch function": lambda: iter(batches),
        "one-shot iterator": iter(batches),
        "DataLoader": DataLoader(TensorDataset(X, shift), batch_size=5),
    }
    for name, data in forms.items():
        elbo = evaluate_elbo(model, data, guide=guide, batch_size=4)
        assert elbo == pytest.approx(exact, abs=1e-10), name
    # transform= reaches a named argument.
    shifted = evaluate_elbo(
        model, {"x": X, "shift": shift}, guide=guide, transform={"x": lambda t: t + 0.5}
    )
    assert shifted == pytest.approx(_exact_scalar(X).mean().item(), abs=1e-10)


def test_per_example_values_average_to_the_estimate():
    model = LinearGaussian(guide_scale=1.5)
    x = _data(model, n=30)
    for fn, kwargs in ((evaluate_elbo, {}), (iwae_log_likelihood, {"num_samples": 20})):
        torch.manual_seed(0)
        mean = fn(model, x, batch_size=7, **kwargs)
        torch.manual_seed(0)
        values = fn(model, x, batch_size=7, per_example=True, **kwargs)
        assert values.shape == (30,) and values.dtype == torch.float64
        assert values.mean().item() == pytest.approx(mean, rel=1e-12)


def test_a_plate_that_subsamples_itself_keeps_its_examples_across_particle_chunks():
    """A model that draws its own minibatch (``pyro.plate(..., subsample_size=)`` over the
    full data, as in Pyro's SVI tutorials) is scored on the examples of one draw: with an
    exact guide each value is exactly one example's log p(x), however the particles are
    chunked (chunks that drew their own indices mixed the weights of different examples)."""

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], subsample_size=4) as idx:
            pyro.sample("z", dist.Normal(x[idx] / 2, 0.5**0.5))

    exact = _exact_scalar(X)
    pyro.set_rng_seed(0)
    for values in (
        iwae_log_likelihood(model, X, guide=guide, num_samples=6, chunk=2, per_example=True),
        evaluate_elbo(model, X, guide=guide, num_particles=150, per_example=True),
    ):
        assert values.shape == (4,)
        nearest = (values[:, None] - exact[None]).abs().min(1).values
        assert (nearest < 1e-9).all(), nearest


def test_user_scale_and_mask_are_kept():
    keep = torch.arange(12) % 3 != 0

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=2.0), poutine.mask(mask=keep):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=2.0), poutine.mask(mask=keep):
            pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))

    values = evaluate_elbo(model, X, guide=guide, per_example=True)
    assert torch.allclose(values, torch.where(keep, 2 * _exact_scalar(X), 0.0), atol=1e-10)


def test_mean_field_loss_takes_the_kl_in_closed_form():
    """With TraceMeanField_ELBO as the loss, a latent the data do not depend on contributes
    exactly -KL(q || p): ELBO = log p(x) - KL with no Monte Carlo noise."""

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0), obs=x)

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.full_like(x, 0.5), 2.0))

    kl = math.log(1 / 2.0) + (2.0**2 + 0.5**2) / 2 - 0.5  # KL(N(0.5, 2^2) || N(0, 1))
    expected = dist.Normal(torch.zeros((), dtype=torch.float64), 1.0).log_prob(X) - kl
    analytic = evaluate_elbo(model, X, guide=guide, loss=TraceMeanField_ELBO(), per_example=True)
    assert torch.allclose(analytic, expected, atol=1e-12)
    sampled = evaluate_elbo(model, X, guide=guide, loss=Trace_ELBO(), per_example=True)
    assert not torch.allclose(sampled, expected, atol=1e-3)  # the same bound, with noise


def test_model_latent_without_guide_site_is_drawn_from_its_prior():
    """An empty guide makes the prior the proposal: the ELBO is E_p(z)[log p(x | z)] and the
    IWAE estimate still converges to log p(x)."""
    model, _ = _scalar_model("data")
    x = X[::3]
    with pytest.warns(UserWarning, match="'z'"):
        elbo = evaluate_elbo(model, x, guide=lambda x: None, num_particles=4000, per_example=True)
    expected = -0.5 * math.log(2 * math.pi) - 0.5 * (x**2 + 1)
    standard_error = 0.5 * (2 + 4 * x**2).sqrt() / math.sqrt(4000)  # of -(x - z)^2 / 2
    assert ((elbo - expected).abs() < 4 * standard_error).all(), (elbo, expected)
    with pytest.warns(UserWarning, match="'z'"):
        iwae = iwae_log_likelihood(model, x, guide=lambda x: None, num_samples=4000)
    assert iwae == pytest.approx(_exact_scalar(x).mean().item(), abs=0.02)


def test_models_that_do_not_broadcast_over_particles_fall_back_with_a_warning():
    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z.reshape(x.shape[0]), 1.0), obs=x)

    _, guide = _scalar_model("data")
    with pytest.warns(UserWarning, match="one at a time") as record:
        values = iwae_log_likelihood(model, X, guide=guide, num_samples=4, per_example=True)
    assert torch.allclose(values, _exact_scalar(X), atol=1e-10)
    # One line saying where it failed, without the trace-shape table Pyro appends.
    (message,) = [str(w.message) for w in record if "one at a time" in str(w.message)]
    assert "\n" not in message and "Trace Shapes" not in message, message
    assert "the model failed after its site 'z' (value shape (4, 12))" in message, message
    assert "shape '[12]' is invalid" in message, message
