"""``torch.compile`` (Inductor, its default backend) of a user's log-density over a
continuous flow gives the eager value.

The other transforms compile as they are (checked by hand over the registry; too slow to
repeat here). The ODE solve of :class:`~pyro_gen.transforms.ContinuousFlow` is run eagerly
under compile: torchdiffeq's adaptive step control calls ``unique()``, which Inductor cannot
lower, so compiling a CNF's ``log_prob`` used to fail after a minute of compiling.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

import pyro_gen.transforms as T


def test_compiled_log_prob_of_a_continuous_flow_is_the_eager_one() -> None:
    torch.manual_seed(0)
    t = T.cnf(2, (4,), trace="exact").eval()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the zero drift
    base = dist.Normal(torch.zeros(2), 1.0).to_event(1)

    def log_prob(y: torch.Tensor) -> torch.Tensor:
        return dist.TransformedDistribution(base, [t.with_cache(0)]).log_prob(y)

    y = torch.randn(5, 2)
    torch._dynamo.reset()
    got = torch.compile(log_prob)(y)
    torch.testing.assert_close(got, log_prob(y), atol=1e-5, rtol=1e-5)
