"""The VAE helpers of :mod:`pyro_gen.vae` (``reconstruct``, ``interpolate``,
``reconstruction_grid``, ``latent_statistics``, ``active_units``, ``kl_per_dim``,
``check_posterior_collapse``, ``refine_posterior``, ``semi_amortized_elbo``, ``impute``) on the
Pyro programs users write (tests/user_programs: Pyro's VAE, semi-supervised VAE, DMM, CVAE,
ProdLDA, scANVI examples, a hierarchy with globals, PPCA with ``obs_mask``, a Bayesian
decoder), each with the guides users swap in (hand-written, AutoAmortizedNormal, a pyro_gen
IAF flow guide, Pyro's autoguides).

Each pair either gives the right answer, checked against the user's own networks called by
hand in evaluation mode, a closed form (KL of two Normals, PPCA's Gaussian conditional,
a hierarchy's linear guide), or Pyro's own ``Trace_ELBO``/``TraceEnum_ELBO`` on the same
seed, and leaves the networks' modes and buffers, the param store and the RNG as they were;
or it raises one clear error (the helper or the site named, no Pyro trace dump). 27 of
these cases were defects when first written (session 22); they now guard the fixes.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
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
    refine_posterior,
    semi_amortized_elbo,
)
from pyro_gen.vae.latent_statistics import latent_statistics
from tests.user_programs import (
    air,
    annealed_vae,
    bayesian_decoder,
    cevae,
    cvae,
    discrete_hmm,
    dmm,
    hierarchy,
    lda,
    missing_data,
    prodlda,
    scanvi,
    sparse_gamma_def,
    ss_vae,
    vae,
)


@pytest.fixture(autouse=True)
def fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def binary(rows: int, cols: int = vae.X_DIM) -> torch.Tensor:
    return (torch.rand(rows, cols) < 0.3).float()


def normal_kl(q_loc, q_scale, p_loc, p_scale) -> torch.Tensor:
    """Closed-form KL(N(q) || N(p)) per dimension."""
    return (
        torch.log(p_scale / q_scale) + (q_scale**2 + (q_loc - p_loc) ** 2) / (2 * p_scale**2) - 0.5
    )


@contextlib.contextmanager
def untouched(*modules: torch.nn.Module, rng: bool = True):
    """Asserts that the block leaves the modules' modes and buffers (batch norm statistics),
    the param store's entries and the RNG as they were. Param-store entries are compared
    after the block's first call may have registered the user's networks (as any Pyro run
    of the model does), so only existing entries must keep their values. ``rng=False`` for
    helpers that sample by design."""
    state = pyro.util.get_rng_state()
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    modes = [[m.training for m in mod.modules()] for mod in modules]
    buffers = [{k: b.clone() for k, b in mod.named_buffers()} for mod in modules]
    yield
    if rng:  # a helper that samples by design (refinement, imputation) may draw
        assert torch.equal(pyro.util.get_rng_state()["torch"], state["torch"]), "RNG advanced"
    for name, value in store.items():
        assert torch.equal(pyro.param(name).detach(), value), f"param {name} changed"
    for mod, mode, buf in zip(modules, modes, buffers):
        assert [m.training for m in mod.modules()] == mode, f"{type(mod).__name__} mode"
        for name, b in mod.named_buffers():
            assert torch.equal(b, buf[name]), f"buffer {name} changed"


def assert_clear(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    """One clear error: a ValueError/TypeError of pyro_gen naming ``words`` (the helper,
    the site), not Pyro's shape-mismatch trace dump nor a torch error from deep inside."""
    message = str(excinfo.value)
    assert excinfo.type in (ValueError, TypeError), f"{excinfo.type.__name__}: {message}"
    assert "Trace Shapes" not in message, message
    for word in words:
        assert word in message, message


def clear_error(fn, *words: str) -> None:
    with pytest.raises(Exception) as excinfo:
        fn()
    assert_clear(excinfo, *words)


def pyro_elbo(
    model, guide, *args, seed: int, particles: int, enum: bool = False, nesting: int = 1, **kwargs
):
    """Pyro's own ELBO per example (vectorized particles, as the refinement runs)."""
    pyro.set_rng_seed(seed)
    loss_cls = TraceEnum_ELBO if enum else Trace_ELBO
    loss = loss_cls(num_particles=particles, vectorize_particles=True, max_plate_nesting=nesting)
    with torch.no_grad():
        return -loss.loss(model, guide, *args, **kwargs) / args[0].shape[0]


def refined_from_the_start(model, x, seed: int, particles: int, **kwargs) -> float:
    """``semi_amortized_elbo`` with no step: the guide's own ELBO (same seed as Pyro's)."""
    pyro.set_rng_seed(seed)
    return semi_amortized_elbo(model, x, 0, num_particles=particles, **kwargs)


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


