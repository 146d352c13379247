"""Closed forms for tests: a Gaussian mixture data distribution perturbed by a linear SDE.

Under :math:`p_{0t}(x_t \\mid x_0) = \\mathcal N(\\alpha x_0, \\sigma^2 I)` the mixture
:math:`\\sum_k w_k \\mathcal N(\\mu_k, \\Sigma_k)` stays a mixture,
:math:`\\sum_k w_k \\mathcal N(\\alpha\\mu_k, \\alpha^2\\Sigma_k + \\sigma^2 I)`, so its score and
log-density are known at every time.
"""

from __future__ import annotations

import math

import torch

from pyro_gen.diffusion.sde import SDE


class MixtureScore:
    """The exact score of a perturbed Gaussian mixture; quacks like a score model."""

    def __init__(self, sde: SDE, weights, means, covs) -> None:
        self.sde = sde
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.mu = torch.as_tensor(means, dtype=torch.float64)
        self.cov = torch.as_tensor(covs, dtype=torch.float64)
        self.event_shape = (self.mu.shape[-1],)
        self.eps = 1e-3

    def components(self, t: torch.Tensor):
        """Means ``(..., K, D)`` and covariances ``(..., K, D, D)`` at times ``t``."""
        alpha, sigma = self.sde.marginal(t.to(torch.float64))
        a, s = alpha[..., None, None], sigma[..., None, None]
        eye = torch.eye(self.mu.shape[-1], dtype=torch.float64)
        return a * self.mu, a[..., None] ** 2 * self.cov + s[..., None] ** 2 * eye

    def _terms(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        # Samplers ask at one time for the whole batch: then the K components are computed
        # once (the tests would otherwise spend their time on batched Choleskys).
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.dim() == 0 or bool((t == t.reshape(-1)[0]).all()):
            t = t.reshape(-1)[0]
        mean, cov = self.components(t)
        prec = torch.linalg.inv(cov)
        diff = x.double()[..., None, :] - mean  # (..., K, D)
        grads = -(prec @ diff[..., None])[..., 0]
        quad = -(diff * grads).sum(-1)
        dim = self.mu.shape[-1]
        logp = -0.5 * (quad + torch.logdet(cov) + dim * math.log(2 * math.pi)) + self.w.log()
        return logp, grads

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """:math:`\\log p_t(x)`."""
        return torch.logsumexp(self._terms(x, t)[0], -1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """:math:`\\nabla_x \\log p_t(x)`."""
        logp, grads = self._terms(x, t)
        return (torch.softmax(logp, -1)[..., None] * grads).sum(-2).to(x.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.cov)
        z = torch.randn(n, self.mu.shape[-1], dtype=torch.float64, generator=generator)
        return self.mu[k] + (chol[k] @ z[..., None])[..., 0]

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (self.w[:, None] * self.mu).sum(0)
        second = (self.w[:, None, None] * (self.cov + self.mu[:, :, None] * self.mu[:, None])).sum(
            0
        )
        return mean, second - mean[:, None] * mean


def gaussian(sde: SDE) -> MixtureScore:
    """A correlated 2D Gaussian."""
    return MixtureScore(sde, [1.0], [[1.0, -0.5]], [[[0.36, 0.18], [0.18, 0.25]]])


def mixture(sde: SDE) -> MixtureScore:
    """Two unequal, well separated 2D Gaussians."""
    return MixtureScore(
        sde,
        [0.3, 0.7],
        [[-2.0, 0.0], [1.5, 1.0]],
        [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]],
    )


def gaussian_expected_bound(cf: MixtureScore, eps: float, nodes: int = 400) -> float:
    """:math:`\\mathbb E_x` of the continuous-time bound (:mod:`pyro_gen.diffusion.bound`) for
    Gaussian data (one component) under its exact score.

    With :math:`x = \\mu + \\delta`, :math:`x_t = \\alpha x + \\sigma\\epsilon` and
    :math:`s = -P(x_t - \\alpha\\mu)`, :math:`P = (\\alpha^2\\Sigma + \\sigma^2 I)^{-1}`:
    :math:`\\sigma^2\\, \\mathbb E\\|s + \\epsilon/\\sigma\\|^2 = \\alpha^2\\sigma^2
    \\operatorname{tr}(P\\Sigma P) + \\operatorname{tr}((I - \\sigma^2 P)^2)`, integrated over the
    log noise-to-signal ratio :math:`\\gamma` by Gauss-Legendre; the prior KL and the
    reconstruction term in closed form.
    """
    import numpy as np

    from pyro_gen.diffusion.bound import _log_snr, log_snr_inverse

    if cf.mu.shape[0] != 1:
        raise ValueError("the closed-form bound is for a single Gaussian")
    sde = cf.sde
    mu, S = cf.mu[0], cf.cov[0]
    D = mu.shape[0]
    with torch.no_grad():
        ends = _log_snr(sde, torch.tensor([eps, 1.0], dtype=torch.float64))
        g0, g1 = float(ends[0]), float(ends[1])
        z, w = np.polynomial.legendre.leggauss(nodes)
        gamma = torch.tensor(g0 + (g1 - g0) * (z + 1) / 2)
        a, s = sde.marginal(log_snr_inverse(sde, gamma, eps, 1.0))
        eye = torch.eye(D, dtype=torch.float64)
        P = torch.linalg.inv(a[:, None, None] ** 2 * S + s[:, None, None] ** 2 * eye)
        f = (a * s) ** 2 * torch.einsum("kij,jl,kli->k", P, S, P)
        f = f + ((eye - s[:, None, None] ** 2 * P) ** 2).sum((-1, -2))
        diffusion = 0.5 * (g1 - g0) / 2 * float((torch.tensor(w) * f).sum())
        a1, s1 = (float(v) for v in sde.marginal(torch.tensor(1.0, dtype=torch.float64)))
        ae, se = (float(v) for v in sde.marginal(torch.tensor(eps, dtype=torch.float64)))
    p2 = sde.prior_std**2
    ex2 = torch.diagonal(S) + mu**2
    prior = float(0.5 * (s1**2 / p2 + a1**2 * ex2 / p2 - 1 - math.log(s1**2 / p2)).sum())
    recon = 0.5 * D * (math.log(2 * math.pi) + 2 * math.log(se / ae) + 1)
    return prior + recon + diffusion
