"""Users' Pyro programs with the VAE helpers, session 25: decoding helpers on a model that
observes labels beside the data (an SSVAE's labelled batch, or a user's labelled model)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.vae import SSVAE, interpolate, reconstruct


def labelled_model(x: torch.Tensor, y: torch.Tensor) -> None:
    """z ~ N(0, 1); the label y is observed beside x ~ N(2 z + y, 0.1^2) in the data plate."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Categorical(logits=torch.zeros(3)), obs=y)
        loc = (2 * z + y.to(z.dtype)).unsqueeze(-1).expand(z.shape + (2,))
        pyro.sample("x", dist.Normal(loc, 0.1).to_event(1), obs=x)


def labelled_guide(x: torch.Tensor, y: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal((x.mean(-1) - y) / 2, 0.05))


def test_reconstruct_reads_the_site_observing_x_when_labels_are_observed_beside_it():
    # it asked for site=... though only one of the two observed sites observes x
    x = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
    y = torch.tensor([0, 2])
    got = reconstruct(labelled_model, x, guide=labelled_guide, y=y)
    # at the guide's mean z = (mean(x) - y) / 2 the model's mean is 2 z + y = mean(x)
    torch.testing.assert_close(got, x.mean(-1, keepdim=True).expand(-1, 2))


def test_interpolate_decodes_through_a_labelled_model_too():
    x_a, x_b = torch.tensor([1.0, 3.0]), torch.tensor([4.0, 6.0])
    y = torch.tensor([1])
    path = interpolate(labelled_model, x_a, x_b, steps=3, guide=labelled_guide, y=y)
    # z runs from (2 - 1) / 2 to (5 - 1) / 2; the model's mean 2 z + 1 from 2 to 5
    torch.testing.assert_close(path, torch.tensor([[2.0, 2.0], [3.5, 3.5], [5.0, 5.0]]))


def test_reconstruct_of_an_ssvae_labelled_batch_equals_naming_the_data_site():
    pyro.clear_param_store()
    torch.manual_seed(0)
    m2 = SSVAE((6,), num_classes=3, z_dim=2, hidden_dims=(8,))
    x = torch.rand(5, 6).round()
    y = torch.tensor([0, 1, 2, 0, 1])
    named = reconstruct(m2, x, y=y, site="x")
    torch.testing.assert_close(reconstruct(m2, x, y=y), named)
    assert not torch.equal(reconstruct(m2, x, y=(y + 1) % 3), named)  # the label is used


def test_two_observed_sites_that_both_observe_x_still_ask_for_site():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("a", dist.Normal(z, 1.0).expand([2]).to_event(1), obs=x)
            pyro.sample("b", dist.Normal(z, 2.0).expand([2]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"observes \['a', 'b'\].*site="):
        reconstruct(model, torch.zeros(2, 2), guide=guide)
