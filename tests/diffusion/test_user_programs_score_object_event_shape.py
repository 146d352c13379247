"""A user's own score object (``.sde``, ``.score(x, t)``, ``.event_shape``, as the samplers and
likelihoods document) with ``event_shape = 2``, an int as pyro_gen's constructors take: it
met "'int' object is not iterable" (or "Value after * must be an iterable") deep inside each
of them. It now gets one error naming the attribute and the tuple to give; with that tuple the
same object gives the standard normal's exact log-density."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.diffusion import (
    VPSDE,
    likelihood_bound,
    probability_flow_bits_per_dim,
    probability_flow_log_prob,
    sample,
)


class StandardNormal:
    """Data N(0, I) under the VP SDE: the score is -x at every time."""

    sde = VPSDE()

    def __init__(self, event_shape) -> None:  # noqa: ANN001
        self.event_shape = event_shape

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -x


ENTRY_POINTS = {
    "probability_flow_log_prob": lambda m: probability_flow_log_prob(m, torch.zeros(3, 2)),
    "probability_flow_bits_per_dim": lambda m: probability_flow_bits_per_dim(m, torch.zeros(3, 2)),
    "likelihood_bound": lambda m: likelihood_bound(m, torch.zeros(3, 2)),
    "sample": lambda m: sample(m, 3, "pc", steps=2),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_an_int_event_shape_gets_one_clear_error(name):
    with pytest.raises(TypeError, match=r"StandardNormal\.event_shape .* \(2,\) .*got 2$"):
        ENTRY_POINTS[name](StandardNormal(2))


def test_the_tuple_gives_the_exact_density():
    x = torch.randn(3, 2, dtype=torch.float64)
    lp = probability_flow_log_prob(StandardNormal((2,)), x, eps=0.0, rtol=1e-7, atol=1e-7)
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    assert torch.allclose(lp, exact, atol=1e-5)
