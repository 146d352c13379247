"""``evaluate_elbo`` / ``iwae_log_likelihood`` with exact-posterior guides in float64 (an
amortized ``.double()`` encoder; a global latent with a subsampled plate): every bound equals
the closed-form log p(x) to float64 precision.

The two ways Pyro users get to double precision are both run: ``torch.set_default_dtype(
torch.float64)`` ("default"), or float32 defaults with float64 data and networks moved with
``.double()`` ("double"); float64_programs.py holds the programs and loops shared by the
test_float64_*.py files."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from torch import nn

from pyro_gen.infer import evaluate_elbo, iwae_log_likelihood
from tests.user_programs.float64_programs import (
    MODES,
    X_DIM,
    Z_DIM,
    N,
    _as_user_builds,
    _data,
    _enter,
    _restore_default_dtype,  # noqa: F401 - pytest fixtures, used by name
)


class LinearGaussianVAE(nn.Module):
    """z ~ N(0, I), x | z ~ N(W z + b, s^2 I): x ~ N(b, W W^T + s^2 I). The guide is an
    amortized encoder (an nn.Linear) set to the exact posterior, so log p(x, z) - log q(z|x)
    = log p(x) for every draw."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = torch.randn(X_DIM, Z_DIM, generator=g, dtype=torch.float64)
        self.b = torch.randn(X_DIM, generator=g, dtype=torch.float64)
        self.noise = 0.5
        precision = torch.eye(Z_DIM, dtype=torch.float64) + self.W.T @ self.W / self.noise**2
        cov = torch.linalg.inv(precision)
        gain = cov @ self.W.T / self.noise**2  # posterior mean = gain (x - b)
        self.encoder = _as_user_builds(nn.Linear(X_DIM, Z_DIM), mode)
        with torch.no_grad():
            self.encoder.weight.copy_(gain)
            self.encoder.bias.copy_(-gain @ self.b)
        self.scale_tril = torch.linalg.cholesky(cov)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.encoder(x), scale_tril=self.scale_tril))

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(X_DIM, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)


class GlobalGaussian:
    """x_i = w + z_i + e_i, all N(0, 1): the guide q(w) q(z_i | x_i, w) is the exact
    posterior, so every bound is log p(X) at any batch size."""

    def __init__(self, x: torch.Tensor) -> None:
        precision = 1.0 + x.shape[0] / 2.0
        self.x = x
        self.w_loc, self.w_scale = x.sum(0) / 2.0 / precision, precision**-0.5

    def model(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        w = pyro.sample("w", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
        with pyro.plate("data", self.x.shape[0], subsample=idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(X_DIM), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(w + z, 1.0).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        w = pyro.sample("w", dist.Normal(self.w_loc, self.w_scale).to_event(1))
        with pyro.plate("data", self.x.shape[0], subsample=idx):
            pyro.sample("z", dist.Normal((x - w) / 2.0, 0.5**0.5).to_event(1))

    def log_evidence(self) -> float:
        n = self.x.shape[0]
        cov = 2.0 * torch.eye(n, dtype=torch.float64) + 1.0
        mvn = dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov)
        return float(mvn.log_prob(self.x.T).sum())  # the X_DIM columns are independent


@pytest.mark.parametrize("mode", MODES)
def test_bounds_equal_the_closed_form_evidence_to_float64_precision(mode):
    _enter(mode)
    lg = LinearGaussianVAE(mode)
    x = 3.0 * _data() + 1.0 / 3.0  # values float32 cannot hold
    exact = lg.log_evidence(x)
    for batch_size in (N, 5):
        kw = {"guide": lg.guide, "batch_size": batch_size}
        values = {
            "elbo": evaluate_elbo(lg.model, x, per_example=True, **kw),
            "iwae": iwae_log_likelihood(lg.model, x, num_samples=7, per_example=True, **kw),
        }
        for name, v in values.items():
            assert v.dtype == torch.float64, name
            torch.testing.assert_close(v, exact, rtol=1e-13, atol=1e-12, msg=name)
        mean = iwae_log_likelihood(lg.model, x, num_samples=3, **kw)
        assert mean == pytest.approx(exact.mean().item(), abs=1e-12)

    gg = GlobalGaussian(x)
    data = (x, torch.arange(N))
    for batch_size in (N, 5):
        kw = {"guide": gg.guide, "batch_size": batch_size}
        elbo = evaluate_elbo(gg.model, data, **kw)
        iwae = iwae_log_likelihood(gg.model, data, num_samples=3, **kw)
        assert elbo == pytest.approx(gg.log_evidence() / N, abs=1e-12), batch_size
        assert iwae == pytest.approx(gg.log_evidence() / N, abs=1e-12), batch_size
