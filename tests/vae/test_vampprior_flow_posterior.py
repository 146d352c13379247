"""A VampPrior bound to an IAF posterior: its components are the posterior's Normal stage
(the encoder's ``(loc, scale)`` at each pseudo-input), not the flowed posteriors, by design
(scoring a flowed component inverts its IAF, ``z_dim`` sequential passes per step for every
latent and pseudo-input; see the VampPrior docstring). Pinned here against the closed form
of that mixture, and shown to differ from the flowed aggregate, so that a change to either
is a decision, not an accident."""

from __future__ import annotations

import math

import torch

from pyro_gen.distributions import VampPrior
from pyro_gen.vae import VAE, IAFPosterior, MLPEncoder

K, Z = 4, 2


def _vae() -> VAE:
    """A float64 VAE whose IAF steps are far from the identity (random weights of scale 0.5,
    rather than the near-identity start), so flowed and Normal-stage components differ."""
    torch.manual_seed(0)
    posterior = IAFPosterior(MLPEncoder((3,), Z, (8,)), num_flows=2, hidden_dims=(8,))
    with torch.no_grad():
        for p in posterior.flows.parameters():
            p.normal_(0.0, 0.5)
    prior = VampPrior((3,), num_components=K)
    return VAE((3,), z_dim=Z, hidden_dim=8, prior=prior, posterior=posterior).double()


def _normal_stage_mixture(vae: VAE, z: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k N(z; mu(u_k), sigma^2(u_k)), one component at a time."""
    u = vae.prior.pseudo_inputs()
    dens = torch.zeros(z.shape[0], dtype=z.dtype)
    for k in range(K):
        loc, scale = vae.posterior.encode(u[k : k + 1])
        dens += torch.distributions.Normal(loc[0], scale[0]).log_prob(z).sum(-1).exp() / K
    return dens.log()


def _flowed_mixture(vae: VAE, z: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k q(z | u_k) with the IAF posterior's own (flowed) density."""
    q = vae.posterior(vae.prior.pseudo_inputs())  # batch (K,)
    log_q = q.log_prob(z.unsqueeze(-2).expand(z.shape[0], K, Z))
    return log_q.logsumexp(-1) - math.log(K)


def _guide_draws(vae: VAE, n: int = 64) -> torch.Tensor:
    """Latents where the prior is scored in training: draws from the flowed posterior."""
    x = torch.rand(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return vae.posterior(x).sample()


def test_components_are_the_encoders_normals_at_the_pseudo_inputs():
    vae = _vae()
    z = _guide_draws(vae)
    with torch.no_grad():
        assert torch.allclose(vae.prior().log_prob(z), _normal_stage_mixture(vae, z), atol=1e-10)


def test_the_prior_is_not_the_flowed_aggregate_posterior():
    vae = _vae()
    z = _guide_draws(vae)
    with torch.no_grad():
        gap = (vae.prior().log_prob(z) - _flowed_mixture(vae, z)).abs()
    # far beyond rounding (4.4 nats on average here): the flows move the components.
    # Flowing the VampPrior's components would make the gap zero: a decision that changes
    # this test and the VampPrior docstring together
    assert gap.mean() > 1.0
