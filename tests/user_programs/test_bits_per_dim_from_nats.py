"""``pyro_gen.infer.bits_per_dim_from_nats`` on what ``iwae_log_likelihood`` returns, as a
flow user reports it: with the event shape at hand (``x.shape[1:]``) and data dequantized
from 256 levels. It took only an int (a shape failed with "can't multiply sequence by
non-int"), 0 dimensions raised ZeroDivisionError, and it had no ``num_bins``, which
``pyro_gen.data.bits_per_dim`` (the same conversion from an NLL) has."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.data import bits_per_dim
from pyro_gen.infer import bits_per_dim_from_nats, iwae_log_likelihood

X = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(0))


def uniform_model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Uniform(0.0, 1.0).expand(x.shape[1:]).to_event(3), obs=x)


def test_an_event_shape_counts_its_elements():
    ll = -4 * math.log(2) * 3
    assert bits_per_dim_from_nats(ll, X.shape[1:]) == pytest.approx(3.0)
    assert bits_per_dim_from_nats(ll, (1, 2, 2)) == bits_per_dim_from_nats(ll, 4)


def test_num_bins_reports_on_the_integer_scale():
    """A uniform density on [0, 1]^D is log p = 0 nats, i.e. 8 bits per 8-bit pixel."""
    ll = iwae_log_likelihood(uniform_model, X, guide=lambda x: None, num_samples=1)
    assert ll == pytest.approx(0.0)
    assert bits_per_dim_from_nats(ll, X.shape[1:], num_bins=256) == pytest.approx(8.0)
    assert bits_per_dim_from_nats(-5.0, 4, num_bins=256) == bits_per_dim(5.0, 4, num_bins=256)


def test_a_tensor_of_values_converts_elementwise():
    lls = torch.tensor([-4 * math.log(2), -8 * math.log(2)])
    assert torch.allclose(bits_per_dim_from_nats(lls, 4), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("num_dims", [0, -3, 2.5, (0, 4)])
def test_no_dimensions_is_refused(num_dims):
    with pytest.raises(ValueError, match="num_dims must be a positive whole number"):
        bits_per_dim_from_nats(-1.0, num_dims)
