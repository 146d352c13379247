"""The VAE helpers of pyro_gen.vae on count-data programs: the ProdLDA tutorial (batch norm
and dropout in both networks, a subsampled corpus), Pyro's scANVI example (ZINB counts, a
library size), sparse gamma DEF (Gamma latents) and LDA (documents along the last dimension).

Each case either gives the right answer, checked against the user's own networks called by
hand in evaluation mode, a closed form or Pyro's own ELBO on the same seed, and leaves the
networks' modes and buffers, the param store and the RNG as they were; or it raises one clear
error (the helper or the site named, no Pyro trace dump). Shared checks live in
vae_helper_checks.py."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch.nn import functional as F

from pyro_gen.vae import AutoAmortizedNormal, interpolate, kl_per_dim, reconstruct, refine_posterior
from pyro_gen.vae.latent_statistics import latent_statistics
from tests.user_programs import lda, prodlda, scanvi, sparse_gamma_def
from tests.user_programs.vae_helper_checks import (
    clear_error,
    fresh_pyro,  # noqa: F401 - pytest fixtures, used by name
    normal_kl,
    pyro_elbo,
    refined_from_the_start,
    untouched,
)

# --- the ProdLDA tutorial: batch norm and dropout in both networks ------------------------


def test_prodlda_is_decoded_in_evaluation_mode_and_its_statistics_untouched():
    docs = prodlda.corpus(16)
    p = prodlda.ProdLDA()
    p.train()
    with torch.no_grad():
        p.encoder(docs), p.decoder(F.softmax(torch.randn(16, prodlda.TOPICS), -1))  # stats
    p.model(docs), p.guide(docs)
    with torch.no_grad():
        p.eval()
        loc, scale = p.encoder(docs)
        total = docs.sum(-1).max()
        expected = total * p.decoder(F.softmax(loc, -1))
        mid = total * p.decoder(F.softmax((loc[:1] + loc[1:2]) / 2, -1))[0]
        p.train()
    with untouched(p):
        got = reconstruct(p.model, docs, guide=p.guide)
        line = interpolate(p.model, docs[0], docs[1], 3, guide=p.guide)
        # an error raised in evaluation mode leaves the modes as they were too
        clear_error(
            lambda: interpolate(p.model, docs[0], docs[1], 3, guide=p.guide, latent="w"),
            "latent='w'",
        )
    torch.testing.assert_close(got, expected)
    # the line is decoded with x_a as the model's data: its total_count is x_a's length
    torch.testing.assert_close(line[1], mid * docs[0].sum() / total)
    kl = normal_kl(loc, scale, torch.zeros(()), torch.ones(()))
    torch.testing.assert_close(kl_per_dim(p.model, docs, guide=p.guide), kl.mean(0))
    assert p.training and p.encoder.drop.training


def test_prodlda_subsampled_corpus_statistics_are_refused_clearly():
    p, docs = prodlda.ProdLDA(), prodlda.corpus(32)
    try:
        mean, _ = latent_statistics(p.subsampled_model, docs, guide=p.subsampled_guide)
    except (ValueError, TypeError) as error:
        assert "Trace Shapes" not in str(error)
        return
    assert mean.shape == (32, prodlda.TOPICS)


def test_prodlda_subsampled_corpus_refinement_is_per_document():
    p, docs = prodlda.ProdLDA(), prodlda.corpus(32)
    try:
        loc, _ = refine_posterior(p.subsampled_model, docs, 2, guide=p.subsampled_guide)
    except (ValueError, TypeError) as error:
        assert "Trace Shapes" not in str(error)
        return
    assert loc.shape == (32, prodlda.TOPICS)


def _prodlda_by_hand(p, docs):
    """The encoder's loc and the decoded counts in evaluation mode, modes restored after."""
    with torch.no_grad():
        p.eval()
        loc = p.encoder(docs)[0]
        counts = docs.sum(-1).max() * p.decoder(F.softmax(loc, -1))
        p.train()
    return loc, counts


def test_prodlda_subsampling_model_given_every_document_is_decoded_in_order():
    p, docs = prodlda.ProdLDA(), prodlda.corpus(32)
    _, expected = _prodlda_by_hand(p, docs)
    # batch_size=32 of 32: Pyro's plate takes every document, in order
    got = reconstruct(p.subsampled_model, docs, guide=p.subsampled_guide, batch_size=32)
    torch.testing.assert_close(got, expected)


def test_prodlda_model_batch_size_reaches_the_model_in_the_statistics():
    p, docs = prodlda.ProdLDA(), prodlda.corpus(32)
    loc, _ = _prodlda_by_hand(p, docs)
    try:
        mean, _ = latent_statistics(
            p.subsampled_model, docs, guide=p.subsampled_guide, batch_size=32
        )
    except (ValueError, TypeError) as error:  # naming the clash clearly is fine too
        assert "batch_size" in str(error) and "Trace Shapes" not in str(error)
        return
    torch.testing.assert_close(mean, loc)


