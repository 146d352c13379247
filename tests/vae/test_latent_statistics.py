"""The posterior diagnostics on any guide: a user's own model and guide functions, an
assigned autoguide, a flow guide and the layers of a hierarchical VAE, against closed forms
and against the built-in path of a pyro_gen VAE."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.vae import (
    VAE,
    AutoAmortizedNormal,
    HierarchicalVAE,
    active_units,
    check_posterior_collapse,
    kl_per_dim,
)
from pyro_gen.vae.latent_statistics import latent_statistics

A = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])  # latent 2 ignores x: collapsed
S = torch.tensor([0.5, 1.0])  # posterior scales; latent 2's is the prior's


def user_pair():
    def model(x):
        with pyro.plate("rows", x.shape[0]):
            z = pyro.sample("code", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z @ A, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("rows", x.shape[0]):
            pyro.sample("code", dist.Normal(x @ A.T, S).to_event(1))

    return model, guide


def test_a_users_guide_gives_the_closed_form_activity_and_kl():
    torch.manual_seed(0)
    x = torch.randn(300, 3)
    model, guide = user_pair()
    n, activity = active_units(model, x, guide=guide, batch_size=64)  # five runs of the guide
    assert torch.allclose(activity, (x @ A.T).var(0))
    assert n == 1
    means = x @ A.T  # KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1) / 2 - log s
    expected = ((S**2 + means**2 - 1) / 2 - S.log()).mean(0)
    assert torch.allclose(kl_per_dim(model, x, guide=guide), expected, atol=1e-6)
    with pytest.warns(UserWarning, match="only 1 of 2 latent units are active"):
        stats = check_posterior_collapse(model, x, min_active_fraction=0.75, guide=guide)
    assert stats["collapsed"] and torch.allclose(stats["kl_per_dim"], expected, atol=1e-6)


def test_the_general_path_agrees_with_a_vaes_built_in_one():
    torch.manual_seed(1)
    vae = VAE((6,), z_dim=3, hidden_dim=8)
    x = torch.rand(40, 6).round()
    built_in, general = active_units(vae, x), active_units(vae.model, x, guide=vae.guide)
    assert built_in[0] == general[0] and torch.allclose(built_in[1], general[1])
    assert torch.allclose(kl_per_dim(vae, x), kl_per_dim(vae.model, x, guide=vae.guide))


def test_an_assigned_autoguide_and_a_flow_guide_are_described():
    # "these diagnostics need a VAE using its built-in guide" was all an assigned guide got
    torch.manual_seed(2)
    vae = VAE((6,), z_dim=3, hidden_dim=8)
    x = torch.rand(40, 6).round()
    vae.guide = AutoAmortizedNormal(vae.model, hidden_dims=(8,))
    n, activity = active_units(vae, x)
    assert activity.shape == (3,) and kl_per_dim(vae, x).shape == (3,)

    def flow_guide(x):  # a Normal through a fixed affine map: its mean has a closed form
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(x[:, :3], 1.0).to_event(1)
            affine = dist.transforms.AffineTransform(1.0, 2.0, event_dim=1)
            pyro.sample("z", dist.TransformedDistribution(base, [affine]))

    pyro.set_rng_seed(0)
    mean, kl = latent_statistics(vae, x, guide=flow_guide, num_draws=4000)
    assert kl is None and torch.allclose(mean, 1 + 2 * x[:, :3], atol=0.15)  # 4000 draws
    with pytest.raises(TypeError, match="needs diagonal Normal densities"):
        kl_per_dim(vae, x, guide=flow_guide)


def test_a_hierarchical_vae_is_described_layer_by_layer():
    torch.manual_seed(3)
    hvae = HierarchicalVAE((6,), z_dims=(3, 2), hidden_dim=8)
    x = torch.rand(30, 6).round()
    with pytest.raises(ValueError, match=r"latent sites \['z2', 'z1'\] .* site=\.\.\."):
        active_units(hvae, x)
    assert active_units(hvae, x, site="z2")[1].shape == (2,)
    assert kl_per_dim(hvae, x, site="z1").shape == (3,)  # against p(z1 | z2)
    with pytest.raises(ValueError, match="'z3' is not a latent site of the guide"):
        active_units(hvae, x, site="z3")
