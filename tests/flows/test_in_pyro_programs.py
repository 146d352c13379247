"""Ready-made flows as priors in plain Pyro programs (autoguides, MCMC), with no wrapper."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch.distributions import biject_to, constraints

from pyro_gen.flows import MAF, Glow


@pytest.mark.parametrize(
    "make",
    [
        lambda: Glow((4, 4), depth=1, hidden_channels=4, num_blocks=1),
        lambda: MAF((4, 4), num_layers=1, hidden_dims=(8,)),
        lambda: MAF((1, 4, 4), num_layers=1, hidden_dims=(8,)),
    ],
    ids=["glow_hw", "maf_hw", "maf_chw"],
)
def test_image_flow_support_is_the_pixel_interval(make) -> None:
    # an image flow on (H, W) data ended in a reshape, whose codomain (the distribution's
    # support) is all reals; Pyro's autoguides and MCMC map reals into the support with
    # biject_to(support), and the density failed on the pixels that proposed
    torch.manual_seed(0)
    flow = make().eval()
    prior = flow.distribution()
    support = prior.support
    assert isinstance(support, constraints.independent)
    assert support.reinterpreted_batch_ndims == len(flow.event_shape)
    lo, hi = support.base_constraint.lower_bound, support.base_constraint.upper_bound
    assert lo < 0.0 and hi > 1.0
    x = biject_to(support)(10.0 * torch.randn(3, *flow.event_shape))
    assert bool(torch.isfinite(prior.log_prob(x)).all())

    # a flow prior on a clean image, observed through noise, with an autoguide
    def model(y):
        x = pyro.sample("x", prior)
        pyro.sample("y", dist.Normal(x, 0.1).to_event(len(flow.event_shape)), obs=y)

    pyro.clear_param_store()
    guide = AutoNormal(model, init_scale=3.0)
    assert math.isfinite(Trace_ELBO().loss(model, guide, torch.rand(flow.event_shape)))
