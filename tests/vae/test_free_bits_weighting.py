"""FreeBitsELBO in a user's Pyro program whose latents carry Pyro scales or masks.

The KL term of a latent takes one weight (the guide site's, as in TraceMeanField_ELBO). A
``poutine.scale`` written around the model's latent alone (KL annealing in the model, with
an autoguide, which copies no scale) was dropped without a word: the loss was the same at
every beta. It is now refused, naming the site; scaled on both sides, free bits at zero is
the annealed mean-field ELBO.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

from pyro_gen.infer.annealing import kl_scale_pair
from pyro_gen.vae import AutoAmortizedNormal, FreeBitsELBO

X = torch.linspace(-1.0, 1.0, 18).reshape(6, 3)


@contextmanager
def weighted(beta, mask):
    """``poutine.scale`` and ``poutine.mask`` where given."""
    with ExitStack() as stack:
        if beta is not None:
            stack.enter_context(poutine.scale(scale=beta))
        if mask is not None:
            stack.enter_context(poutine.mask(mask=mask))
        yield


def two_shape_model(x, beta=None, mask=None):
    """A vector and a matrix latent per example; ``beta``/``mask`` wrap the latents only."""
    with pyro.plate("data", x.shape[0]):
        with weighted(beta, mask):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            m = pyro.sample("m", dist.Normal(torch.zeros(2, 2), 1.0).to_event(2))
        mean = (z.sum(-1) + m.sum((-1, -2))).unsqueeze(-1)
        pyro.sample("x", dist.Normal(mean.expand(mean.shape[:-1] + (3,)), 1.0).to_event(1), obs=x)


def hand_guide(x, beta=None, mask=None):
    with pyro.plate("data", x.shape[0]), weighted(beta, mask):
        pyro.sample("z", dist.Normal(x[:, :2] / 3, 0.7).to_event(1))
        pyro.sample("m", dist.Normal(x[:, :1, None].expand(-1, 2, 2) / 4, 0.6).to_event(2))


def test_a_latent_scaled_in_the_model_alone_is_refused_naming_it():
    pyro.clear_param_store()
    guide = AutoAmortizedNormal(two_shape_model)
    with pytest.raises(ValueError, match=r"'z' is scaled by 0.5 in the model and 1 in the guide"):
        FreeBitsELBO(0.0).loss(lambda x: two_shape_model(x, beta=0.5), guide, X)


def test_a_latent_masked_in_the_model_alone_is_refused():
    keep = torch.tensor([True, False, True, True, False, True])
    with pytest.raises(ValueError, match=r"'z' is scaled or masked differently"):
        FreeBitsELBO(0.0).loss(lambda x: two_shape_model(x, mask=keep), hand_guide, X)


def test_per_example_tensor_scales_must_agree_and_then_give_the_meanfield_elbo():
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    with pytest.raises(ValueError, match=r"'z' is scaled or masked differently"):
        FreeBitsELBO(0.0).loss(
            lambda x: two_shape_model(x, beta=weights), lambda x: hand_guide(x, beta=2.0), X
        )
    pyro.set_rng_seed(0)
    expected = TraceMeanField_ELBO().loss(two_shape_model, hand_guide, X, weights)
    pyro.set_rng_seed(0)
    got = FreeBitsELBO(0.0).loss(two_shape_model, hand_guide, X, weights)
    assert got == pytest.approx(expected, rel=1e-6)


def test_annealed_on_both_sides_an_autoguide_gives_the_meanfield_elbo_linear_in_beta():
    """Same draws at each beta: the loss is reconstruction + beta * KL, so it is the
    mean-field ELBO (closed-form KL of both sites) and linear in beta."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = AutoAmortizedNormal(two_shape_model)
    guide(X)  # built before the seeded draws
    losses = {}
    for beta in (0.0, 0.5, 1.0):
        model, annealed_guide = kl_scale_pair(two_shape_model, guide, beta)
        pyro.set_rng_seed(1)
        expected = TraceMeanField_ELBO().loss(model, annealed_guide, X)
        pyro.set_rng_seed(1)
        losses[beta] = FreeBitsELBO(0.0).loss(model, annealed_guide, X)
        assert losses[beta] == pytest.approx(expected, rel=1e-6)
    assert losses[0.5] == pytest.approx((losses[0.0] + losses[1.0]) / 2, rel=1e-6)
    assert losses[1.0] > losses[0.0]  # the KL is positive
