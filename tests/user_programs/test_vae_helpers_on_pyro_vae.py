"""The VAE helpers of pyro_gen.vae on Pyro's examples/vae (pyro.module networks, an inline
prior) with the guides users swap in: hand-written, AutoAmortizedNormal, a pyro_gen IAF flow
guide and Pyro's autoguides; impute's refusals and integer pixels; KL annealing passed with
each batch (examples/dmm.py's idiom).

Each case either gives the right answer, checked against the user's own networks called by
hand in evaluation mode, a closed form or Pyro's own ELBO on the same seed, and leaves the
networks' modes and buffers, the param store and the RNG as they were; or it raises one clear
error (the helper or the site named, no Pyro trace dump). Shared checks live in
vae_helper_checks.py."""

from __future__ import annotations

import contextlib

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from torch.nn import functional as F

from pyro_gen.transforms import inverse_autoregressive
from pyro_gen.vae import (
    AutoAmortizedNormal,
    active_units,
    check_posterior_collapse,
    impute,
    interpolate,
    kl_per_dim,
    reconstruct,
    reconstruction_grid,
    semi_amortized_elbo,
)
from pyro_gen.vae.latent_statistics import latent_statistics
from tests.user_programs import annealed_vae, sparse_gamma_def, vae
from tests.user_programs.vae_helper_checks import (
    binary,
    clear_error,
    fresh_pyro,  # noqa: F401 - pytest fixtures, used by name
    normal_kl,
    pyro_elbo,
    refined_from_the_start,
    untouched,
)

# --- Pyro's examples/vae: pyro.module networks, an inline prior --------------------------


@pytest.fixture
def tutorial_vae():
    m = vae.VAE(z_dim=3, hidden_dim=16)
    return m, binary(8)


def test_vae_reconstructions_are_the_users_networks_at_the_encoders_mean(tutorial_vae):
    m, x = tutorial_vae
    with torch.no_grad():
        loc = m.encoder(x)[0]
        expected = torch.sigmoid(m.decoder(loc))
        mid = torch.sigmoid(m.decoder((loc[0] + loc[1]) / 2))
    m.model(x)  # the networks are registered, as after training
    with untouched(m):
        got = reconstruct(m.model, x, guide=m.guide)
        line = interpolate(m.model, x[0], x[1], 3, guide=m.guide)
        grid = reconstruction_grid(m.model, x[:4], 4, guide=m.guide, image_shape=(8, 8))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(line, torch.stack([expected[0], mid, expected[1]]))
    # row 2 of the grid holds the reconstructions of the 4 originals in row 1
    torch.testing.assert_close(grid[9:17, :8], expected[0].reshape(8, 8))
    assert torch.equal(grid[:8, 9:17], x[1].reshape(8, 8))
    # the module itself (model and guide attributes) is taken as well
    torch.testing.assert_close(reconstruct(m, x), expected)


def test_vae_posterior_diagnostics_are_the_closed_form_kl_of_the_encoder(tutorial_vae):
    m, x = tutorial_vae
    with torch.no_grad():
        loc, scale = m.encoder(x)
    kl = normal_kl(loc, scale, torch.zeros(()), torch.ones(()))
    mean, got_kl = latent_statistics(m.model, x, guide=m.guide)
    torch.testing.assert_close(mean, loc)
    torch.testing.assert_close(got_kl, kl)
    torch.testing.assert_close(kl_per_dim(m.model, x, guide=m.guide), kl.mean(0))
    n, activity = active_units(m.model, x, 0.01, guide=m.guide)
    torch.testing.assert_close(activity, loc.var(0))
    assert n == int((loc.var(0) > 0.01).sum())
    with (
        pytest.warns(UserWarning, match="posterior collapse")
        if n == 0
        else (contextlib.nullcontext())
    ):
        stats = check_posterior_collapse(m.model, x, 0.01, guide=m.guide)
    assert stats["active_units"] == n and stats["collapsed"] == (n == 0)
    torch.testing.assert_close(stats["kl_per_dim"], kl.mean(0))


