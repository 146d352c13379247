"""The VAE helpers of pyro_gen.vae on programs with arguments beside x: per-example
context given to interpolate, SVI part II's hierarchy (globals, a subsampled plate, nested
plates), the CVAE tutorial (a conditional prior) and Pyro's contrib CEVAE (t and y observed
beside x).

Each case either gives the right answer, checked against the user's own networks called by
hand in evaluation mode, a closed form or Pyro's own ELBO on the same seed, and leaves the
networks' modes and buffers, the param store and the RNG as they were; or it raises one clear
error (the helper or the site named, no Pyro trace dump). Shared checks live in
vae_helper_checks.py."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_gen.vae import interpolate, reconstruct, refine_posterior, semi_amortized_elbo
from pyro_gen.vae.latent_statistics import latent_statistics
from tests.user_programs import cevae, cvae, hierarchy, missing_data
from tests.user_programs.vae_helper_checks import (
    clear_error,
    fresh_pyro,  # noqa: F401 - pytest fixtures, used by name
    normal_kl,
    pyro_elbo,
    untouched,
)

# --- per-example arguments beside x: interpolate passes them to 2 rows, then to `steps` ---


def _hierarchy_pair():
    y, idx = hierarchy.simulate()
    return hierarchy.model, hierarchy.guide, y[:2], {"idx": idx[:2]}


def _ppca_pair():
    x, mask = missing_data.rows(2)
    return missing_data.model, missing_data.Guide(), x, {"mask": mask}


def _cevae_pair():
    x, t, y, _ = cevae.synthetic(2)
    c = cevae.small_cevae()
    return c.model, c.guide, x, {"t": t, "y": y, "size": 2, "site": "x"}


@pytest.mark.parametrize("program", ["hierarchy", "ppca", "cevae"])
def test_per_example_context_is_refused_clearly_by_interpolate(program):
    model, guide, x, context = {
        "hierarchy": _hierarchy_pair,
        "ppca": _ppca_pair,
        "cevae": _cevae_pair,
    }[program]()
    clear_error(lambda: interpolate(model, x[0], x[1], 3, guide=guide, **context), "interpolate")


def shifted_model(x, shifts):
    """A model with a table of shifts whose number of rows is not the number of examples."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(shifts.mean(0), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def shifted_guide(x, shifts):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.5).to_event(1))


def test_an_argument_with_as_many_rows_as_examples_by_chance_is_not_cut():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    shifts = torch.arange(12.0).reshape(4, 3)
    _, kl = latent_statistics(shifted_model, x, guide=shifted_guide, shifts=shifts)
    q_loc = x / 2
    expected = normal_kl(q_loc, torch.tensor(0.5), shifts.mean(0), torch.tensor(1.0))
    torch.testing.assert_close(kl, expected)  # one run: right
    try:
        _, cut = latent_statistics(
            shifted_model, x, guide=shifted_guide, shifts=shifts, batch_size=2
        )
    except (ValueError, TypeError) as error:  # naming the ambiguous argument is fine too
        assert "shifts" in str(error) and "Trace Shapes" not in str(error)
        return
    torch.testing.assert_close(cut, expected)


# --- SVI part II's hierarchy: globals, a subsampled plate, nested plates -----------------


def test_hierarchy_reconstruction_is_the_linear_guides_closed_form():
    y, idx = hierarchy.simulate()
    hierarchy.guide(y, idx)  # the guide's params exist, as after training
    with torch.no_grad():
        for name, value in {"w_theta": [0.8, 0.3], "w_eta": [0.6, 0.7], "mu_loc": 1.5}.items():
            pyro.param(name).copy_(torch.tensor(value))
    w_theta, w_eta = pyro.param("w_theta").detach(), pyro.param("w_eta").detach()
    theta = w_theta[0] * y.mean(-1, keepdim=True) + w_theta[1] * 1.5  # mu at its mean
    expected = w_eta[0] * y + w_eta[1] * theta
    with untouched():
        got = reconstruct(hierarchy.model, y, guide=hierarchy.guide, idx=idx)
    torch.testing.assert_close(got, expected)


