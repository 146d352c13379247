"""The model the AutoAmortizedNormal init-strategy tests share: a positive global beside
local sites of every support, with prior means away from the feasible point."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

N = 6
LOCAL = ["z", "s", "w", "c", "L"]


def model(x):
    """A positive global, and local sites with real, positive, simplex, multivariate and
    Cholesky-factor supports, whose prior means are not the feasible point."""
    a = pyro.sample("a", dist.LogNormal(1.0, 0.5))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(3.0, 1.0).expand([2]).to_event(1))
        s = pyro.sample("s", dist.Gamma(4.0, 2.0))
        w = pyro.sample("w", dist.Dirichlet(torch.tensor([1.0, 2.0, 3.0])))
        c = pyro.sample("c", dist.MultivariateNormal(torch.tensor([-1.0, 2.0]), torch.eye(2)))
        pyro.sample("L", dist.LKJCholesky(2, torch.tensor(1.0)))
        mean = z.sum(-1) + s + w[..., 0] + c[..., 0]
        pyro.sample("x", dist.Normal(mean, a), obs=x[:, 0])


#: the prior means (init_to_mean's values), per site
MEANS = {
    "a": torch.tensor(math.exp(1.0 + 0.5**2 / 2)),
    "z": torch.tensor([3.0, 3.0]),
    "s": torch.tensor(2.0),
    "w": torch.tensor([1.0, 2.0, 3.0]) / 6,
    "c": torch.tensor([-1.0, 2.0]),
    "L": torch.eye(2),
}