def test_vae_posterior_diagnostics_leave_the_rng_alone(tutorial_vae):
    m, x = tutorial_vae
    m.model(x), m.guide(x)
    with untouched(m):
        latent_statistics(m.model, x, guide=m.guide)


@pytest.mark.parametrize("kind", ["hand-written", "AutoAmortizedNormal"])
def test_vae_semi_amortized_elbo_without_steps_is_pyros_elbo_and_steps_raise_it(tutorial_vae, kind):
    m, x = tutorial_vae
    guide = m.guide if kind == "hand-written" else AutoAmortizedNormal(m.model, hidden_dims=(8,))
    guide(x)  # set up (an autoguide's first call draws), as after training
    expected = pyro_elbo(m.model, guide, x, seed=3, particles=200)
    assert refined_from_the_start(m.model, x, 3, 200, guide=guide) == pytest.approx(
        expected, rel=1e-6
    )
    start = refined_from_the_start(m.model, x, 4, 2000, guide=guide)
    pyro.set_rng_seed(4)
    with untouched(m, rng=False):  # the per-example Normals train, not the networks
        refined = semi_amortized_elbo(m.model, x, 100, lr=0.1, num_particles=2000, guide=guide)
    assert refined > start + 0.2  # each estimate's noise is about 0.02


def test_vae_autoamortized_guide_is_decoded_at_its_median(tutorial_vae):
    m, x = tutorial_vae
    guide = AutoAmortizedNormal(m.model, hidden_dims=(8,))
    z = guide.median(x)["z"]
    with torch.no_grad():
        expected = torch.sigmoid(m.decoder(z))
    torch.testing.assert_close(reconstruct(m.model, x, guide=guide), expected)
    torch.testing.assert_close(latent_statistics(m.model, x, guide=guide)[0], z)


def test_vae_flow_guide_is_decoded_at_the_mean_of_its_draws(tutorial_vae):
    m, x = tutorial_vae
    iaf = inverse_autoregressive(3, [8])
    with torch.no_grad():  # away from the identity it starts as
        for p in iaf.parameters():
            p.normal_(0.0, 0.3)
    guide = vae.FlowGuide(m.encoder, [iaf])
    with torch.no_grad():
        loc, scale = m.encoder(x)
        q = dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), [iaf])
        z_mean = q.sample((20000,)).mean(0)
    pyro.set_rng_seed(1)
    got = latent_statistics(m.model, x, guide=guide, num_draws=4000)
    assert got[1] is None  # no closed-form KL for a flow
    assert (got[0] - z_mean).abs().max() < 0.1  # 4000 draws of spread ~1: SE ~0.016
    pyro.set_rng_seed(2)
    rec = reconstruct(m.model, x, guide=guide, num_draws=4000)
    with torch.no_grad():
        expected = torch.sigmoid(m.decoder(z_mean))
    assert (rec - expected).abs().max() < 0.05
    clear_error(lambda: kl_per_dim(m.model, x, guide=guide), "diagonal Normal")


def test_vae_pyro_autonormal_is_decoded_at_its_median(tutorial_vae):
    m, x = tutorial_vae
    guide = AutoNormal(m.model)
    guide(x)
    with torch.no_grad():
        expected = torch.sigmoid(m.decoder(guide.median(x)["z"]))
    torch.testing.assert_close(reconstruct(m.model, x, guide=guide), expected)


@pytest.mark.parametrize("autoguide", [AutoNormal, AutoDiagonalNormal])
def test_vae_pyro_autoguides_posterior_mean_is_their_loc(tutorial_vae, autoguide):
    m, x = tutorial_vae
    guide = autoguide(m.model)
    guide(x)
    mean, _ = latent_statistics(m.model, x, guide=guide)
    torch.testing.assert_close(mean, guide.median(x)["z"])


def test_vae_refinement_of_a_pyro_autonormal_starts_at_its_own_elbo(tutorial_vae):
    m, x = tutorial_vae
    guide = AutoNormal(m.model)
    guide(x)
    expected = pyro_elbo(m.model, guide, x, seed=3, particles=1000)
    pyro.set_rng_seed(3)
    try:
        got = semi_amortized_elbo(m.model, x, 0, num_particles=1000, guide=guide)
    except (ValueError, TypeError) as error:  # refusing it clearly is fine too
        assert "Trace Shapes" not in str(error)
        return
    assert got == pytest.approx(expected, abs=0.3)


