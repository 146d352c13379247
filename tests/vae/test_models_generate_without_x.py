"""The protocol's ``model(x=None, ...)`` generates, as ``VAE``, ``HierarchicalVAE`` and
``DiscreteVAE`` do, so that Pyro's prior (and posterior) predictive runs a model as written:
``Predictive(model, num_samples=S)(None, num_samples=B)``. ``SSVAE.model`` and
``BayesianVAE.model`` required ``x`` and failed with ``AttributeError: 'NoneType' object has
no attribute 'dim'``. Checked here against the parts: each generated example's likelihood is
the decoder's at the drawn latents (and weights), labels follow the prior, and the guides,
which encode ``x``, say that they need it."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive
from torch.nn import functional as F

from pyro_gen.vae import SSVAE, BayesianVAE


def test_ssvae_generates_from_its_prior_under_predictive():
    torch.manual_seed(0)
    m2 = SSVAE((4, 4), num_classes=3, z_dim=2, hidden_dims=(8,))
    samples = Predictive(m2.model, num_samples=2000, parallel=True)(None, num_samples=3)
    assert samples["x"].shape == (2000, 3, 4, 4)
    # labels uniform (prior logits zero): each class 1/3 of 6000 draws, within 5 std errors
    counts = torch.bincount(samples["y"].flatten(), minlength=3).double() / 6000
    assert bool(((counts - 1 / 3).abs() < 5 * (2 / 9 / 6000) ** 0.5).all())
    # each example's likelihood is the decoder's at its own label and style
    trace = poutine.trace(m2.model).get_trace(num_samples=4)
    y, z = trace.nodes["y"]["value"], trace.nodes["z"]["value"]
    expected = m2.decoder(z, context=F.one_hot(y, 3).to(z.dtype))
    torch.testing.assert_close(trace.nodes["x"]["fn"].mean, expected.mean)
    assert not trace.nodes["x"]["is_observed"]


def test_ssvae_generates_given_labels_and_its_guide_needs_x():
    m2 = SSVAE((4, 4), num_classes=3, z_dim=2, hidden_dims=(8,))
    labels = torch.tensor([2, 0])
    trace = poutine.trace(m2.model).get_trace(y=labels)
    assert trace.nodes["y"]["is_observed"] and torch.equal(trace.nodes["y"]["value"], labels)
    assert trace.nodes["x"]["value"].shape == (2, 4, 4)
    with pytest.raises(ValueError, match="SSVAE.guide needs the examples x"):
        m2.guide(None)


def test_bayesian_vae_posterior_predictive_decodes_with_the_guides_weights():
    """Weights drawn by the weight guide, latents by the prior: each generated example's
    likelihood is the decoder's with those weights at those latents."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = BayesianVAE((4, 4), z_dim=2, hidden_dims=(8,), num_data=10)
    assert vae.model(num_samples=3).shape == (3, 4, 4)
    samples = Predictive(vae.model, guide=vae.weight_guide, num_samples=4)(None, num_samples=3)
    assert samples["x"].shape == (4, 3, 4, 4)
    guide_trace = poutine.trace(vae.weight_guide).get_trace(None, num_samples=3)
    trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(num_samples=3)
    weights = {name: guide_trace.nodes[name]["value"] for name in vae.weight_sites()}
    params = poutine.condition(vae.decoder.params, data=weights)(trace.nodes["z"]["value"])
    torch.testing.assert_close(trace.nodes["x"]["fn"].mean, vae.decoder.likelihood.mean(params))
    with pytest.raises(ValueError, match="BayesianVAE.guide needs the examples x"):
        vae.guide(None)
