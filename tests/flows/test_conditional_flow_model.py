"""A FlowModel with conditional transforms is a conditional density p(x | y), its context
given as ``y=`` (the model protocol's ``model(x=None, **context)``). Before, the context was
swallowed by ``**context`` and the flow refused every call with "pass a context"."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.distributions.flow import ConditionalNormal
from pyro_gen.flows.base import FlowModel
from pyro_gen.infer import fit
from pyro_gen.transforms import conditional_affine_coupling


def _flow(base=None) -> FlowModel:
    torch.manual_seed(0)
    layers = [conditional_affine_coupling(2, context_dim=1, hidden_dims=[16], parity=i % 2)
              for i in range(2)]  # fmt: skip
    return FlowModel((2,), layers, base=base)


def test_model_scores_the_conditional_density():
    m = _flow()
    for p in m.parameters():  # leave the identity start, so that y matters
        torch.nn.init.normal_(p, std=0.3)
    x, y = torch.randn(6, 2), torch.randn(6, 1)
    trace = pyro.poutine.trace(m.model).get_trace(x, y=y)
    site = trace.nodes["x"]
    assert torch.allclose(site["fn"].log_prob(x), m.flow.log_prob(x, y))
    assert torch.allclose(m.log_prob(x, y=y), m.flow.log_prob(x, y))
    # the context changes the density: the same x under another y scores differently
    assert not torch.allclose(m.log_prob(x, y=y), m.log_prob(x, y=y + 1.0))


def test_fit_learns_a_conditional_density_from_dict_batches():
    """x | y ~ N(2y, 0.5^2) per coordinate: the exact log-likelihood is the target."""
    torch.manual_seed(1)
    y = torch.randn(2000, 1)
    x = 2.0 * y + 0.5 * torch.randn(2000, 2)
    m = _flow(base=ConditionalNormal(2, context_dim=1, hidden_dims=(16,)))
    pyro.clear_param_store()
    fit(m, {"x": x, "y": y}, epochs=30, batch_size=200, optim=pyro.optim.Adam({"lr": 1e-2}))
    exact = dist.Normal(2.0 * y, 0.5).to_event(1).log_prob(x).mean()
    learned = m.log_prob(x, y=y).mean()
    # an unconditional fit could reach at best the marginal N(0, 4.25): 0.98 nats per
    # coordinate below the exact conditional density
    assert learned > exact - 0.1, (learned.item(), exact.item())
    # drawing through the model: one sample per row of y, close to 2y
    with torch.no_grad():
        draws = m.model(None, y=torch.full((500, 1), 1.5))
    assert draws.shape == (500, 2)
    assert torch.allclose(draws.mean(0), torch.tensor([3.0, 3.0]), atol=0.15)
    # and through sample(): num_samples draws for each row of the context
    two = m.sample(400, y=torch.tensor([[-1.0], [1.0]]))
    assert two.shape == (400, 2, 2)
    assert torch.allclose(two.mean(0), torch.tensor([[-2.0, -2.0], [2.0, 2.0]]), atol=0.15)
    # bits/dim of the conditional density: the log-likelihood's conversion, y passed on
    levels = torch.rand(50, 2)
    bpd = m.bits_per_dim(levels, num_bins=4, y=y[:50])
    expected = -(m.log_prob(levels, y=y[:50]) - 2 * math.log(4)).mean() / (2 * math.log(2))
    assert torch.allclose(bpd, expected)


def test_missing_and_unexpected_context_are_refused_by_name():
    with pytest.raises(ValueError, match=r"call it with y=<context>"):
        _flow().model(torch.randn(3, 2))
    plain = FlowModel((2,), [])
    with pytest.raises(ValueError, match=r"y= was given but this FlowModel is not conditional"):
        plain.model(torch.randn(3, 2), y=torch.randn(3, 1))
