"""iwae() on users' models with nested plates: Pyro's ELBOs find max_plate_nesting from the
trace, and so must pyro_gen's IWAE (it used to fix it at 1, and a data plate with an inner
pixel plate hit "plates collide")."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, RenyiELBO

from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood
from pyro_gen.vae import iwae, make_loss

D = 3  # pixels per example


def model(x: torch.Tensor) -> None:
    """z_i ~ N(0, 1); x_ij | z_i ~ N(z_i, 1) for each pixel j (an inner plate)."""
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("pixels", x.shape[1], dim=-1):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def exact_guide(x: torch.Tensor) -> None:
    """The exact posterior: z_i | x_i ~ N(sum_j x_ij / (1 + D), 1 / (1 + D))."""
    n = x.shape[1] + 1
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal(x.sum(-1, keepdim=True) / n, (1.0 / n) ** 0.5))


def exact_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    """log p(x_i) = log N(x_i; 0, I + 1 1^T), per example."""
    cov = torch.eye(x.shape[1], dtype=x.dtype) + 1.0
    return dist.MultivariateNormal(torch.zeros(x.shape[1], dtype=x.dtype), cov).log_prob(x)


def test_iwae_on_a_data_plate_with_an_inner_pixel_plate_is_the_exact_log_likelihood():
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(0))
    # with the exact posterior every importance weight is p(x_i): the bound is exact
    loss = iwae(4).loss(model, exact_guide, x)
    assert loss == pytest.approx(-float(exact_log_likelihood(x).sum()), abs=1e-4)


def test_iwae_trains_a_two_plate_model_with_svi_as_pyro_renyi_elbo_would():
    """The same steps as Pyro's own RenyiELBO told the nesting (the guess draws nothing)."""
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(1))

    def guide(x: torch.Tensor) -> None:
        loc = pyro.param("loc", torch.zeros(x.shape[0], 1))
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(loc, 1.0))

    values = []
    pyros = RenyiELBO(alpha=0.0, num_particles=5, vectorize_particles=True, max_plate_nesting=2)
    for loss in (iwae(5), pyros):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss)
        values.append([svi.step(x) for _ in range(3)])
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_iwae_with_a_global_plate_around_a_local_plate():
    """Global per-feature weights w_j outside the data plate, a local z_i inside it."""

    def model(x: torch.Tensor) -> None:
        with pyro.plate("features", x.shape[1], dim=-1):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            with pyro.plate("data", x.shape[0], dim=-2):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(w * z, 1.0), obs=x)

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("features", x.shape[1], dim=-1):
            pyro.sample("w", dist.Normal(pyro.param("w_loc", torch.zeros(x.shape[1])), 1.0))
            with pyro.plate("data", x.shape[0], dim=-2):
                pyro.sample("z", dist.Normal(0.0, 1.0))

    x = torch.randn(4, D, generator=torch.Generator().manual_seed(2))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ours = iwae(3).loss(model, guide, x)
    pyro.set_rng_seed(0)
    pyro_loss = RenyiELBO(alpha=0.0, num_particles=3, vectorize_particles=True, max_plate_nesting=2)
    pyros = pyro_loss.loss(model, guide, x)
    assert ours == pytest.approx(pyros, rel=1e-6)


def test_an_explicit_max_plate_nesting_is_kept_and_the_cli_name_still_builds_iwae():
    assert iwae(4, max_plate_nesting=2).max_plate_nesting == 3  # one more for the particles
    assert make_loss("iwae", 4).num_particles == 4
    x = torch.randn(3, D)
    assert iwae(4, max_plate_nesting=2).loss(model, exact_guide, x) == pytest.approx(
        -float(exact_log_likelihood(x).sum()), abs=1e-4
    )


@pytest.mark.parametrize(
    "value, error", [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)]
)
def test_a_bad_max_plate_nesting_is_refused_naming_it(value, error):
    with pytest.raises(error, match="max_plate_nesting"):
        iwae(4, max_plate_nesting=value)


def test_evaluation_helpers_score_a_two_plate_model_exactly_with_the_exact_guide():
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(3))
    exact = exact_log_likelihood(x).double()
    per_example = iwae_log_likelihood(
        model, x, guide=exact_guide, num_samples=4, batch_size=3, per_example=True
    )
    assert torch.allclose(per_example, exact, atol=1e-4)
    # the ELBO of the exact posterior is log p(x) too
    elbo = evaluate_elbo(model, x, guide=exact_guide, batch_size=3, per_example=True)
    assert torch.allclose(elbo, exact, atol=1e-4)


def test_parameters_made_during_the_nesting_guess_are_not_the_particles_draws_again():
    """The guess leaves the random stream as it found it; a parameter the guide creates in
    it (an autoguide's first call) must not take the numbers the particles then draw."""
    x = torch.randn(4, D)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)

    def guide(x: torch.Tensor) -> None:
        loc = pyro.param("loc", lambda: torch.randn(x.shape[0], 1))
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(loc, 1.0))

    loss = iwae(3)
    traces = []
    loss._get_traces = _recording(loss._get_traces, traces)
    loss.loss(model, guide, x)
    z, loc = traces[0].nodes["z"]["value"], pyro.param("loc").detach()
    assert not torch.allclose((z - loc)[0], loc)  # the first particle's noise


def _recording(get_traces, traces):
    def wrapped(*args, **kwargs):
        for model_trace, guide_trace in get_traces(*args, **kwargs):
            traces.append(guide_trace)
            yield model_trace, guide_trace

    return wrapped
