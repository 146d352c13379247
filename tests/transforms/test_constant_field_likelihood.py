"""A velocity field that does not read its state (a constant drift, as a user's exact field
of a translation is) has zero divergence: the ODE likelihood is the base density at the
shifted point, with either trace estimator (this failed with "element 0 of tensors does not
require grad")."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.transforms.continuous import ode_log_likelihood


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("learned", [False, True])
def test_constant_field_is_a_translation(trace, learned):
    shift = torch.tensor([1.5, -0.5])
    velocity = torch.nn.Parameter(shift.clone()) if learned else shift
    base = torch.distributions.Normal(torch.zeros(2), 1.0)
    x = torch.randn(5, 2)
    log_p = ode_log_likelihood(
        lambda z, t: velocity.expand_as(z),
        x,
        0.0,
        1.0,
        lambda z: base.log_prob(z).sum(-1),
        event_dim=1,
        trace=trace,
    )
    # z(1) = x + shift and the volume does not change
    expected = base.log_prob(x + shift).sum(-1)
    assert torch.allclose(log_p, expected, atol=1e-5)
