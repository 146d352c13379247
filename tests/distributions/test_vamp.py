"""VampPrior: log density equals the average of the encoder's posteriors at the
pseudo-inputs, computed directly; binding to guides; gradients."""

from __future__ import annotations

import pytest
import torch

from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae import VAE, MLPEncoder, NormalPosterior, PerExamplePosterior


def test_log_prob_is_mean_of_posteriors_at_pseudo_inputs():
    torch.manual_seed(0)
    guide = NormalPosterior(MLPEncoder((3, 3), 2, (8,))).double()
    prior = VampPrior((3, 3), num_components=4).double()
    prior.bind(guide)
    z = torch.randn(5, 2, dtype=torch.float64)
    u = prior.pseudo_inputs()
    assert u.shape == (4, 3, 3) and u.min() >= 0 and u.max() <= 1
    dens = torch.zeros(5, dtype=torch.float64)
    for k in range(4):
        loc, scale, _ = guide.encoder(u[k : k + 1])
        dens += torch.distributions.Normal(loc[0], scale[0]).log_prob(z).sum(-1).exp() / 4
    assert torch.allclose(prior().log_prob(z), dens.log(), atol=1e-10)


def test_init_from_data_and_gradients_reach_pseudo_inputs_and_encoder():
    x = torch.rand(6, 4, 4) * 0.9 + 0.05
    prior = VampPrior((4, 4), num_components=6, init=x)
    assert torch.allclose(prior.pseudo_inputs(), x, atol=1e-5)
    vae = VAE((4, 4), z_dim=2, hidden_dim=8, prior=prior)
    prior().log_prob(torch.randn(3, 2)).sum().backward()
    assert prior.pseudo_inputs_raw.grad.abs().sum() > 0
    assert vae.posterior.encoder.loc.weight.grad.abs().sum() > 0
    # the encoder is not a submodule of the prior (registered once, through the guide)
    assert not any(n.startswith("_encode") for n, _ in prior.named_parameters())
    assert len(list(prior.parameters())) == 1


def test_errors():
    prior = VampPrior((2,), num_components=3)
    with pytest.raises(RuntimeError, match="bind"):
        prior()
    with pytest.raises(TypeError, match="amortized"):
        prior.bind(PerExamplePosterior(4, 2))
    with pytest.raises(ValueError, match="VampPrior"):
        VAE((2,), z_dim=2, hidden_dim=4, prior=VampPrior((2,), 3), guide="auto")
