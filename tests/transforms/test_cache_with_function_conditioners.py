"""A flow whose conditioner is a function of a network (``lambda h: net(h)``, ``net.forward``)
trains on one data tensor like one whose conditioner is the network.

Why: the cached result of the last call is valid while the parameters it was computed with are
unchanged, and the parameters were those of the transform's own modules. A function
conditioner owns none, so after an optimizer step on ``net`` the previous step's result (and
its freed graph) was returned for the same data tensor: the second ``backward`` failed with
"Trying to backward through the graph a second time".
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen import transforms as T

D = 4
#: a network named as a global by the conditioner, as in a notebook's top-level cell
GLOBAL_NET = nn.Linear(2, 4)


def _fresh_net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 4))


def _closure(net: nn.Module) -> Callable:
    return lambda h: net(h)


def _global(net: nn.Module) -> Callable:
    GLOBAL_NET.reset_parameters()  # seeded by the test; another test may have trained it
    return lambda h: GLOBAL_NET(h)


CONDITIONERS = {
    "closure": (_closure, lambda net: net),
    "bound_method": (lambda net: net.forward, lambda net: net),
    "global": (_global, lambda net: GLOBAL_NET),
}


@pytest.mark.parametrize("kind", list(CONDITIONERS))
def test_a_coupling_with_a_function_conditioner_trains_on_one_data_tensor(kind: str) -> None:
    torch.manual_seed(0)
    make_conditioner, trained = CONDITIONERS[kind]
    net = _fresh_net()
    layer = T.AffineCoupling(T.make_mask(D, "half"), make_conditioner(net))
    flow = dist.TransformedDistribution(dist.Normal(torch.zeros(D), 1.0).to_event(1), [layer])
    data = 1.0 + 2.0 * torch.randn(64, D)
    optimizer = torch.optim.Adam(trained(net).parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # each step scored the network as it was then: the last loss is that of a copy of the
    # data, which no cache holds, under the parameters before the last step
    assert losses[0] != losses[1] != losses[2]
    optimizer.zero_grad()
    loss = -flow.log_prob(data).mean()
    torch.testing.assert_close(loss, -flow.log_prob(data.clone()).mean())
    loss.backward()


def test_a_maf_with_a_bound_method_made_scores_after_each_step_afresh() -> None:
    torch.manual_seed(1)
    made = T.masked_autoregressive(3, hidden_dims=[8]).made
    layer = T.MaskedAutoregressive(3, made.forward, T.Affine())
    flow = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [layer])
    data = torch.randn(32, 3)
    optimizer = torch.optim.SGD(made.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        (-flow.log_prob(data).mean()).backward()
        optimizer.step()
    # the same layer on the network itself, built after training: nothing cached
    reference = dist.TransformedDistribution(
        dist.Normal(torch.zeros(3), 1.0).to_event(1), [T.MaskedAutoregressive(3, made, T.Affine())]
    )
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(data), reference.log_prob(data))
