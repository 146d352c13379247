"""The VAE helpers of pyro_gen.vae on programs whose latents are not one Normal code: a
Bayesian decoder (PyroSample weights, an AutoGuideList), an HMM whose states are enumerated
along a Markov chain, and Pyro's AIR (a Bernoulli per step gating pose and appearance).

Each case either gives the right answer, checked against the user's own networks called by
hand in evaluation mode, a closed form or Pyro's own ELBO on the same seed, and leaves the
networks' modes and buffers, the param store and the RNG as they were; or it raises one clear
error (the helper or the site named, no Pyro trace dump). Shared checks live in
vae_helper_checks.py."""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_gen.vae import interpolate, reconstruct, reconstruction_grid, refine_posterior
from pyro_gen.vae.latent_statistics import latent_statistics
from tests.user_programs import air, bayesian_decoder, discrete_hmm
from tests.user_programs.vae_helper_checks import (
    binary,
    clear_error,
    fresh_pyro,  # noqa: F401 - pytest fixtures, used by name
    untouched,
)

# --- a Bayesian decoder (PyroSample weights) with an AutoGuideList ------------------------


def test_bayesian_decoder_is_decoded_at_the_weights_and_codes_medians():
    bv, x = bayesian_decoder.BayesianDecoderVAE(), binary(6)
    guide = bayesian_decoder.guide_for(bv)
    guide(x)
    weights = guide[0].median(x)
    with torch.no_grad():
        amortized = next(p for p in guide.modules() if isinstance(p, bayesian_decoder.AmortizedZ))
        z = amortized.encoder(x)[0]
        expected = torch.sigmoid(poutine.condition(bv.decoder, data=weights)(z))
    torch.testing.assert_close(reconstruct(bv, x, guide=guide), expected)
    torch.testing.assert_close(latent_statistics(bv, x, guide=guide)[0], z)
    # the weights (global) stay at their medians along the line between the two codes
    line = interpolate(bv, x[0], x[1], 3, guide=guide)
    with torch.no_grad():
        mid = torch.sigmoid(poutine.condition(bv.decoder, data=weights)((z[:1] + z[1:2]) / 2))
    torch.testing.assert_close(line[1], mid[0])


def test_bayesian_decoder_refinement_runs_or_is_refused_clearly():
    bv, x = bayesian_decoder.BayesianDecoderVAE(), binary(6)
    guide = bayesian_decoder.guide_for(bv)
    guide(x)
    assert math.isfinite(Trace_ELBO(num_particles=2).loss(bv, guide, x))  # Pyro's own loop
    try:
        loc, _ = refine_posterior(bv, x, 2, num_particles=2, guide=guide)
    except (ValueError, TypeError) as error:  # refusing it clearly is fine too
        assert "Trace Shapes" not in str(error)
        return
    assert loc.shape == (6, bayesian_decoder.Z_DIM)


# --- an HMM whose hidden states are enumerated along a Markov chain -----------------------


def test_hmm_states_are_not_one_observed_site_and_the_scale_is_lognormal():
    seqs = discrete_hmm.sequences()
    # several observed sites, and hidden states left to enumeration: either is named
    clear_error(
        lambda: reconstruct(discrete_hmm.scaled_model, seqs, guide=discrete_hmm.scale_guide),
        "reconstruct",
    )
    mean, kl = latent_statistics(discrete_hmm.scaled_model, seqs, guide=discrete_hmm.scale_guide)
    expected = torch.full((seqs.shape[0], 1), math.exp(0.3 + 0.3**2 / 2), dtype=seqs.dtype)
    torch.testing.assert_close(mean, expected)
    assert kl is None


# --- Pyro's examples/air: a Bernoulli per step gating pose and appearance ------------------


def test_air_is_decoded_through_its_recurrent_guide_at_the_modes_and_means():
    x, _ = air.scenes(6)
    a = air.AIR()
    with torch.no_grad():  # the guide's recurrence by hand: z_pres at its mode, the rest means
        n = x.shape[0]
        flat = x.reshape(n, air.IMAGE**2)
        h, present = x.new_zeros(n, air.HIDDEN), x.new_ones(n, 1)
        z_where, z_what = x.new_zeros(n, 3), x.new_zeros(n, air.Z_WHAT)
        canvas = x.new_zeros(n, air.IMAGE, air.IMAGE)
        for _ in range(air.STEPS):
            h = torch.tanh(a.rnn(air._cat(flat, z_where, z_what, present, h)))
            out = a.predict(h)
            present = (torch.sigmoid(out[..., :1]) * present > 0.5).to(x.dtype)
            z_where = a.where_loc + out[..., 1:4]
            z_what = a.encoder(air.image_to_window(z_where, x)).chunk(2, -1)[0]
            canvas = canvas + air.window_to_image(z_where, a.decoder(z_what)) * present[..., None]
    with untouched(a):
        got = reconstruct(a.model, x, guide=a.guide)
    torch.testing.assert_close(got, canvas)  # x is (n, 8, 8), observed flat: a view
    clear_error(lambda: interpolate(a.model, x[0], x[1], 3, guide=a.guide), "'z_pres_0'")
    clear_error(lambda: latent_statistics(a.model, x, guide=a.guide), "'z_pres_0'", "site=")
    grid = reconstruction_grid(a.model, x, 3, guide=a.guide)
    torch.testing.assert_close(grid[9:17, :8], canvas[0])
