"""impute of pyro_gen.vae on probabilistic PCA, written with Pyro's obs_mask and with a
masked likelihood, against the Gaussian conditional of the missing entries given the observed
ones (its mean and, for multiple imputations, its variance).

Each case either gives the right answer, checked against the user's own networks called by
hand in evaluation mode, a closed form or Pyro's own ELBO on the same seed, and leaves the
networks' modes and buffers, the param store and the RNG as they were; or it raises one clear
error (the helper or the site named, no Pyro trace dump). Shared checks live in
vae_helper_checks.py."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from pyro_gen.vae import impute
from tests.user_programs import missing_data
from tests.user_programs.vae_helper_checks import (
    fresh_pyro,  # noqa: F401 - pytest fixtures, used by name
)

# --- PPCA with Pyro's obs_mask: imputation against the Gaussian conditional ---------------


class ExactPosterior(torch.nn.Module):
    """PPCA's posterior of z given a row's observed entries (b = 0), its scale widened 1.5x:
    the encoder a trained guide approaches."""

    def __init__(self, w: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.w, self.sigma = w, sigma

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        locs, scales = [], []
        for row, seen in zip(x, mask):
            w_o = self.w[:, seen]
            cov = torch.linalg.inv(torch.eye(self.w.shape[0]) + w_o @ w_o.T / self.sigma**2)
            locs.append(cov @ w_o @ row[seen] / self.sigma**2)
            scales.append(1.5 * cov.diagonal().sqrt())
        return torch.stack(locs), torch.stack(scales)


def ppca_conditional(x, mask, w, sigma):
    """Each missing entry's mean and variance given the row's observed entries (b = 0)."""
    cov = w.T @ w + sigma**2 * torch.eye(w.shape[1])
    mean, var = x.clone(), torch.zeros_like(x)
    for n in range(x.shape[0]):
        o, u = mask[n], ~mask[n]
        gain = cov[u][:, o] @ torch.linalg.inv(cov[o][:, o])
        mean[n, u] = gain @ x[n, o]
        var[n, u] = (cov[u][:, u] - gain @ cov[o][:, u]).diagonal()
    return mean, var


def _ppca_store() -> torch.Tensor:
    """The param store at the loadings that generated ``missing_data.rows``, noise 0.3."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(missing_data.RANK, missing_data.DIM, generator=g)
    pyro.param("w", w.clone())
    pyro.param("b", torch.zeros(missing_data.DIM))
    pyro.param("sigma", torch.tensor(0.3), constraint=dist.constraints.positive)
    return w


def test_ppca_imputation_is_the_gaussian_conditional_mean():
    x, mask = missing_data.rows(8)
    w = _ppca_store()
    guide = missing_data.Guide()
    guide.encoder = ExactPosterior(w, 0.3)  # a good proposal: the weights do the rest
    expected, _ = ppca_conditional(x, mask, w, 0.3)
    # obs_mask splits the site: x_observed is the data; x, the deterministic merge of the
    # data and the imputations, is no observation, so impute finds x_observed unnamed
    draws = []
    for site in ({}, {"site": "x_observed"}):
        pyro.set_rng_seed(0)
        draws.append(impute(missing_data.model, x, mask, guide=guide, num_samples=10, **site))
    assert torch.equal(*draws)
    pyro.set_rng_seed(0)
    got = impute(
        missing_data.model, x, mask, guide=guide, site="x_observed", num_samples=20000, chunk=5000
    )
    assert torch.equal(got[mask], x[mask])
    # self-normalised importance sampling, 20000 draws of a good proposal: a few thousandths
    assert (got - expected).abs().max() < 0.03


def test_ppca_multiple_imputations_follow_the_gaussian_conditional():
    x, mask = missing_data.rows(4)
    w = _ppca_store()
    guide = missing_data.Guide()
    guide.encoder = ExactPosterior(w, 0.3)
    mean, var = ppca_conditional(x, mask, w, 0.3)
    draws = impute(
        missing_data.model,
        x,
        mask,
        guide=guide,
        site="x_observed",
        num_samples=2000,
        chunk=2000,
        num_imputations=300,
    )
    assert torch.equal(draws[:, mask], x[mask].expand(300, -1))
    missing = ~mask
    z = (draws.mean(0) - mean)[missing] / (var[missing].sqrt() / math.sqrt(300))
    assert z.abs().max() < 4
    ratio = draws.var(0)[missing] / var[missing]  # standard error about 0.08
    assert ((ratio > 0.65) & (ratio < 1.35)).all(), ratio


def masked_ppca(x, mask=None):
    """The PPCA written with a masked likelihood, as impute's docstring asks (not obs_mask)."""
    w, b, sigma = missing_data._params()
    with pyro.plate("rows", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(missing_data.RANK), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w + b, sigma).mask(mask).to_event(1), obs=x)


def test_masked_likelihood_ppca_imputation_is_the_gaussian_conditional_mean():
    x, mask = missing_data.rows(6)
    w = _ppca_store()
    encoder = ExactPosterior(w, 0.3)

    def guide(x, mask=None):
        with pyro.plate("rows", x.shape[0]):
            loc, scale = encoder(x, mask)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    mean, _ = ppca_conditional(x, mask, w, 0.3)
    got = impute(masked_ppca, x, mask, guide=guide, num_samples=20000, chunk=5000)
    assert torch.equal(got[mask], x[mask])
    assert (got - mean).abs().max() < 0.03