def test_hierarchy_statistics_of_a_site_below_a_global_are_its_posterior_mean():
    y, idx = hierarchy.simulate()
    hierarchy.guide(y, idx)
    w_theta, mu_loc = pyro.param("w_theta").detach(), pyro.param("mu_loc").detach()
    theta = w_theta[0] * y.mean(-1, keepdim=True) + w_theta[1] * mu_loc  # linear in mu
    mean, _ = latent_statistics(hierarchy.model, y, guide=hierarchy.guide, idx=idx, site="theta")
    torch.testing.assert_close(mean, theta)


def test_hierarchy_refinement_of_a_site_below_a_global_starts_at_its_posterior_mean():
    y, idx = hierarchy.simulate()
    hierarchy.guide(y, idx)
    w_theta, mu_loc = pyro.param("w_theta").detach(), pyro.param("mu_loc").detach()
    theta = w_theta[0] * y.mean(-1, keepdim=True) + w_theta[1] * mu_loc
    loc, _ = refine_posterior(hierarchy.model, y, 0, guide=hierarchy.guide, idx=idx, site="theta")
    torch.testing.assert_close(loc, theta)


def test_hierarchy_nested_plate_is_not_a_latent_site():
    y, idx = hierarchy.simulate()
    clear_error(
        lambda: latent_statistics(hierarchy.model, y, guide=hierarchy.guide, idx=idx),
        "['theta', 'eta']",
    )
    clear_error(
        lambda: latent_statistics(hierarchy.model, y, guide=hierarchy.guide, idx=idx, site="items"),
        "'items'",
    )


# --- the CVAE tutorial: a conditional prior, ys observed, xs the input --------------------


def test_cvae_statistics_are_the_recognition_and_prior_networks_by_hand():
    (xs, ys), _ = cvae.masked_digits(32, 8)
    xs, ys = xs[:6], ys[:6]
    c = cvae.CVAE(cvae.BaselineNet())
    with torch.no_grad():
        q_loc, q_scale = c.recognition_net(xs, ys)
        p_loc, p_scale = c.prior_net(xs, c.baseline_net(xs))
    mean, kl = latent_statistics(c.model, xs, guide=c.guide, ys=ys)
    torch.testing.assert_close(mean, q_loc)
    torch.testing.assert_close(kl, normal_kl(q_loc, q_scale, p_loc, p_scale))
    # the observed site holds ys, not the input xs: nothing to reconstruct xs from
    clear_error(lambda: reconstruct(c.model, xs, guide=c.guide, ys=ys), "'y' does not observe x")
    expected = pyro_elbo(c.model, c.guide, xs, seed=7, particles=200, ys=ys)
    pyro.set_rng_seed(7)
    got = semi_amortized_elbo(c.model, xs, 0, num_particles=200, guide=c.guide, ys=ys)
    assert got == pytest.approx(expected, rel=1e-6)


def test_cvae_statistics_in_batches_split_the_per_example_arguments_too():
    (xs, ys), _ = cvae.masked_digits(32, 8)
    xs, ys = xs[:6], ys[:6]
    c = cvae.CVAE(cvae.BaselineNet())
    whole, _ = latent_statistics(c.model, xs, guide=c.guide, ys=ys)
    try:
        batched, _ = latent_statistics(c.model, xs, guide=c.guide, ys=ys, batch_size=4)
    except (ValueError, TypeError) as error:  # refusing it clearly is fine too
        assert "Trace Shapes" not in str(error)
        return
    torch.testing.assert_close(batched, whole)


# --- Pyro's contrib CEVAE: x, t and y observed, t and y auxiliary in the guide --------------


def test_cevae_x_is_decoded_by_its_networks_at_the_guides_mean():
    x, t, y, _ = cevae.synthetic(20)
    c = cevae.small_cevae()
    with torch.no_grad():
        z = c.guide.z_dist(y, t, x).mean
        expected = c.model.x_dist(z).mean
    args = {"t": t, "y": y, "size": 20}
    # t and y are observed beside x; x's site is the one observing x (it asked for site=)
    torch.testing.assert_close(reconstruct(c.model, x, guide=c.guide, **args), expected)
    torch.testing.assert_close(reconstruct(c.model, x, guide=c.guide, site="x", **args), expected)
    mean, _ = latent_statistics(c.model, x, guide=c.guide, **args)
    torch.testing.assert_close(mean, z)
