"""The Bayesian-decoder VAE: global weight sites beside local latents, scaled correctly."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_gen.infer import evaluate_elbo, fit
from pyro_gen.vae.bayesian import BayesianLinear, BayesianVAE
from pyro_gen.vae.sites import DATA_PLATE, LATENT, OBS


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    centres = torch.bernoulli(torch.full((2, 6), 0.5), generator=g)
    return torch.bernoulli(
        0.05 + 0.9 * centres[torch.randint(0, 2, (40,), generator=g)], generator=g
    )


def test_weights_are_global_latents_and_the_minibatch_is_scaled(data):
    pyro.clear_param_store()
    vae = BayesianVAE((6,), z_dim=2, hidden_dims=(5,), num_data=40)
    guide_trace = poutine.trace(vae.guide).get_trace(data[:8])
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(data[:8])
    for name in vae.weight_sites():
        for trace in (guide_trace, model_trace):
            site = trace.nodes[name]
            assert not site["cond_indep_stack"] and site["scale"] == 1.0  # once per data set
    for name in (LATENT, OBS):
        site = model_trace.nodes[name]
        assert [f.name for f in site["cond_indep_stack"]] == [DATA_PLATE]
        assert site["scale"] == pytest.approx(40 / 8)
    assert guide_trace.nodes[LATENT]["scale"] == pytest.approx(40 / 8)


def test_particle_batched_weights_apply_per_particle():
    layer = BayesianLinear(3, 2)
    w, b, h = torch.randn(4, 1, 2, 3), torch.randn(4, 1, 2), torch.randn(4, 5, 3)
    out = poutine.condition(layer, data={"weight": w, "bias": b})(h)
    looped = torch.stack([h[k] @ w[k, 0].T + b[k, 0] for k in range(4)])
    assert torch.allclose(out, looped, atol=1e-6)


def test_evaluation_counts_the_weights_once_whatever_the_batch_size(data):
    pyro.clear_param_store()
    vae = BayesianVAE((6,), z_dim=2, hidden_dims=(5,), num_data=40)
    values = []
    for batch_size in (8, 40):
        pyro.set_rng_seed(0)
        values.append(evaluate_elbo(vae, data, batch_size=batch_size, num_particles=200))
    assert values[0] == pytest.approx(values[1], abs=0.15)


def test_fit_trains_the_weights_guide_and_the_encoder_together(data):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = BayesianVAE((6,), z_dim=2, hidden_dims=(8,), num_data=40, init_scale=0.1)
    before = evaluate_elbo(vae, data, num_particles=100)
    # compile=False: recording the compiled step would cost more than these 40 steps
    fit(
        vae,
        data,
        loss=Trace_ELBO(),
        epochs=20,
        batch_size=20,
        progress=False,
        compile=False,
        optim=pyro.optim.Adam({"lr": 3e-2}),
    )
    after = evaluate_elbo(vae, data, num_particles=100)
    assert after > before + 1.0
    draws = vae.sample(3, num_decoders=4)
    assert draws.shape == (4, 3, 6) and draws.std(0).mean() > 0  # epistemic spread


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="prior_scale must be positive"):
        BayesianVAE((6,), prior_scale=0.0)
    vae = BayesianVAE((6,), z_dim=2, hidden_dims=(5,), num_data=4)
    with pytest.raises(ValueError, match="larger than num_data=4"):
        vae.model(torch.zeros(5, 6))


def test_trains_with_pyros_mean_field_elbo_without_its_ordering_warning(data):
    """The guide samples its sites in the model's order (z, then the weights), so Pyro's
    TraceMeanField_ELBO verifies the mean-field restriction instead of warning that it
    could not (the weights' guide used to run first)."""
    import warnings

    from pyro.infer import SVI, TraceMeanField_ELBO

    pyro.clear_param_store()
    vae = BayesianVAE((6,), z_dim=2, hidden_dims=(5,))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*mean field restriction")
        assert torch.isfinite(torch.tensor(svi.step(data[:8])))
