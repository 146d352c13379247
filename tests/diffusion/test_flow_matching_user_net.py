"""FlowMatching with a user's velocity network.

ContinuousFlow documents its dynamics' time as one 0-dim tensor for the batch, and the ODE
solves of ``sample``/``log_prob`` pass that, while flow-matching training passes one time per
example, shape ``(B,)``. Checked: a network written for the 0-dim time (``t.expand(B, 1)``, or
``t * ones(B, 1)``, which broadcast (B,) into (B, B)) gets one error naming the cause and the
fix, where it got torch's "expanded size" / "mat1 and mat2 shapes" errors; the fix the error
names trains and matches the flow's own ODE log-density (against ContinuousFlow through a
TransformedDistribution); other failures keep their own error or name the wrong shape.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_gen.diffusion import FlowMatching
from pyro_gen.transforms.continuous import ContinuousFlow


class OneTime(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.f, self.how = nn.Linear(3, 2), how

    def forward(self, x, t):
        if self.how == "expand":
            t = t.expand(x.shape[0], 1)
        elif self.how == "ones":
            t = t * torch.ones_like(x[:, :1])
        else:  # the idiom the error names: (B,) or () alike
            t = t.expand(x.shape[:1])[:, None]
        return self.f(torch.cat([x, t.to(x)], -1))


def _loss(fm, x):
    return pyro.infer.Trace_ELBO().loss(fm.model, fm.guide, x)


@pytest.mark.parametrize("how", ["expand", "ones"])
def test_a_network_for_one_time_per_batch_is_named(how):
    fm = FlowMatching(ContinuousFlow(OneTime(how), (2,)))
    assert fm.sample(2).shape == (2, 2)  # the ODE solve's 0-dim time suits it
    with pytest.raises(ValueError, match=r"one time per example.*t.expand\(x.shape\[:1\]\)"):
        _loss(fm, torch.randn(16, 2))


def test_the_named_idiom_trains_and_samples_with_the_flows_own_density():
    torch.manual_seed(0)
    flow = ContinuousFlow(OneTime("either"), (2,), rtol=1e-6, atol=1e-6)
    fm = FlowMatching(flow)
    x = torch.randn(16, 2)
    assert torch.isfinite(torch.tensor(_loss(fm, x)))
    own = dist.TransformedDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1), [flow])
    torch.testing.assert_close(fm.log_prob(x[:4]), own.log_prob(x[:4]), atol=1e-4, rtol=1e-4)


class IgnoresTime(nn.Module):
    """A linear map of x alone: (2, 3) returns the wrong width, (5, 2) fails on 2-d input."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.f = nn.Linear(in_dim, out_dim)

    def forward(self, x, t):
        return self.f(x)


def test_other_failures_keep_their_error_or_name_the_shape():
    with pytest.raises(ValueError, match=r"returned shape \(16, 3\) for points of shape \(16, 2\)"):
        _loss(FlowMatching(ContinuousFlow(IgnoresTime(2, 3), (2,))), torch.randn(16, 2))
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        _loss(FlowMatching(ContinuousFlow(IgnoresTime(5, 2), (2,))), torch.randn(16, 2))
