"""``FlowDistribution.entropy()`` (a ``FlowPrior``'s, a ``Flow``'s, an ``IAFPosterior``'s)
and its ``mean``/``variance`` raised torch's bare ``NotImplementedError``, as the mixture's
did. They still raise that type (callers that catch it keep working) and now say there is no
closed form and what to use; the estimates they recommend are checked against the closed
forms of an affine flow."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal, init_to_mean

from pyro_gen.distributions.flow import FlowDistribution
from pyro_gen.vae import FlowPrior


def test_entropy_says_there_is_no_closed_form_and_its_estimate_is_right():
    """The message's estimate on an affine flow z = 1 + s * u, u ~ N(0, I), whose entropy
    is the base's plus sum(log s)."""
    with pytest.raises(NotImplementedError, match="no closed-form entropy.*Monte Carlo") as e:
        FlowPrior(2, num_flows=1, hidden_dims=(4,))().entropy()
    assert "-d.log_prob(d.sample((n,))).mean(0)" in str(e.value)
    torch.manual_seed(0)
    scale = torch.tensor([0.5, 3.0], dtype=torch.float64)
    base = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    d = FlowDistribution(base, [dist.transforms.AffineTransform(1.0, scale, event_dim=1)])
    exact = base.entropy().item() + scale.log().sum().item()
    n = 20000
    draws = -d.log_prob(d.sample((n,)))
    estimate, stderr = draws.mean(0).item(), (draws.std() / math.sqrt(n)).item()
    assert abs(estimate - exact) < 4 * stderr


def test_mean_and_variance_say_so_and_pyros_init_to_mean_still_falls_back():
    """``mean``/``variance``/``stddev`` raised torch's bare NotImplementedError too; the
    messages' estimates on the affine flow (mean 1, variance s^2), and the same type, which
    Pyro's ``init_to_mean`` catches to start a FlowPrior site from a draw instead."""
    prior = FlowPrior(2, num_flows=1, hidden_dims=(4,))
    for name in ("mean", "variance", "stddev"):
        with pytest.raises(NotImplementedError, match=r"no closed-form .*Monte Carlo, d\.sample"):
            getattr(prior(), name)
    torch.manual_seed(1)
    scale = torch.tensor([0.5, 3.0], dtype=torch.float64)
    base = dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1)
    d = FlowDistribution(base, [dist.transforms.AffineTransform(1.0, scale, event_dim=1)])
    n = 20000
    draws = d.sample((n,))
    assert bool(((draws.mean(0) - 1.0).abs() < 4 * scale / math.sqrt(n)).all())
    # the sample variance's standard error is s^2 sqrt(2 / (n - 1)) for a Normal
    assert bool(((draws.var(0) - scale**2).abs() < 4 * scale**2 * math.sqrt(2 / (n - 1))).all())

    def model():
        with pyro.plate("data", 3):
            pyro.sample("z", prior())

    pyro.clear_param_store()
    guide = AutoNormal(model, init_loc_fn=init_to_mean)
    assert guide()["z"].shape == (3, 2)  # set up from a draw, not stopped by the message
