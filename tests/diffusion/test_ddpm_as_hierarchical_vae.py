"""A full-chain DDPM as the Markovian hierarchical VAE it is: with a user's denoiser that is
linear in :math:`x_t`, the reverse chain is linear-Gaussian, so the model's marginal
:math:`p_\\theta(x_0)` is a Gaussian computed here by hand (Ho et al.'s reverse mean
:math:`(x_t - \\beta_t \\hat\\epsilon / \\sqrt{1-\\bar\\alpha_t}) / \\sqrt{\\alpha_t}`,
not the library's posterior-coefficient form). Pyro's importance weights over the model and
its forward-process guide then estimate :math:`\\log p_\\theta(x_0)` itself:
:func:`~pyro_gen.infer.iwae_log_likelihood` must reach the closed form, and Pyro's ELBO of the
same pair must lie below it.
"""

from __future__ import annotations

import pyro
import torch
from torch import nn

from pyro_gen.diffusion import DDPM
from pyro_gen.infer import iwae_log_likelihood

D = torch.float64
BETAS = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=D)  # the user's own schedule, T = 4


class LinearDenoiser(nn.Module):
    """eps_hat = a_t x_t + b_t, one (a_t, b_t) per step: a user's network of whole steps."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=D))
        self.b = nn.Parameter(torch.tensor([0.1, -0.2, 0.05, 0.0], dtype=D))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.a[t - 1][:, None] * x + self.b[t - 1][:, None]


def model_marginal(net: LinearDenoiser) -> torch.distributions.Normal:
    """p(x_0) of the reverse chain x_T ~ N(0, 1), x_{t-1} ~ N(k_t x_t + d_t, v_t)."""
    ab = torch.cumprod(1 - BETAS, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=D), ab[:-1]])
    posterior = BETAS * (1 - ab_prev) / (1 - ab)
    # fixed_small variances; the decoder (t = 1) takes step 2's, as the clipped log-variance
    variances = torch.cat([posterior[1:2], posterior[1:]])
    mean, var = torch.zeros((), dtype=D), torch.ones((), dtype=D)
    with torch.no_grad():
        for i in reversed(range(len(BETAS))):
            c = BETAS[i] / (1 - ab[i]).sqrt()
            scale = (1 - BETAS[i]).sqrt()
            k, d = (1 - c * net.a[i]) / scale, -c * net.b[i] / scale
            mean, var = k * mean + d, k * k * var + variances[i]
    return torch.distributions.Normal(mean, var.sqrt())


def test_importance_weights_of_the_chain_reach_the_models_gaussian_marginal():
    net = LinearDenoiser()
    m = DDPM(net, (1,), BETAS, form="full_chain", data="continuous")
    x = torch.tensor([[-1.0], [0.0], [0.7], [2.0]], dtype=D)
    exact = model_marginal(net).log_prob(x[:, 0])
    torch.manual_seed(1)
    iwae = iwae_log_likelihood(m, x, num_samples=20000, per_example=True)
    # six seeds of 20000 draws: mean error 0.002, standard error 0.003 per point
    assert torch.allclose(iwae, exact, atol=0.03, rtol=0)
    torch.manual_seed(2)
    elbo = pyro.infer.TraceMeanField_ELBO(
        num_particles=400, vectorize_particles=True, max_plate_nesting=1
    )
    bound = torch.tensor([-elbo.loss(m.model, m.guide, x[i : i + 1]) for i in range(4)])
    # the bound is below log p by the forward process's KL from the chain's posterior
    # (0.7 to 1.1 nats here, its Monte Carlo error about 0.1), and not by an absurd amount
    assert (bound < exact - 0.05).all() and (bound > exact - 3).all()
