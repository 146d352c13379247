"""A conditional ``FlowModel`` drawing inside a user's program whose context comes from a
latent, under ``Predictive(parallel=True)``: the context then carries the samples' dim on
the left of its rows (``(S, N, C)``), and the model drew with ``pyro.plate("data", S)``,
its first dim, failing with "Shape mismatch inside plate('data') at site x dim -1, S vs N".

The check is exact in distribution: the flow shifts its second coordinate by ``100 * y``, so
each draw minus ``100 *`` its own sample's context is a standard normal (within 6 of 0), and
a draw made with another sample's context would be off by about 100.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive

from pyro_gen.flows.base import FlowModel
from pyro_gen.transforms import Affine, ConditionalCoupling, alternating_mask

SHIFT = 100.0


def _shift_by_context(h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Affine's parameters for the transformed coordinate: shift ``100 * y``, log-scale 0
    (whatever the kept coordinate ``h``)."""
    shift = SHIFT * context
    return torch.cat([shift, torch.zeros_like(shift)], -1)


def _flow() -> FlowModel:
    return FlowModel((2,), [ConditionalCoupling(alternating_mask(2), _shift_by_context, Affine())])


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_draws_follow_each_samples_own_context(parallel: bool) -> None:
    torch.manual_seed(0)
    flow = _flow()
    n = 5

    def program(n: int) -> torch.Tensor:
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        y = (w * torch.ones(n)).unsqueeze(-1)  # one context row per example
        return flow.model(None, y=y)

    out = Predictive(program, num_samples=4, parallel=parallel, return_sites=["w", "x"])(n)
    w, x = out["w"].reshape(4, 1), out["x"]
    assert x.shape == (4, n, 2)
    # the kept coordinate is the base noise; the other is shifted by its own sample's context
    assert (x[..., 1] - SHIFT * w).abs().max() < 6.0
    assert (x[..., 0]).abs().max() < 6.0


def test_a_context_of_rows_still_sets_the_number_of_draws() -> None:
    torch.manual_seed(1)
    y = torch.tensor([[-1.0], [0.0], [1.0]])
    x = _flow().model(None, y=y)
    assert x.shape == (3, 2)
    assert (x[:, 1] - SHIFT * y[:, 0]).abs().max() < 6.0
