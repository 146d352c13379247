"""``impute`` on a user's own Pyro model (plain functions, their own site and plate names),
against the closed form of the linear-Gaussian model (tests/vae/test_missing.py)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.vae.missing import impute
from tests.vae.test_linear_gaussian import DZ, SIG, problem  # noqa: F401
from tests.vae.test_missing import incomplete  # noqa: F401


def user_model(W, b, vectorized=True):
    """x = W z + b + SIG eps, as a user writes it: own names, the mask on the likelihood."""

    def model(x, mask=None):
        with pyro.plate("examples", x.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            if not vectorized:  # written for one draw per example only
                z = z.reshape(x.shape[0], DZ)
            pyro.sample("pixels", dist.Normal(z @ W.T + b, SIG).mask(mask).to_event(1), obs=x)

    return model


def posterior_guide(z_loc, z_cov):
    def guide(x, mask=None):
        with pyro.plate("examples", x.shape[0]):
            pyro.sample("code", dist.MultivariateNormal(z_loc, z_cov))

    return guide


def test_a_users_model_is_imputed_at_the_closed_form_conditional_mean(incomplete):  # noqa: F811
    W, b, x, m, (_, cond_mean, _, z_loc, z_cov) = incomplete
    pyro.set_rng_seed(0)
    model, guide = user_model(W, b), posterior_guide(z_loc, z_cov)
    scrambled = torch.where(m, x, torch.nan)  # what is missing is never read
    # chunks smaller than the draws: the running normaliser joins them
    filled = impute(model, scrambled, m, guide=guide, num_samples=4000, chunk=700)
    assert torch.equal(filled[m], x[m])
    assert (filled - cond_mean).abs().max() < 0.05
    assert (x[~m] - cond_mean[~m]).abs().mean() > 0.3  # the check can fail


def test_a_model_that_does_not_broadcast_is_imputed_one_draw_at_a_time(incomplete):  # noqa: F811
    W, b, x, m, (_, cond_mean, _, z_loc, z_cov) = incomplete
    pyro.set_rng_seed(0)
    model = user_model(W, b, vectorized=False)
    with pytest.warns(UserWarning, match="draws particles one at a time"):
        filled = impute(model, x, m, guide=posterior_guide(z_loc, z_cov), num_samples=300)
    assert (filled - cond_mean).abs().max() < 0.12


def test_multiple_imputations_of_a_users_model_follow_the_conditional(incomplete):  # noqa: F811
    W, b, x, m, (_, cond_mean, cond_var, z_loc, z_cov) = incomplete
    pyro.set_rng_seed(1)
    draws = impute(
        user_model(W, b),
        x,
        m,
        guide=posterior_guide(z_loc, z_cov),
        num_samples=2000,
        chunk=500,
        num_imputations=600,
    )
    assert draws.shape == (600, *x.shape)
    assert torch.equal(draws[:, m], x[m].expand(600, -1))
    u = ~m
    # 600 draws: each mean within a few sd / sqrt(600) of the conditional one
    assert ((draws.mean(0)[u] - cond_mean[u]) / cond_var[u].sqrt()).abs().max() < 0.2
    assert abs(float((draws.var(0)[u] / cond_var[u]).mean()) - 1) < 0.1


def test_models_impute_cannot_read_are_refused_by_name(incomplete):  # noqa: F811
    W, b, x, m, (_, _, _, z_loc, z_cov) = incomplete
    guide = posterior_guide(z_loc, z_cov)

    def no_mask(x):
        with pyro.plate("examples", x.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            pyro.sample("pixels", dist.Normal(z @ W.T + b, SIG).to_event(1), obs=x)

    with pytest.raises(TypeError, match=r"calls model\(x, mask=mask"):
        impute(no_mask, x, m, guide=lambda x: None, num_samples=4)

    def global_scale(x, mask=None):
        s = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("examples", x.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            loc = z @ W.T + b
            pyro.sample("pixels", dist.Normal(loc, s[..., None]).mask(mask).to_event(1), obs=x)

    def global_guide(x, mask=None):
        pyro.sample("scale", dist.LogNormal(0.0, 0.1))
        guide(x, mask)

    with pytest.raises(ValueError, match=r"global latents \(guide sites \['scale'\]"):
        impute(global_scale, x, m, guide=global_guide, num_samples=4)

    def standardized(x, mask=None):  # observes a transform of x, not x
        with pyro.plate("examples", x.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([DZ]).to_event(1))
            obs = (x - b) / 2
            pyro.sample("pixels", dist.Normal(z @ W.T / 2, SIG).mask(mask).to_event(1), obs=obs)

    with pytest.raises(ValueError, match="does not observe x as given"):
        impute(standardized, x, m, guide=guide, num_samples=4)
    with pytest.raises(ValueError, match=r"site 'x' is not an observed site .* \['pixels'\]"):
        impute(user_model(W, b), x, m, guide=guide, site="x", num_samples=4)
    with pytest.raises(TypeError, match="a Pyro model callable with guide="):
        impute(user_model(W, b), x, m, num_samples=4)


def test_a_hierarchical_vae_is_imputed_through_its_trace():
    # impute read a one-layer VAE's decoder and latent site "z": a HierarchicalVAE (sites
    # z1, z2) failed with KeyError: 'z'
    from pyro_gen.vae import HierarchicalVAE

    pyro.set_rng_seed(0)
    hvae = HierarchicalVAE((6,), z_dims=(3, 2), hidden_dim=8)
    x = torch.rand(5, 6).round()
    m = torch.rand(5, 6) > 0.4
    filled = impute(hvae, x, m, num_samples=50)
    assert torch.equal(filled[m], x[m])
    assert ((filled > 0) & (filled < 1))[~m].all()  # Bernoulli means of the missing pixels
    assert hvae.training  # left as it was
    draws = impute(hvae, x, m, num_samples=50, num_imputations=3)
    assert draws.shape == (3, 5, 6) and ((draws == 0) | (draws == 1)).all()
