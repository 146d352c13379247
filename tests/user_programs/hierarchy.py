"""Global latents over a two-level local hierarchy, trained on minibatches of groups with a
subsampled plate (``pyro.plate("groups", N, subsample=idx)``), as in Pyro's SVI part II:

.. math::

    \\mu \\sim \\mathcal{N}(0, s^2),\\quad \\tau \\sim \\operatorname{LogNormal}(0, r^2),\\quad
    \\theta_g \\sim \\mathcal{N}(\\mu, \\tau^2),\\quad
    \\eta_{gi} \\sim \\mathcal{N}(\\theta_g, \\omega^2),\\quad
    y_{gi} \\sim \\mathcal{N}(\\eta_{gi}, \\sigma^2).

Given :math:`\\tau` everything is Gaussian, so :math:`\\log p(y)` is exact up to a
one-dimensional quadrature over :math:`\\log \\tau` (:func:`exact_log_likelihood`).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

NUM_GROUPS, NUM_ITEMS = 12, 4
MU_SCALE, LOG_TAU_SCALE, OMEGA, SIGMA = 2.0, 0.5, 0.5, 0.5


def model(y: torch.Tensor, idx: torch.Tensor) -> None:
    """``y``: the items of the groups ``idx`` (shape ``(len(idx), NUM_ITEMS)``)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), MU_SCALE))
    tau = pyro.sample("tau", dist.LogNormal(y.new_zeros(()), LOG_TAU_SCALE))
    with pyro.plate("groups", NUM_GROUPS, subsample=idx, dim=-2):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        with pyro.plate("items", NUM_ITEMS, dim=-1):
            eta = pyro.sample("eta", dist.Normal(theta, OMEGA))
            pyro.sample("y", dist.Normal(eta, SIGMA), obs=y)


def simulate(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of ``y`` for all groups from the model, and the group index ``arange(G)``."""
    g = torch.Generator().manual_seed(seed)
    mu = MU_SCALE * torch.randn((), generator=g)
    tau = (LOG_TAU_SCALE * torch.randn((), generator=g)).exp()
    theta = mu + tau * torch.randn(NUM_GROUPS, 1, generator=g)
    eta = theta + OMEGA * torch.randn(NUM_GROUPS, NUM_ITEMS, generator=g)
    return eta + SIGMA * torch.randn(NUM_GROUPS, NUM_ITEMS, generator=g), torch.arange(NUM_GROUPS)


def exact_log_likelihood(y: torch.Tensor, num_points: int = 2001) -> float:
    """:math:`\\log p(y)` for all groups: Gaussian given :math:`\\tau`, integrated over
    :math:`u = \\log \\tau` with the trapezoid rule on :math:`\\pm 10` prior standard deviations."""
    y = y.double().reshape(-1)
    n = y.numel()
    group = torch.arange(NUM_GROUPS).repeat_interleave(NUM_ITEMS)
    same_group = (group[:, None] == group[None, :]).double()
    u = torch.linspace(-10 * LOG_TAU_SCALE, 10 * LOG_TAU_SCALE, num_points, dtype=torch.float64)
    cov = (
        MU_SCALE**2 * torch.ones(n, n, dtype=torch.float64)
        + torch.exp(2 * u)[:, None, None] * same_group
        + (OMEGA**2 + SIGMA**2) * torch.eye(n, dtype=torch.float64)
    )
    log_lik = dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(y)
    log_prior = dist.Normal(torch.tensor(0.0, dtype=torch.float64), LOG_TAU_SCALE).log_prob(u)
    log_f = log_lik + log_prior
    weights = torch.full_like(u, (u[1] - u[0]).item())
    weights[[0, -1]] /= 2
    return float(torch.logsumexp(log_f + weights.log(), 0))


def _local_guide(y: torch.Tensor, idx: torch.Tensor, mu: torch.Tensor) -> None:
    """``q(theta_g | y_g, mu)`` and ``q(eta_gi | y_gi, theta_g)``, each Normal with a mean
    linear in what it conditions on (the form of the exact conditional posteriors)."""
    w_theta = pyro.param("w_theta", torch.tensor([0.5, 0.5]))
    theta_scale = pyro.param("theta_scale", torch.tensor(0.5), constraint=constraints.positive)
    w_eta = pyro.param("w_eta", torch.tensor([0.5, 0.5]))
    eta_scale = pyro.param("eta_scale", torch.tensor(0.3), constraint=constraints.positive)
    with pyro.plate("groups", NUM_GROUPS, subsample=idx, dim=-2):
        y_bar = y.mean(-1, keepdim=True)
        theta = pyro.sample("theta", dist.Normal(w_theta[0] * y_bar + w_theta[1] * mu, theta_scale))
        with pyro.plate("items", NUM_ITEMS, dim=-1):
            pyro.sample("eta", dist.Normal(w_eta[0] * y + w_eta[1] * theta, eta_scale))


def guide(y: torch.Tensor, idx: torch.Tensor) -> None:
    """Hand-written: mean-field Normal / LogNormal global parts, structured local part."""
    mu_loc = pyro.param("mu_loc", torch.tensor(0.0))
    mu_scale = pyro.param("mu_scale", torch.tensor(0.5), constraint=constraints.positive)
    tau_loc = pyro.param("tau_loc", torch.tensor(0.0))
    tau_scale = pyro.param("tau_scale", torch.tensor(0.3), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
    pyro.sample("tau", dist.LogNormal(tau_loc, tau_scale))
    _local_guide(y, idx, mu)


class FlowGuide(nn.Module):
    """``(mu, log tau)`` jointly from a Normal pushed through flow layers, the local part as
    in :func:`guide`. The joint draw is an auxiliary site; ``mu`` and ``tau`` are Deltas on
    it (``tau``'s carries the log-Jacobian of ``exp``), the pattern of Pyro's AutoContinuous.
    """

    def __init__(self, iafs: list[nn.Module]) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))
        self.log_scale = nn.Parameter(torch.full((2,), math.log(0.3)))
        self.iafs = nn.ModuleList(iafs)

    def forward(self, y: torch.Tensor, idx: torch.Tensor) -> None:
        pyro.module("hierarchy_flow_guide", self)
        base = dist.Normal(self.loc, self.log_scale.exp()).to_event(1)
        v = pyro.sample(
            "globals",
            dist.TransformedDistribution(base, list(self.iafs)),
            infer={"is_auxiliary": True},
        )
        mu = pyro.sample("mu", dist.Delta(v[..., 0]))
        pyro.sample("tau", dist.Delta(v[..., 1].exp(), log_density=-v[..., 1]))
        _local_guide(y, idx, mu)
