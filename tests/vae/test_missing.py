"""Missing data on the linear-Gaussian model, where everything is closed-form:

x ~ N(b, C),  C = W W^T + s^2 I,
p(x_o) = N(b_o, C_oo),  p(x_u | x_o) = N(b_u + C_uo C_oo^-1 (x_o - b_o),
                                         C_uu - C_uo C_oo^-1 C_ou),
p(z | x_o) = N(S W_o^T (x_o - b_o) / s^2, S),  S = (I + W_o^T W_o / s^2)^-1.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.infer import fit, iwae_log_likelihood
from pyro_gen.vae import DATA_PLATE, LATENT, VAE, iwae
from pyro_gen.vae.missing import check_mask, impute, missing_at_random
from tests.vae.test_linear_gaussian import DX, DZ, SIG, LinearDecoder, problem  # noqa: F401


def closed_form(W, b, x, m):
    """Per example: log p(x_o), the conditional mean and variances of x_u, and the exact
    posterior of z given x_o."""
    C = W @ W.T + SIG**2 * torch.eye(DX)
    log_p, cond_mean, cond_var, z_loc, z_cov = [], x.clone(), torch.zeros_like(x), [], []
    for i in range(x.shape[0]):
        o, u = m[i], ~m[i]
        log_p.append(dist.MultivariateNormal(b[o], C[o][:, o]).log_prob(x[i, o]))
        gain = C[u][:, o] @ torch.linalg.inv(C[o][:, o])
        cond_mean[i, u] = b[u] + gain @ (x[i, o] - b[o])
        cond_var[i, u] = torch.diag(C[u][:, u] - gain @ C[o][:, u])
        S = torch.linalg.inv(torch.eye(DZ) + W[o].T @ W[o] / SIG**2)
        z_loc.append(S @ W[o].T @ (x[i, o] - b[o]) / SIG**2)
        z_cov.append(S)
    return torch.stack(log_p), cond_mean, cond_var, torch.stack(z_loc), torch.stack(z_cov)


@pytest.fixture(scope="module")
def incomplete(problem):  # noqa: F811
    W, b, x, _ = problem
    x = x[:16]
    m = missing_at_random(x.shape, 0.5, torch.Generator().manual_seed(3))
    m[:, 0] = True  # at least one observed and one missing value per example
    m[:, 1] = False
    return W, b, x, m, closed_form(W, b, x, m)


def exact_guide(z_loc, z_cov):
    def guide(x, mask=None, **kwargs):
        with pyro.plate(DATA_PLATE, x.shape[0]):
            pyro.sample(LATENT, dist.MultivariateNormal(z_loc, z_cov))

    return guide


def test_masked_likelihood_is_the_marginal_of_the_observed_values(incomplete):
    """With the exact posterior of z given x_o as guide every importance weight equals
    p(x_o), so the (MIWAE) importance-weighted estimate is exact."""
    W, b, x, m, (log_p, _, _, z_loc, z_cov) = incomplete
    vae = VAE((DX,), DZ, decoder=LinearDecoder(W, b))
    estimate = iwae_log_likelihood(
        vae,
        {"x": x, "mask": m},
        guide=exact_guide(z_loc, z_cov),
        num_samples=5,
        per_example=True,
    )
    assert torch.allclose(estimate, log_p.double(), atol=1e-4)
    bound = -iwae(5).loss(vae.model, exact_guide(z_loc, z_cov), x, mask=m) / x.shape[0]
    assert abs(bound - log_p.mean().item()) < 1e-4


def test_missing_values_never_reach_the_bound(incomplete):
    W, b, x, m, _ = incomplete
    vae = VAE((DX,), DZ, hidden_dim=8, decoder=LinearDecoder(W, b))
    scrambled = torch.where(m, x, torch.full_like(x, float("nan")))
    losses = []
    for data in (x, scrambled, torch.where(m, x, 100.0)):
        pyro.set_rng_seed(0)
        losses.append(iwae(4).loss(vae.model, vae.guide, data, mask=m))
    assert losses[0] == losses[1] == losses[2]
    pyro.set_rng_seed(0)
    assert iwae(4).loss(vae.model, vae.guide, x) != losses[0]  # the mask does something


def test_impute_is_the_closed_form_conditional_mean(incomplete):
    """Self-normalised importance sampling with the untrained encoder as proposal converges
    to E[x_u | x_o]; with the exact posterior as proposal a few draws suffice."""
    W, b, x, m, (_, cond_mean, cond_var, z_loc, z_cov) = incomplete
    pyro.set_rng_seed(0)
    vae = VAE((DX,), DZ, hidden_dim=8, decoder=LinearDecoder(W, b))
    filled = impute(vae, x, m, num_samples=20000, chunk=5000)
    assert torch.equal(filled[m], x[m])
    # Monte Carlo error of the posterior mean of W_u z: sd <= 2 / sqrt(ESS ~ thousands)
    assert (filled - cond_mean).abs().max() < 0.08
    assert (x[~m] - cond_mean[~m]).abs().mean() > 0.3  # the check can fail

    vae.guide = exact_guide(z_loc, z_cov)
    filled = impute(vae, x, m, num_samples=4000)
    assert (filled - cond_mean).abs().max() < 0.05


def test_multiple_imputations_follow_the_conditional(incomplete):
    W, b, x, m, (_, cond_mean, cond_var, z_loc, z_cov) = incomplete
    pyro.set_rng_seed(1)
    vae = VAE((DX,), DZ, decoder=LinearDecoder(W, b), guide=exact_guide(z_loc, z_cov))
    draws = impute(vae, x, m, num_samples=3000, num_imputations=3000)
    assert draws.shape == (3000, *x.shape)
    assert torch.equal(draws[:, m], x[m].expand(3000, -1))
    u = ~m
    assert (draws.mean(0)[u] - cond_mean[u]).abs().max() < 0.1
    ratio = draws.var(0)[u] / cond_var[u]
    assert ratio.min() > 0.85 and ratio.max() < 1.15


def test_fit_trains_miwae_from_a_dict_of_x_and_mask(incomplete):
    W, b, x, m, (log_p, *_) = incomplete
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    vae = VAE((DX,), DZ, hidden_dim=16, decoder=LinearDecoder(W, b))
    before = iwae_log_likelihood(vae, {"x": x, "mask": m}, num_samples=20)
    fit(
        vae,
        {"x": x, "mask": m},
        loss=iwae(8),
        steps=150,
        batch_size=16,
        progress=False,
        optim=pyro.optim.Adam({"lr": 3e-2}),
    )
    after = iwae_log_likelihood(vae, {"x": x, "mask": m}, num_samples=20)
    exact = log_p.mean().item()
    assert before < after <= exact + 0.05
    assert exact - after < 0.5 * (exact - before)


def test_mask_errors_are_clear():
    x = torch.rand(3, 4).round()
    vae = VAE((4,), 2, hidden_dim=8)
    with pytest.raises(ValueError, match=r"mask must have the shape of x, \(3, 4\)"):
        vae.model(x, mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must have the shape of x"):
        impute(vae, x, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 .missing. and 1 .observed."):
        check_mask(x, torch.full((3, 4), 0.5))
    with pytest.raises(TypeError, match="mask must be a tensor"):
        check_mask(x, [[1, 0, 1, 0]] * 3)
    with pytest.raises(ValueError, match="pass x too"):
        vae.model(None, mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="missing rate must be in"):
        missing_at_random((3, 4), 1.0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        impute(vae, x, torch.ones(3, 4, dtype=torch.bool), num_samples=0)


def test_the_hierarchical_vae_scores_only_observed_pixels_too():
    from pyro_gen.vae import HierarchicalVAE

    x = torch.rand(4, 6).round()
    m = torch.rand(4, 6) < 0.5
    hvae = HierarchicalVAE((6,), z_dims=(3, 2), hidden_dim=8)
    losses = []
    for data in (x, torch.where(m, x, float("nan")), torch.where(m, x, 1 - x)):
        pyro.set_rng_seed(0)
        losses.append(iwae(4).loss(hvae.model, hvae.guide, data, mask=m))
    assert losses[0] == losses[1] == losses[2]
    pyro.set_rng_seed(0)
    assert iwae(4).loss(hvae.model, hvae.guide, x) != losses[0]


def test_models_without_a_mask_refuse_it_rather_than_ignore_it():
    from pyro_gen.vae import SSVAE

    m2 = SSVAE((6,), num_classes=3, z_dim=2, hidden_dims=(8,))
    with pytest.raises(TypeError, match="mask"):
        m2.model(torch.rand(2, 6).round(), mask=torch.ones(2, 6, dtype=torch.bool))
