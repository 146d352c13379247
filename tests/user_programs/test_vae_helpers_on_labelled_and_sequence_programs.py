"""The VAE helpers of pyro_gen.vae on Pyro's semi-supervised VAE (ss_vae_M2: a label
enumerated or observed) and deep Markov model (examples/dmm.py: sequences, pyro.markov,
masked padding).

Each case either gives the right answer, checked against the user's own networks called by
hand in evaluation mode, a closed form or Pyro's own ELBO on the same seed, and leaves the
networks' modes and buffers, the param store and the RNG as they were; or it raises one clear
error (the helper or the site named, no Pyro trace dump). Shared checks live in
vae_helper_checks.py."""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch
from torch.nn import functional as F

from pyro_gen.vae import (
    AutoAmortizedNormal,
    interpolate,
    kl_per_dim,
    reconstruct,
    semi_amortized_elbo,
)
from pyro_gen.vae.latent_statistics import latent_statistics
from tests.user_programs import dmm, ss_vae
from tests.user_programs.vae_helper_checks import (
    clear_error,
    fresh_pyro,  # noqa: F401 - pytest fixtures, used by name
    normal_kl,
    pyro_elbo,
    refined_from_the_start,
)

# --- Pyro's examples/vae/ss_vae_M2.py: a label enumerated or observed --------------------


@pytest.fixture
def m2():
    m = ss_vae.SSVAE()
    data = ss_vae.clusters()
    return m, data["xs_sup"][:6], data["ys_sup"][:6]


def _m2_by_hand(m, xs, ys):
    loc = m.encoder_z(torch.cat([xs, ys], -1)).chunk(2, -1)[0]
    return loc, torch.sigmoid(m.decoder(torch.cat([loc, ys], -1)))


def test_ss_vae_hand_guide_is_decoded_at_the_classifiers_label(m2):
    m, xs, ys = m2
    with torch.no_grad():
        label = F.one_hot(m.encoder_y(xs).argmax(-1), ss_vae.Y_DIM).float()
        _, unlabelled = _m2_by_hand(m, xs, label)
        loc, labelled = _m2_by_hand(m, xs, ys)
    torch.testing.assert_close(reconstruct(m.model, xs, guide=m.guide), unlabelled)
    # labelled: y and y_aux are observed in the plate too; x's site is the one observing xs
    # (helper A, session 25: it asked for site= before)
    torch.testing.assert_close(reconstruct(m.model, xs, guide=m.guide, ys=ys), labelled)
    torch.testing.assert_close(reconstruct(m.model, xs, guide=m.guide, ys=ys, site="x"), labelled)
    clear_error(lambda: interpolate(m.model, xs[0], xs[1], 3, guide=m.guide), "'y' is discrete")
    # one label for both ends: the line runs in z alone
    line = interpolate(m.model, xs[0], xs[1], 3, guide=m.guide, ys=ys[0], site="x")
    with torch.no_grad():
        z_mid = m.encoder_z(torch.cat([xs[:2], ys[:1].expand(2, -1)], -1)).chunk(2, -1)[0].mean(0)
        mid = torch.sigmoid(m.decoder(torch.cat([z_mid, ys[0]], -1)))
    torch.testing.assert_close(line[1], mid)
    mean, kl = latent_statistics(m.model, xs, guide=m.guide, site="z", ys=ys)
    torch.testing.assert_close(mean, loc)
    with torch.no_grad():
        scale = m.encoder_z(torch.cat([xs, ys], -1)).chunk(2, -1)[1].exp()
    torch.testing.assert_close(kl, normal_kl(loc, scale, torch.zeros(()), torch.ones(())))
    clear_error(lambda: latent_statistics(m.model, xs, guide=m.guide), "['y', 'z']", "site=")


def test_ss_vae_label_left_to_enumeration_is_not_drawn_at_random(m2):
    m, xs, _ = m2
    guide = AutoAmortizedNormal(m.model, hidden_dims=(8,))
    pyro.set_rng_seed(1)
    try:
        a = reconstruct(m.model, xs, guide=guide)
    except (ValueError, TypeError) as error:  # naming y clearly is fine too
        assert "'y'" in str(error)
        return
    pyro.set_rng_seed(2)
    torch.testing.assert_close(reconstruct(m.model, xs, guide=guide), a)


def test_ss_vae_semi_amortized_elbo_sums_an_enumerated_label_out(m2):
    m, _, _ = m2
    xs = ss_vae.clusters()["xs_unsup"][:8]
    guide = AutoAmortizedNormal(m.model, hidden_dims=(8,))
    expected = pyro_elbo(m.model, guide, xs, seed=3, particles=2000, enum=True)
    pyro.set_rng_seed(3)
    got = semi_amortized_elbo(m.model, xs, 0, num_particles=2000, guide=guide)
    assert got == pytest.approx(expected, abs=0.2)  # noise ~0.02


