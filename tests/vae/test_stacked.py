"""M1+M2: M1's features (active units, posterior means), fresh feature draws in the batches,
and M2 with a Gaussian likelihood learning classes from a few labels in feature space."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_gen.infer import fit
from pyro_gen.vae import M1M2, SSVAE, VAE, latent_features, semi_supervised_batches
from pyro_gen.vae.diagnostics import posterior_params


@pytest.fixture
def m1():
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = VAE((3, 3), z_dim=4, hidden_dim=8)
    with torch.no_grad():  # units 0 and 2 become active, 1 and 3 ignore the image
        enc = vae.posterior.encoder
        enc.loc.weight.zero_()
        enc.loc.weight[0] = 5.0
        enc.loc.weight[2] = -5.0
    return vae


def test_features_are_the_posterior_on_the_active_units(m1):
    x = torch.rand(50, 3, 3)
    f = latent_features(m1, x, min_std=1e-3)
    loc, scale = posterior_params(m1, x)
    assert f.keep.tolist() == (loc.std(0) > 1e-3).tolist() == [True, False, True, False]
    assert torch.equal(f.loc, loc[:, [0, 2]]) and torch.equal(f.scale, scale[:, [0, 2]])
    # test images get the training images' units, whatever their own spread
    same = latent_features(m1, x[:1], keep=f.keep)
    assert torch.allclose(same.loc, loc[:1, [0, 2]], rtol=1e-5)
    assert m1.training  # the mode is restored


def test_bad_input_to_latent_features(m1):
    x = torch.rand(10, 3, 3)
    with pytest.raises(ValueError, match="no latent unit of M1 is active"):
        latent_features(m1, x, min_std=1e6)
    with pytest.raises(ValueError, match=r"one entry per latent unit of M1, shape \(4,\)"):
        latent_features(m1, x, keep=torch.tensor([True, False]))
    with pytest.raises(ValueError, match="one entry per latent unit"):
        latent_features(m1, x, keep=torch.tensor([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="min_std must be non-negative"):
        latent_features(m1, x, min_std=-1.0)
    with pytest.raises(TypeError, match="posterior family"):
        latent_features(VAE((3, 3), z_dim=2, hidden_dim=4, guide="auto"), x)
    f = latent_features(m1, x, min_std=1e-3)
    wrong = SSVAE((3,), 2, z_dim=1, hidden_dims=(4,), likelihood="gaussian_learned", name="m2")
    with pytest.raises(ValueError, match=r"the 2 kept units of M1 \(event_shape \(2,\)\)"):
        M1M2(m1, wrong, f.keep)


def test_batches_draw_fresh_features_from_the_given_normals():
    g = torch.Generator().manual_seed(0)
    loc_l, loc_u = torch.full((4, 2), 3.0), torch.full((2000, 2), -1.0)
    scale_l, scale_u = torch.zeros(4, 2), torch.full((2000, 2), 2.0)
    batches = semi_supervised_batches(
        loc_l,
        torch.tensor([0, 1, 0, 1]),
        loc_u,
        batch_size=500,
        generator=g,
        labelled_scale=scale_l,
        unlabelled_scale=scale_u,
    )
    first, second = list(batches()), list(batches())
    u1 = torch.cat([b["x"] for b in first if "y" not in b])
    u2 = torch.cat([b["x"] for b in second if "y" not in b])
    # N(-1, 2^2) draws: mean within 4 standard errors, sd within 5%, new draws each epoch
    assert abs(float(u1.mean()) + 1) < 4 * 2 / 4000**0.5
    assert abs(float(u1.std()) - 2) < 0.1
    assert not torch.equal(u1.sort(0).values, u2.sort(0).values)
    for b in first:  # a zero scale gives the mean itself
        if "y" in b:
            assert torch.equal(b["x"], torch.full_like(b["x"], 3.0))
    y = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="give both labelled_scale and unlabelled_scale"):
        semi_supervised_batches(loc_l, y, loc_u, labelled_scale=scale_l)
    with pytest.raises(ValueError, match=r"unlabelled_scale .* shape \(2000, 2\); got shape"):
        semi_supervised_batches(
            loc_l, y, loc_u, labelled_scale=scale_l, unlabelled_scale=scale_u[:5]
        )
    with pytest.raises(ValueError, match="with negative entries"):
        semi_supervised_batches(
            loc_l, y, loc_u, labelled_scale=-scale_u[:4], unlabelled_scale=scale_u
        )


def test_feature_space_m2_learns_the_classes_from_two_labels_each(m1):
    """Three well-separated Gaussian clusters in 3-d features, 2 labels per class: M2 with a
    Gaussian likelihood trained on fresh draws classifies the unlabelled points far above
    chance (1/3), and M1M2 classifies through M1's encoder exactly as M2 does on its means."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    y = torch.arange(306) % 3
    loc = centres[y] + 0.5 * torch.randn(306, 3, generator=g)
    scale = torch.full_like(loc, 0.1)
    pyro.set_rng_seed(0)
    m2 = SSVAE((3,), 3, z_dim=2, hidden_dims=(16,), likelihood="gaussian_learned", name="m2")
    batches = semi_supervised_batches(
        loc[:6],
        y[:6],
        loc[6:],
        batch_size=50,
        labelled_passes=6,
        generator=g,
        labelled_scale=scale[:6],
        unlabelled_scale=scale[6:],
    )
    before = float((m2.classify(loc[6:]) == y[6:]).float().mean())
    fit(
        m2,
        batches,
        loss=TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
        epochs=15,
        optim=pyro.optim.Adam({"lr": 1e-2}),
        progress=False,
    )
    after = float((m2.classify(loc[6:]) == y[6:]).float().mean())
    assert after > 0.9 and before < 0.6
    # the wrapper: images -> M1's posterior mean on the kept units -> M2's classifier
    x = torch.rand(7, 3, 3)
    f = latent_features(m1, torch.rand(50, 3, 3), min_std=1e-3)
    m2_on_m1 = SSVAE((2,), 3, z_dim=2, hidden_dims=(8,), likelihood="gaussian_learned", name="b")
    stacked = M1M2(m1, m2_on_m1, f.keep)
    means = posterior_params(m1, x)[0][:, f.keep]
    assert torch.equal(stacked.classify(x), m2_on_m1.classify(means))
    assert torch.allclose(stacked.features(x), means, rtol=1e-5)
