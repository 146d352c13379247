"""A model with a global latent over a two-level plate hierarchy, with closed-form evidence.

g ~ N(0, 1);  u_j | g ~ N(g, 1) for groups j;  x_jm | u_j ~ N(u_j, s^2) for members m.
Then vec(X) ~ N(0, s^2 I + blockdiag(1 1^T) + 1 1^T), the posterior of g depends on the
group means (x̄_j | g ~ N(g, 1 + s^2 / M)), and u_j | x_j, g is Gaussian, so a guide can be
the exact posterior (zero-variance ELBO) or the exact one with q(g) or q(u | x, g) widened.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch


class HierarchicalGaussian:
    """Groups under a subsampled plate ``groups`` (the data plate), members under ``members``.

    The model and guide take ``(x, idx)``: the groups of a batch (shape (B, M)) and their
    indices in the full data set, which the plate subsamples, as a minibatched Pyro model
    with global latents does.
    """

    def __init__(
        self,
        x: torch.Tensor,
        noise: float = 0.7,
        global_scale: float = 1.0,
        local_scale: float = 1.0,
        groups: str = "groups",
        members: str = "members",
    ) -> None:
        self.x, self.noise = x, noise
        self.global_scale, self.local_scale = global_scale, local_scale
        self.groups, self.members = groups, members
        num_groups, num_members = x.shape
        var_mean = 1.0 + noise**2 / num_members
        precision = 1.0 + num_groups / var_mean
        self.g_loc = float(x.mean(1).sum() / var_mean / precision)
        self.g_scale = math.sqrt(1.0 / precision)

    def log_evidence(self) -> float:
        """log p(X) of the whole data set."""
        num_groups, num_members = self.x.shape
        n = num_groups * num_members
        ones = torch.ones(num_members, num_members, dtype=torch.float64)
        same_group = torch.block_diag(*[ones] * num_groups)
        cov = self.noise**2 * torch.eye(n, dtype=torch.float64) + same_group + 1.0
        mvn = dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov)
        return float(mvn.log_prob(self.x.reshape(-1)))

    def global_kl(self) -> float:
        """KL(q(g) || p(g | X)) for q(g) the posterior with its scale times global_scale."""
        s = self.global_scale
        return s**2 / 2 - 0.5 - math.log(s)

    def model(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        g = pyro.sample("g", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate(self.groups, self.x.shape[0], subsample=idx, dim=-2):
            u = pyro.sample("u", dist.Normal(g, 1.0))
            with pyro.plate(self.members, x.shape[1], dim=-1):
                pyro.sample("x", dist.Normal(u, self.noise), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        loc = torch.tensor(self.g_loc, dtype=x.dtype)
        g = pyro.sample("g", dist.Normal(loc, self.g_scale * self.global_scale))
        precision = 1.0 + x.shape[1] / self.noise**2
        with pyro.plate(self.groups, self.x.shape[0], subsample=idx, dim=-2):
            u_loc = (g + x.sum(-1, keepdim=True) / self.noise**2) / precision
            pyro.sample("u", dist.Normal(u_loc, precision**-0.5 * self.local_scale))


def sample_data(num_groups: int = 20, num_members: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    top = torch.randn((), generator=g, dtype=torch.float64)
    u = top + torch.randn(num_groups, 1, generator=g, dtype=torch.float64)
    return u + 0.7 * torch.randn(num_groups, num_members, generator=g, dtype=torch.float64)