def test_ss_vae_refinement_of_an_enumerating_guide_does_not_tell_the_user_to_change_loss(m2):
    m, _, _ = m2
    xs = ss_vae.clusters()["xs_unsup"][:8]
    expected = pyro_elbo(m.model, m.guide, xs, seed=1, particles=2000, enum=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = refined_from_the_start(m.model, xs, 1, 2000, guide=m.guide, site="z")
    assert got == pytest.approx(expected, abs=0.05)  # y drawn, not summed: noise ~0.01


# --- Pyro's examples/dmm.py: sequences, pyro.markov, masked padding ----------------------


@pytest.fixture
def sequences():
    batch = next(dmm.minibatches(dmm.sequences(8), 4))
    context = {k: v for k, v in batch.items() if k != "seqs"}
    return dmm.DMM(), dmm.Guide(), batch["seqs"], context


def test_dmm_first_step_statistics_are_the_users_rnn_and_transition_by_hand(sequences):
    model, guide, seqs, context = sequences
    with torch.no_grad():
        h_0 = guide.h_0.expand(1, seqs.shape[0], -1).contiguous()
        out, _ = guide.rnn(context["reversed_seqs"], h_0)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=seqs.shape[1]
        )
        out = dmm.reverse_padded(out, context["lengths"])
        h = 0.5 * (torch.tanh(guide.z_to_hidden(guide.z_q_0)) + out[:, 0])
        q_loc, q_log_scale = guide.hidden_to_params(h).chunk(2, -1)
        p_loc, p_log_scale = model.transition(model.z_0).chunk(2, -1)
    kl = normal_kl(q_loc, q_log_scale.exp(), p_loc, p_log_scale.exp())
    mean, got_kl = latent_statistics(model.model, seqs, guide=guide, site="z_1", **context)
    torch.testing.assert_close(mean, q_loc)
    torch.testing.assert_close(got_kl, kl)
    torch.testing.assert_close(
        kl_per_dim(model.model, seqs, guide=guide, site="z_1", **context), kl.mean(0)
    )
    expected = pyro_elbo(model.model, guide, seqs, seed=2, particles=50, **context)
    # z_1's guide reads x alone (z_2's reads z_1): replaced by its own Normal, nothing changes
    got = refined_from_the_start(model.model, seqs, 2, 50, guide=guide, site="z_1", **context)
    assert got == pytest.approx(expected, rel=1e-5)


def test_dmm_sequences_are_not_one_tensor_of_x(sequences):
    model, guide, seqs, context = sequences
    clear_error(
        lambda: reconstruct(model.model, seqs, guide=guide, **context), "['x_1', 'x_2'", "site="
    )
    clear_error(
        lambda: reconstruct(model.model, seqs, guide=guide, site="x_1", **context),
        "'x_1' does not observe x",
    )
    clear_error(
        lambda: latent_statistics(model.model, seqs, guide=guide, **context), "'z_1'", "site="
    )


def test_dmm_padded_steps_are_not_counted_as_examples():
    batch = next(dmm.minibatches(dmm.sequences(8), 8))
    context = {k: v for k, v in batch.items() if k != "seqs"}
    model, guide, seqs = dmm.DMM(), dmm.Guide(), batch["seqs"]
    real = batch["mask"][:, 6]
    assert 0 < int(real.sum()) < len(real)  # some sequences end before step 7
    _, kl = latent_statistics(model.model, seqs, guide=guide, site="z_7", **context)
    try:
        got = kl_per_dim(model.model, seqs, guide=guide, site="z_7", **context)
    except (ValueError, TypeError) as error:  # refusing a masked site by name is fine too
        assert "mask" in str(error) and "Trace Shapes" not in str(error)
        return
    as_the_elbo = (kl * real[:, None]).mean(0)  # a masked row's KL is not in the ELBO
    real_rows = kl[real].mean(0)
    assert torch.allclose(got, as_the_elbo) or torch.allclose(got, real_rows), got


def test_dmm_statistics_in_batches_with_a_packed_sequence_argument():
    batch = next(dmm.minibatches(dmm.sequences(8), 8))
    context = {k: v for k, v in batch.items() if k != "seqs"}
    model, guide, seqs = dmm.DMM(), dmm.Guide(), batch["seqs"]
    whole, _ = latent_statistics(model.model, seqs, guide=guide, site="z_1", **context)
    try:
        cut, _ = latent_statistics(
            model.model, seqs, guide=guide, site="z_1", batch_size=3, **context
        )
    except (ValueError, TypeError) as error:  # naming the argument it cannot cut is fine
        assert "reversed_seqs" in str(error) and "Trace Shapes" not in str(error)
        return
    torch.testing.assert_close(cut, whole)
