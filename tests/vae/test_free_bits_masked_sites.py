"""FreeBitsELBO takes the closed-form KL of every diagonal Normal latent a user writes: a
bare ``Normal`` site (no event dim) and Pyro's DMM idiom ``Normal(...).mask(m).to_event(1)``
fell back to a one-draw Monte Carlo KL of the whole site, whose floor also counted the
padded entries the mask leaves out."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

from pyro_gen.vae import FreeBitsELBO

X = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)
# per example and time step: True where the sequence has a step (padding after)
STEPS = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]]).bool()


def scalar_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.5, 2.0))
        pyro.sample(
            "x", dist.Normal(z.unsqueeze(-1).expand(z.shape + (3,)), 1.0).to_event(1), obs=x
        )


def scalar_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.mean(-1), 0.4))


def guide_normal(x):
    return dist.Normal(x / 2, 0.3 + x.abs() / 5)


def padded_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).mask(STEPS).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).mask(STEPS).to_event(1), obs=x)


def padded_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", guide_normal(x).mask(STEPS.clone()).to_event(1))


def test_a_bare_normal_latent_gets_the_closed_form_kl_of_the_meanfield_elbo():
    pyro.set_rng_seed(0)
    expected = TraceMeanField_ELBO().loss(scalar_model, scalar_guide, X)
    pyro.set_rng_seed(0)
    assert FreeBitsELBO(0.0).loss(scalar_model, scalar_guide, X) == pytest.approx(
        expected, rel=1e-6
    )


def test_a_masked_latent_floors_each_step_by_the_sequences_that_have_it():
    """Same draws: the floor adds max(lambda c_j, K_j) - K_j per step j, with K_j the KL
    summed over the c_j sequences that have step j; padding counts nothing."""
    free_bits = 0.6
    kl = kl_divergence(guide_normal(X), dist.Normal(0.0, 1.0)) * STEPS
    counted = STEPS.sum(0).float()
    per_step = kl.sum(0)
    floor = (torch.maximum(free_bits * counted, per_step) - per_step).sum()
    pyro.set_rng_seed(0)
    at_zero = FreeBitsELBO(0.0).loss(padded_model, padded_guide, X)
    pyro.set_rng_seed(0)
    floored = FreeBitsELBO(free_bits).loss(padded_model, padded_guide, X)
    assert floor > 0.1  # the floor binds at some step
    assert floored - at_zero == pytest.approx(float(floor), rel=1e-5)
    pyro.set_rng_seed(0)
    assert at_zero == pytest.approx(
        TraceMeanField_ELBO().loss(padded_model, padded_guide, X), rel=1e-6
    )


KEEP = torch.tensor([True, False, True, True])  # whole examples (a batch's padding rows)


def row_masked_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1).mask(KEEP))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1).mask(KEEP), obs=x)


def row_masked_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", guide_normal(x).to_event(1).mask(KEEP))


def test_a_mask_outside_to_event_leaves_out_whole_examples():
    """The mask of ``.to_event(1).mask(keep)`` is per example, not per latent dimension
    (aligned from the right it would have met the event dim)."""
    free_bits = 0.6
    kl = kl_divergence(guide_normal(X), dist.Normal(0.0, 1.0))[KEEP]
    per_dim = kl.sum(0)
    floor = (torch.maximum(free_bits * KEEP.sum(), per_dim) - per_dim).sum()
    pyro.set_rng_seed(0)
    at_zero = FreeBitsELBO(0.0).loss(row_masked_model, row_masked_guide, X)
    pyro.set_rng_seed(0)
    floored = FreeBitsELBO(free_bits).loss(row_masked_model, row_masked_guide, X)
    assert floor > 0.1
    assert floored - at_zero == pytest.approx(float(floor), rel=1e-5)