# --- Pyro's examples/scanvi: ZINB counts, a library size, a one-hot cell type -------------


def test_scanvi_is_decoded_as_the_zinb_mean_of_its_networks_by_hand():
    data = scanvi.cells(8, 16, 8)
    s, x = scanvi.SCANVI(), data["x_unsup"][:6]
    s.model(x)  # the inverse dispersion param exists, as after training
    with torch.no_grad():
        h = s.z2l_encoder(x.log1p())
        z2, _, l_loc, l_scale = h.split([2, 2, 1, 1], -1)
        library = (l_loc + F.softplus(l_scale) ** 2 / 2).exp()  # the LogNormal's mean
        gate_logits, rho = s.x_decoder(z2).chunk(2, -1)
        theta = pyro.param("inverse_dispersion")
        nb_logits = (library * F.softmax(rho, -1) + 5e-3).log() - (theta + 5e-3).log()
        expected = torch.sigmoid(-gate_logits) * theta * nb_logits.exp()
    with untouched(s):
        got = reconstruct(s.model, x, guide=s.guide)
    torch.testing.assert_close(got, expected)
    clear_error(lambda: interpolate(s.model, x[0], x[1], 3, guide=s.guide), "'y' is discrete")
    line = interpolate(s.model, x[0], x[1], 3, guide=s.guide, latent="z2")
    assert line.shape == (3, scanvi.GENES)
    clear_error(lambda: kl_per_dim(s.model, x, guide=s.guide, site="l"), "diagonal Normal")
    clear_error(lambda: refine_posterior(s.model, x, 1, guide=s.guide, site="l"), "'l'")
    clear_error(lambda: refine_posterior(s.model, x, 1, guide=s.guide, site="y"), "'y'")
    mean, _ = latent_statistics(s.model, x, guide=s.guide, site="l")
    torch.testing.assert_close(mean, library)
    expected = pyro_elbo(s.model, s.guide, x, seed=2, particles=50)
    got = refined_from_the_start(s.model, x, 2, 50, guide=s.guide, site="z2")
    assert got == pytest.approx(expected, rel=1e-5)


# --- Pyro's examples/sparse_gamma_def.py: Gamma latents, global and local -----------------


def test_sparse_gamma_def_is_decoded_at_the_gamma_means_of_its_guide():
    x = sparse_gamma_def.counts(10)
    sparse_gamma_def.guide(x)  # the per-point parameters exist, as after training

    def gamma_mean(name: str) -> torch.Tensor:
        return F.softplus(pyro.param(f"log_mean_{name}")).clamp(min=sparse_gamma_def.FLOOR)

    with torch.no_grad():
        w_bottom = gamma_mean("w_bottom").reshape(sparse_gamma_def.BOTTOM, sparse_gamma_def.DIM)
        expected = gamma_mean("z_bottom") @ w_bottom
    with untouched():
        got = reconstruct(sparse_gamma_def.model, x, guide=sparse_gamma_def.guide)
    torch.testing.assert_close(got, expected)
    mean, kl = latent_statistics(
        sparse_gamma_def.model, x, guide=sparse_gamma_def.guide, site="z_top"
    )
    torch.testing.assert_close(mean, gamma_mean("z_top").detach())
    assert kl is None  # Gammas: no diagonal Normal KL
    clear_error(
        lambda: refine_posterior(
            sparse_gamma_def.model, x, 1, guide=sparse_gamma_def.guide, site="z_top"
        ),
        "'z_top'",
        "support",
    )


def test_sparse_gamma_def_positive_latent_of_an_autoguide_is_refused_clearly():
    x = sparse_gamma_def.counts(10)
    guide = AutoAmortizedNormal(sparse_gamma_def.model, hidden_dims=(8,))
    guide(x)
    clear_error(
        lambda: refine_posterior(sparse_gamma_def.model, x, 1, guide=guide, site="z_top"),
        "'z_top'",
    )


# --- Pyro's LDA example: words laid out (WORDS, DOCS), topics enumerated ------------------


def test_lda_documents_laid_out_along_the_last_dimension():
    data = lda.corpus()
    guide = lda.DirichletGuide()
    clear_error(lambda: reconstruct(lda.model, data, guide=guide), "no finite mean")
    try:
        mean, _ = latent_statistics(lda.model, data, guide=guide)
    except (ValueError, TypeError) as error:
        assert "Trace Shapes" not in str(error)
        return
    assert mean.shape == (lda.DOCS, lda.TOPICS)
