"""Parts of a VAE: likelihoods, encoders, decoders, priors (flow prior normalization)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_gen.vae import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    ConvDecoder,
    ConvEncoder,
    FlowPrior,
    GaussianLikelihood,
    MLPDecoder,
    MLPEncoder,
    NormalPrior,
    make_likelihood,
    make_prior,
)


def test_bernoulli_matches_closed_form_and_checks_range():
    lik = BernoulliLikelihood()
    logits = torch.randn(4, 3, 1)
    x = torch.rand(4, 3)  # fractional targets: cross-entropy
    p = torch.sigmoid(logits[..., 0])
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    assert torch.allclose(lik(logits, 1).log_prob(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lik.prepare(torch.tensor([0.0, 1.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lik.prepare(torch.tensor([-0.1, 0.5]))
    # integers: 0/1 or 0-255 cannot be told apart; torch raised "result type Float can't be
    # cast to the desired output type Long" from inside the ELBO
    for dtype in (torch.long, torch.uint8, torch.bool):
        with pytest.raises(TypeError, match=rf"floating data in \[0, 1\], got {dtype}.*/ 255"):
            lik.prepare(torch.ones(3, dtype=dtype))


def test_build_vae_takes_an_int_event_shape_and_names_unknown_options():
    from pyro_gen.vae import build_vae

    assert build_vae(20, z_dim=4, hidden_dim=8).event_shape == (20,)  # was "'int' ... iterable"
    with pytest.raises(ValueError, match="unknown guide 'flow'; choose normal, iaf or auto"):
        build_vae(20, guide="flow")


def test_gaussian_fixed_and_learned_scale_bounded_below():
    fixed = GaussianLikelihood(scale=0.3)
    params = torch.zeros(2, 5, 1)
    x = torch.randn(2, 5)
    expected = torch.distributions.Normal(0.0, 0.3).log_prob(x).sum(-1)
    assert torch.allclose(fixed(params, 1).log_prob(x), expected, atol=1e-5)
    learned = GaussianLikelihood(scale="learned", min_scale=0.05)
    params = torch.cat([torch.zeros(2, 5, 1), torch.full((2, 5, 1), -1e4)], -1)
    scale = learned(params, 1).base_dist.scale
    assert torch.all(scale >= 0.05)  # the density stays bounded
    assert torch.isfinite(learned(params, 1).log_prob(torch.zeros(2, 5))).all()
    with pytest.raises(ValueError):
        GaussianLikelihood(scale=-1.0)


def test_categorical_levels_and_mean():
    lik = CategoricalLikelihood(256)
    x = torch.tensor([[0.0, 1.0, 128 / 255]])
    obs = lik.prepare(x)
    assert obs.tolist() == [[0, 255, 128]]
    logits = torch.zeros(1, 3, 256)
    assert torch.allclose(lik(logits, 1).log_prob(obs), torch.tensor([-3 * math.log(256)]))
    assert torch.allclose(lik.mean(logits), torch.full((1, 3), 0.5))
    with pytest.raises(ValueError):
        make_likelihood("poisson")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_learned", "categorical"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_decoders_and_encoders_broadcast_over_particles(likelihood, kind):
    shape = (8, 8)
    if kind == "mlp":
        enc, dec = MLPEncoder(shape, 3, (16,)), MLPDecoder(3, shape, (16,), likelihood)
    else:
        enc = ConvEncoder(shape, 3, channels=(4, 8), hidden_dim=16)
        dec = ConvDecoder(3, shape, channels=(8, 4), hidden_dim=16, likelihood=likelihood)
    loc, scale, h = enc(torch.rand(5, *shape))
    assert loc.shape == scale.shape == (5, 3) and torch.all(scale > 0)
    z = torch.randn(2, 5, 3)  # (particles, batch, z_dim)
    px = dec(z)
    assert px.batch_shape == (2, 5) and px.event_shape == shape
    x = dec.likelihood.prepare(torch.rand(5, *shape).round())
    assert px.log_prob(x).shape == (2, 5)
    mean = dec.mean(z)
    assert mean.shape == (2, 5, *shape)


def test_conv_needs_divisible_size_and_channels():
    with pytest.raises(ValueError, match="divisible"):
        ConvEncoder((6, 6), 2)
    enc = ConvEncoder((3, 8, 8), 2, channels=(4, 4), hidden_dim=8)
    assert enc(torch.rand(2, 3, 8, 8))[0].shape == (2, 2)


def test_flow_prior_integrates_to_one_in_2d():
    torch.manual_seed(0)
    prior = FlowPrior(2, num_flows=4, hidden_dims=(16,))
    with torch.no_grad():  # random, non-trivial weights
        for p in prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.linspace(-12, 12, 481)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        logp = prior().log_prob(z)
    mass = logp.exp().sum() * (g[1] - g[0]) ** 2
    assert abs(mass.item() - 1) < 0.01
    assert logp.std() > 0.5  # not just the base Normal


def test_priors_under_plate_and_with_particles():
    for name in ["normal", "mog", "flow"]:
        prior = make_prior(name, 4)
        with pyro.plate("data", 6):
            z = pyro.sample("z", prior())
        assert z.shape == (6, 4)
        assert prior().log_prob(torch.randn(3, 6, 4)).shape == (3, 6)
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior("cauchy", 2)
    with pytest.raises(ValueError, match="at least 1"):
        NormalPrior(0)
    with pytest.raises(ValueError, match="z_dim >= 2"):
        FlowPrior(1)