# --- PPCA with Pyro's obs_mask: imputation against the Gaussian conditional ---------------


class ExactPosterior(torch.nn.Module):
    """PPCA's posterior of z given a row's observed entries (b = 0), its scale widened 1.5x:
    the encoder a trained guide approaches."""

    def __init__(self, w: torch.Tensor, sigma: float) -> None:
        super().__init__()
        self.w, self.sigma = w, sigma

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        locs, scales = [], []
        for row, seen in zip(x, mask):
            w_o = self.w[:, seen]
            cov = torch.linalg.inv(torch.eye(self.w.shape[0]) + w_o @ w_o.T / self.sigma**2)
            locs.append(cov @ w_o @ row[seen] / self.sigma**2)
            scales.append(1.5 * cov.diagonal().sqrt())
        return torch.stack(locs), torch.stack(scales)


def ppca_conditional(x, mask, w, sigma):
    """Each missing entry's mean and variance given the row's observed entries (b = 0)."""
    cov = w.T @ w + sigma**2 * torch.eye(w.shape[1])
    mean, var = x.clone(), torch.zeros_like(x)
    for n in range(x.shape[0]):
        o, u = mask[n], ~mask[n]
        gain = cov[u][:, o] @ torch.linalg.inv(cov[o][:, o])
        mean[n, u] = gain @ x[n, o]
        var[n, u] = (cov[u][:, u] - gain @ cov[o][:, u]).diagonal()
    return mean, var


def _ppca_store() -> torch.Tensor:
    """The param store at the loadings that generated ``missing_data.rows``, noise 0.3."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(missing_data.RANK, missing_data.DIM, generator=g)
    pyro.param("w", w.clone())
    pyro.param("b", torch.zeros(missing_data.DIM))
    pyro.param("sigma", torch.tensor(0.3), constraint=dist.constraints.positive)
    return w


def test_ppca_imputation_is_the_gaussian_conditional_mean():
    x, mask = missing_data.rows(8)
    w = _ppca_store()
    guide = missing_data.Guide()
    guide.encoder = ExactPosterior(w, 0.3)  # a good proposal: the weights do the rest
    expected, _ = ppca_conditional(x, mask, w, 0.3)
    # obs_mask splits the site: x_observed is the data; x, the deterministic merge of the
    # data and the imputations, is no observation, so impute finds x_observed unnamed
    draws = []
    for site in ({}, {"site": "x_observed"}):
        pyro.set_rng_seed(0)
        draws.append(impute(missing_data.model, x, mask, guide=guide, num_samples=10, **site))
    assert torch.equal(*draws)
    pyro.set_rng_seed(0)
    got = impute(
        missing_data.model, x, mask, guide=guide, site="x_observed", num_samples=20000, chunk=5000
    )
    assert torch.equal(got[mask], x[mask])
    # self-normalised importance sampling, 20000 draws of a good proposal: a few thousandths
    assert (got - expected).abs().max() < 0.03


def test_ppca_multiple_imputations_follow_the_gaussian_conditional():
    x, mask = missing_data.rows(4)
    w = _ppca_store()
    guide = missing_data.Guide()
    guide.encoder = ExactPosterior(w, 0.3)
    mean, var = ppca_conditional(x, mask, w, 0.3)
    draws = impute(
        missing_data.model,
        x,
        mask,
        guide=guide,
        site="x_observed",
        num_samples=2000,
        chunk=2000,
        num_imputations=300,
    )
    assert torch.equal(draws[:, mask], x[mask].expand(300, -1))
    missing = ~mask
    z = (draws.mean(0) - mean)[missing] / (var[missing].sqrt() / math.sqrt(300))
    assert z.abs().max() < 4
    ratio = draws.var(0)[missing] / var[missing]  # standard error about 0.08
    assert ((ratio > 0.65) & (ratio < 1.35)).all(), ratio


def masked_ppca(x, mask=None):
    """The PPCA written with a masked likelihood, as impute's docstring asks (not obs_mask)."""
    w, b, sigma = missing_data._params()
    with pyro.plate("rows", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(missing_data.RANK), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w + b, sigma).mask(mask).to_event(1), obs=x)


def test_masked_likelihood_ppca_imputation_is_the_gaussian_conditional_mean():
    x, mask = missing_data.rows(6)
    w = _ppca_store()
    encoder = ExactPosterior(w, 0.3)

    def guide(x, mask=None):
        with pyro.plate("rows", x.shape[0]):
            loc, scale = encoder(x, mask)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    mean, _ = ppca_conditional(x, mask, w, 0.3)
    got = impute(masked_ppca, x, mask, guide=guide, num_samples=20000, chunk=5000)
    assert torch.equal(got[mask], x[mask])
    assert (got - mean).abs().max() < 0.03


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