def _autonormal_vae():
    m, x = vae.VAE(z_dim=3, hidden_dim=16), binary(8)
    guide = AutoNormal(m.model)
    guide(x)
    return m.model, guide, x


def _sparse_gamma_def():
    x = sparse_gamma_def.counts(10)
    sparse_gamma_def.guide(x)
    return sparse_gamma_def.model, sparse_gamma_def.guide, x


@pytest.mark.parametrize("program", ["AutoNormal VAE", "sparse gamma DEF"])
def test_non_amortized_guide_on_new_examples_is_refused_clearly(program):
    model, guide, x = {"AutoNormal VAE": _autonormal_vae, "sparse gamma DEF": _sparse_gamma_def}[
        program
    ]()
    clear_error(lambda: interpolate(model, x[0], x[1], 3, guide=guide), "interpolate")


def test_vae_without_a_mask_argument_is_refused_by_impute(tutorial_vae):
    m, x = tutorial_vae
    mask = torch.rand(x.shape) < 0.5
    clear_error(lambda: impute(m.model, x, mask, guide=m.guide), "mask=mask")


def test_vae_without_a_mask_argument_is_refused_by_impute_with_an_autoguide(tutorial_vae):
    m, x = tutorial_vae
    guide = AutoAmortizedNormal(m.model, hidden_dims=(8,))
    guide(x)  # set up, as after training (a fresh one fails on mask= more clearly)
    mask = torch.rand(x.shape) < 0.5
    clear_error(lambda: impute(m.model, x, mask, guide=guide, num_samples=10), "mask=mask")


def masked_bernoulli_pair(z_dim: int = 2):
    """Pyro's VAE with a masked likelihood (impute's idiom), reading 0/1 pixels of any
    dtype as the tutorial's ``x.float()`` does."""
    decoder, encoder = torch.nn.Linear(z_dim, vae.X_DIM), torch.nn.Linear(vae.X_DIM, 2 * z_dim)

    def model(x, mask=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
            pixels = dist.Bernoulli(logits=decoder(z))
            pixels = pixels if mask is None else pixels.mask(mask)
            pyro.sample("x", pixels.to_event(1), obs=x.float())

    def guide(x, mask=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(x.float()).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, F.softplus(raw)).to_event(1))

    return model, guide


def test_impute_of_integer_pixels_is_their_probability():
    model, guide = masked_bernoulli_pair()
    x, mask = binary(6).to(torch.uint8), torch.rand(6, vae.X_DIM) < 0.5
    pyro.set_rng_seed(1)
    expected = impute(model, x.float(), mask, guide=guide, num_samples=100)
    assert ((expected[~mask] > 0.05) & (expected[~mask] < 0.95)).all()  # probabilities
    pyro.set_rng_seed(1)
    try:
        got = impute(model, x, mask, guide=guide, num_samples=100)
    except (ValueError, TypeError) as error:  # refusing integer data by name is fine too
        assert "uint8" in str(error) and "Trace Shapes" not in str(error)
        return
    torch.testing.assert_close(got.float(), expected)


# --- KL annealing passed with each batch (examples/dmm.py's idiom) ------------------------


def test_annealed_vae_takes_the_factor_as_context():
    m, x = annealed_vae.AnnealedVAE(3, 16), binary(6)
    with torch.no_grad():
        expected = torch.sigmoid(m.decoder(m.encoder(x)[0]))
    got = reconstruct(m.model, x, guide=m.guide, annealing_factor=0.3)
    torch.testing.assert_close(got, expected)  # a scale does not move the mean
    want = pyro_elbo(m.model, m.guide, x, seed=5, particles=200, annealing_factor=0.3)
    pyro.set_rng_seed(5)
    got = semi_amortized_elbo(m.model, x, 0, num_particles=200, guide=m.guide, annealing_factor=0.3)
    assert got == pytest.approx(want, rel=1e-6)
