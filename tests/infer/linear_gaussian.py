"""A latent model with closed-form marginal likelihood and posterior, for checking estimators.

z ~ N(0, I_k),  x | z ~ N(W z + b, s^2 I_d)  =>  x ~ N(b, W W^T + s^2 I_d).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


class LinearGaussian(torch.nn.Module):
    def __init__(
        self, x_dim: int = 3, z_dim: int = 2, noise: float = 0.5, guide_scale: float = 1.0
    ):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("W", torch.randn(x_dim, z_dim, generator=g, dtype=torch.float64))
        self.register_buffer("b", torch.randn(x_dim, generator=g, dtype=torch.float64))
        self.noise = noise
        # The guide is the exact posterior with its scale multiplied by guide_scale, so
        # guide_scale != 1 gives a strictly loose ELBO.
        self.guide_scale = guide_scale
        self.log_scale_shift = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.W.shape[1]
        precision = torch.eye(k, dtype=x.dtype) + self.W.T @ self.W / self.noise**2
        cov = torch.linalg.inv(precision)
        loc = (x - self.b) @ self.W @ cov.T / self.noise**2
        return loc, torch.linalg.cholesky(cov)

    def exact_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(self.W.shape[0], dtype=x.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("linear_gaussian", self)
        k = self.W.shape[1]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(k, dtype=x.dtype), 1.0).to_event(1))
            loc = z @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, self.noise).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("linear_gaussian", self)
        loc, scale_tril = self.exact_posterior(x)
        scale_tril = scale_tril * self.guide_scale * self.log_scale_shift.exp()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))
