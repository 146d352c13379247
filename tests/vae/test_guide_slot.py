"""Swapping a VAE's guide: at construction, by assignment, or for one fit run; posterior
families are refused as guides with a pointer to posterior=; the old names warn."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_gen.vae import (
    LATENT,
    VAE,
    AutoAmortizedNormal,
    HierarchicalVAE,
    NormalPosterior,
    make_posterior,
    make_prior,
)

SHAPE = (4, 4)


def data(n=6):
    return torch.rand(n, *SHAPE).round()


def test_assigned_guide_is_the_one_used_and_saved():
    vae = VAE(SHAPE, z_dim=2, hidden_dim=8)
    auto = AutoAmortizedNormal(vae.model, hidden_dims=(8,))
    vae.guide = auto
    assert vae.guide is auto and vae.custom_guide is auto
    x = data()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(x)
    before = [p.detach().clone() for p in auto.parameters()]
    svi.step(x)
    assert any(not torch.equal(a, b) for a, b in zip(before, auto.parameters()))
    assert any(k.startswith("custom_guide.net.") for k in vae.state_dict())
    tr = poutine.trace(vae.guide).get_trace(x)
    assert tr.nodes[LATENT]["value"].shape == (6, 2)
    assert torch.equal(vae.encode(x), auto.encode(x)[LATENT])  # the guide's median
    vae.guide = None  # back to the built-in guide over the posterior family
    assert vae.guide == vae.default_guide and vae.custom_guide is None
    assert not any(k.startswith("custom_guide") for k in vae.state_dict())


def test_hand_written_guide_at_construction():
    loc = torch.nn.Parameter(torch.zeros(2))

    def guide(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample(LATENT, dist.Normal(loc, 1.0).to_event(1))

    vae = VAE(SHAPE, z_dim=2, hidden_dim=8, guide=guide)
    assert vae.guide is guide and vae.posterior is None
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, data())
    assert torch.isfinite(loss)
    vae.guide = None
    with pytest.raises(ValueError, match="no posterior family"):
        vae.guide(data())


def test_fit_takes_a_guide_for_one_run():
    from pyro_gen.infer import fit

    vae = VAE(SHAPE, z_dim=2, hidden_dim=8)
    auto = AutoAmortizedNormal(vae.model, hidden_dims=(8,))
    fit(vae, data(16), guide=auto, steps=3, batch_size=8, progress=False, compile=False)
    assert vae.guide == vae.default_guide  # the module is left as it was
    assert auto.net is not None and set(auto.local_sites) == {LATENT}


def test_posterior_families_and_non_guides_are_refused():
    family = make_posterior("normal", SHAPE, 2, 8)
    with pytest.raises(TypeError, match=r"posterior family.*VAE\(\.\.\., posterior=\.\.\.\)"):
        VAE(SHAPE, z_dim=2, hidden_dim=8, guide=family)
    vae = VAE(SHAPE, z_dim=2, hidden_dim=8, posterior=family)
    assert vae.posterior is family and vae.guide == vae.default_guide
    with pytest.raises(TypeError, match="posterior family"):
        vae.guide = NormalPosterior(family.encoder)
    with pytest.raises(TypeError, match="callable with pyro.sample"):
        vae.guide = "normal"
    with pytest.raises(ValueError, match="Pyro guide callable or 'auto'"):
        VAE(SHAPE, z_dim=2, guide="iaf")
    with pytest.raises(TypeError, match=r"is a Pyro guide.*guide=\.\.\."):
        VAE(SHAPE, z_dim=2, posterior=AutoAmortizedNormal(vae.model))
    vamp = VAE(SHAPE, z_dim=2, hidden_dim=8, prior=make_prior("vamp", 2, SHAPE, 3))
    with pytest.raises(ValueError, match="VampPrior"):
        vamp.guide = AutoAmortizedNormal(vamp.model)


def test_hierarchical_vae_guide_is_swappable():
    hvae = HierarchicalVAE(SHAPE, z_dims=(3, 2), hidden_dim=8)
    hvae.guide = AutoAmortizedNormal(hvae.model, hidden_dims=(8,))
    x = data()
    tr = poutine.trace(hvae.guide).get_trace(x)
    assert {"z1", "z2"} <= set(tr.nodes)
    assert torch.isfinite(Trace_ELBO().differentiable_loss(hvae.model, hvae.guide, x))
    assert hvae.encode(x).shape == (6, 3)


def test_hierarchical_vae_builds_the_autoguide_and_no_unused_encoders():
    """``guide="auto"``: the autoguide reads the observed rows (missing entries as zero, not
    the NaNs a user may put there), its weights load before the first call, and restoring
    the built-in guide, which was not built, says so."""
    pyro.clear_param_store()
    hvae = HierarchicalVAE(SHAPE, z_dims=(3, 2), hidden_dim=8, guide="auto")
    assert isinstance(hvae.guide, AutoAmortizedNormal)
    assert not any(k.startswith("encoders.") for k in hvae.state_dict())
    twin = HierarchicalVAE(SHAPE, z_dims=(3, 2), hidden_dim=8, guide="auto")
    twin.load_state_dict(hvae.state_dict())  # before either guide has run
    x, mask = data(), torch.rand(6, *SHAPE) > 0.3
    with_nan = torch.where(mask, x, torch.nan)
    loss = Trace_ELBO().differentiable_loss
    pyro.set_rng_seed(0)
    a = loss(hvae.model, hvae.guide, with_nan, mask=mask)
    pyro.set_rng_seed(0)
    b = loss(twin.model, twin.guide, x * mask, mask=mask)
    assert torch.isfinite(a) and torch.allclose(a, b)
    assert hvae.encode(x).shape == (6, 3)
    hvae.guide = None
    with pytest.raises(ValueError, match="no built-in encoders; assign a guide"):
        hvae.encode(x)
    with pytest.raises(ValueError, match="Pyro guide callable or 'auto'"):
        HierarchicalVAE(SHAPE, guide="Auto")


def test_old_names_warn_and_point_to_the_new_ones():
    import pyro_gen.vae as vae_module

    with pytest.warns(FutureWarning, match="NormalGuide was renamed NormalPosterior"):
        assert vae_module.NormalGuide is NormalPosterior
    with pytest.warns(FutureWarning, match="make_posterior"):
        assert vae_module.make_guide is make_posterior
    with pytest.raises(AttributeError):
        vae_module.NoSuchGuide  # noqa: B018
