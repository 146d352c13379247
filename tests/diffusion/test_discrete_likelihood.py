"""Likelihoods of discrete data (8-bit-like levels) against closed forms: the probability-flow
ODE with uniform dequantization or with a discrete decoder at its data end, and the sampled
DDPM bound against the full one.

The data: two independent dimensions on ``K`` levels of [-1, 1], each with a point mass at
-1 (like MNIST's black pixels), one at +1 and a discretized Gaussian between. Perturbed by a
linear SDE, each dimension is a mixture of ``K`` Gaussians, so the score and the density at
every time, the true :math:`-\\log P(x)`, and each estimator's expectation are known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_gen.diffusion import DDPM, DDPMScore, NoiseSchedule, linear_betas, variational_bound
from pyro_gen.diffusion.likelihood import DiscretizedGaussian, sampled_variational_bound
from pyro_gen.diffusion.ode_likelihood import (
    probability_flow_bits_per_dim,
    probability_flow_decoder_bound,
)
from pyro_gen.diffusion.sde import SDE, VPSDE, ScheduleSDE

K, D = 32, 2


class DiscreteData:
    """Per-dimension probabilities ``P`` of the levels ``v``; quacks like a score model."""

    def __init__(self, sde: SDE, eps: float, levels: int = K) -> None:
        self.v = torch.linspace(-1, 1, levels, dtype=torch.float64)
        p = 0.3 * torch.distributions.Normal(0.2, 0.3).log_prob(self.v).exp()
        p = p / p.sum()
        p[0] += 0.6 / 0.3
        p[-1] += 0.1 / 0.3
        self.logP = (p / p.sum()).log()
        self.sde, self.event_shape, self.eps = sde, (D,), eps

    def _components(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[:1])
        a, s = (c[:, None, None] for c in self.sde.marginal(t))
        diff = x.double()[..., None] - a * self.v  # (B, D, K)
        logc = self.logP - 0.5 * (diff / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)
        return logc, diff / s**2

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """:math:`\\log p_t(x)`."""
        return torch.logsumexp(self._components(x, t)[0], -1).sum(-1)

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        logc, grad = self._components(x, t)
        return -(logc.softmax(-1) * grad).sum(-1).to(x.dtype)

    def sample_levels(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(n)
        return torch.multinomial(self.logP.exp(), n * D, True, generator=g).reshape(n, D)

    def nll(self, level: torch.Tensor) -> torch.Tensor:
        return -self.logP[level].sum(-1)

    def decoder_expectation(self, level: torch.Tensor, t1: float, log_decoder) -> torch.Tensor:
        """:math:`-\\log P(x) + \\mathbb E_{q(x_{t_1} | x)} [\\log q(x | x_{t_1}) - \\log
        p(x | x_{t_1})]`, the decoder bound's expectation under the exact ODE density
        (``log_decoder(x1, x0) -> (..., D)`` per dimension), by Gauss-Hermite per dimension."""
        z, w = np.polynomial.hermite_e.hermegauss(60)
        z, w = torch.tensor(z), torch.tensor(w) / math.sqrt(2 * math.pi)
        a, s = (float(c) for c in self.sde.marginal(torch.tensor(t1, dtype=torch.float64)))
        x0 = self.v[level]  # (N, D)
        x1 = a * x0[..., None] + s * z  # (N, D, Q)
        logc = self.logP - 0.5 * ((x1[..., None] - a * self.v) / s) ** 2
        post = logc.log_softmax(-1).gather(-1, level[:, :, None, None].expand(*x1.shape, 1))
        dec = log_decoder(x1.transpose(1, 2), x0[:, None, :].expand(-1, z.numel(), -1))
        return self.nll(level) + ((post[..., 0] - dec.transpose(1, 2)) * w).sum((-1, -2))


class OracleEps(torch.nn.Module):
    """The exact noise prediction of :class:`DiscreteData` at (fractional) DDPM steps."""

    def __init__(self, data: DiscreteData, T: int) -> None:
        super().__init__()
        self.data, self.T = data, T
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, steps):
        t = steps.to(torch.float64) / self.T
        sigma = self.data.sde.marginal(t)[1][:, None]
        return -sigma * self.data.score(x, t) + 0 * self.dummy


def _ddpm(T: int = 100, levels: int = K):
    schedule = NoiseSchedule(linear_betas(T))
    data = DiscreteData(ScheduleSDE(schedule), 1.0 / T, levels)
    ddpm = DDPM(OracleEps(data, T), (D,), schedule, data="image", num_bins=levels).double()
    return data, ddpm


def _ddpm_decoder(ddpm):
    @torch.no_grad()
    def log_decoder(x1, x0):
        p = ddpm.p_mean_logvar(x1.reshape(-1, D), 1)
        d = DiscretizedGaussian(p["mean"], (0.5 * p["log_var"]).exp(), ddpm.num_bins)
        return d.log_prob(x0.reshape(-1, D)).reshape(x1.shape)

    return log_decoder


def _vdm_decoder(data, t1):
    a, s = (float(c) for c in data.sde.marginal(torch.tensor(t1, dtype=torch.float64)))

    def log_decoder(x1, x0):
        logits = -0.5 * ((x1[..., None] - a * data.v) / s) ** 2
        idx = ((x0 + 1) / 2 * (K - 1)).round().long()[..., None]
        return logits.log_softmax(-1).gather(-1, idx)[..., 0]

    return log_decoder


@pytest.mark.parametrize("kind", ["ddpm", "score"])
def test_decoder_endpoint_matches_its_closed_form(kind):
    """Under the exact score the decoder bound's mean equals -log P(x) plus the decoder's
    expected error E log q(x | x_t1) / p(x | x_t1), computed by quadrature: checks the ODE's
    data end, the entropy and the decoder (the DDPM's own, or VDM's for a score model)."""
    torch.manual_seed(0)
    if kind == "ddpm":
        data, ddpm = _ddpm()
        model, t1, decoder = DDPMScore(ddpm), 1 / 100, _ddpm_decoder(ddpm)
    else:
        data = DiscreteData(VPSDE(), 1e-3)
        model, t1 = data, 1e-3
        decoder = _vdm_decoder(data, t1)
    level = data.sample_levels(12).repeat(6, 1)  # 6 draws of x_t1 for each of 12 points
    x = level.double() / (K - 1) if kind == "ddpm" else level
    g = torch.Generator().manual_seed(1)
    prior = lambda z: data.log_prob(z, 1.0)  # noqa: E731  (exact prior: no L_T mismatch)
    out = probability_flow_decoder_bound(model, x, num_bins=K, generator=g, rtol=1e-5,
                                         atol=1e-5, prior_log_prob=prior)  # fmt: skip
    total = out["total"].detach().reshape(6, 12).double()
    expected = data.decoder_expectation(level[:12], t1, decoder)
    diff = total.mean(0) - expected
    se = total.std(0).mean() / math.sqrt(6 * 12)
    assert abs(float(diff.mean())) < 4 * float(se) + 1e-3, (float(diff.mean()), float(se))
    # it bounds the true code length on average, and the parts add up
    assert float(expected.mean()) >= float(data.nll(level[:12]).mean())
    parts = out["ode"] + out["decoder"] - out["entropy"]
    assert torch.allclose(parts, out["total"])
    bpd = out["total"] / (D * math.log(2))
    assert torch.allclose(out["bits_per_dim"], bpd)


def test_dequantized_endpoint_is_the_exact_density_of_the_dequantized_point():
    # the same uniform draws rebuilt from the generator's seed: y in its bin of width 2/K
    data, ddpm = _ddpm()
    level = data.sample_levels(6)
    prior = lambda z: data.log_prob(z, 1.0)  # noqa: E731
    bpd = probability_flow_bits_per_dim(DDPMScore(ddpm), level.double() / (K - 1), num_bins=K,
                                        generator=torch.Generator().manual_seed(3), rtol=1e-6,
                                        atol=1e-6, prior_log_prob=prior)  # fmt: skip
    u = torch.rand(level.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    width = 2 / K
    y = -1 + (level + u) * width
    exact = -(data.log_prob(y, 1 / 100) + D * math.log(width)) / (D * math.log(2))
    assert torch.allclose(bpd.double(), exact, atol=1e-3)


def test_dequantizing_a_wide_first_noise_level_costs_more_than_decoding():
    """Why the two endpoints differ under the exact score, on 8-bit-like data and a
    1000-step DDPM (closed forms, no ODE): sigma(t_1) = 0.01 is wider than a bin (2/256),
    so p_t1 smears each level over its neighbours and beyond [-1, 1] (the figures quoted in
    probability_flow_bits_per_dim's docstring, per dimension)."""
    data, ddpm = _ddpm(T=1000, levels=256)
    level = data.sample_levels(128)
    t1, width = 1 / 1000, 2 / 256
    u = (torch.arange(40, dtype=torch.float64) + 0.5) / 40
    y = -1 + (level[..., None] + u) * width  # midpoint rule within each bin
    lp = data.log_prob(y.transpose(1, 2).reshape(-1, D), t1).reshape(-1, 40)
    true = float(data.nll(level).mean()) / D
    dequantized = float(-(lp.mean(-1) + D * math.log(width)).mean()) / D - true
    decoder = float(data.decoder_expectation(level, t1, _ddpm_decoder(ddpm)).mean()) / D - true
    assert 0.8 < dequantized < 0.95, dequantized  # nats/dim above -log P(x): 0.87
    assert 0.2 < decoder < 0.35, decoder  # 0.27


def test_sampled_bound_is_unbiased_for_the_full_bound():
    # a small untrained DDPM: the sampled estimate's mean over draws equals the full sum's
    from pyro_gen.diffusion import build_ddpm

    torch.manual_seed(2)
    m = build_ddpm((3,), timesteps=40, hidden_dim=16, variance="fixed_small")
    x = torch.randn(4, 3).repeat(200, 1)
    full = variational_bound(m, x, batch_size=800)["total"].reshape(200, 4)
    g = torch.Generator().manual_seed(0)
    est = sampled_variational_bound(m, x, strata=5, exact_steps=2, generator=g, batch_size=800)
    est = est["total"].reshape(200, 4)
    diff = est.mean(0) - full.mean(0)
    se = (est.var(0) / 200 + full.var(0) / 200).sqrt()
    assert bool((diff.abs() < 4 * se).all()), (diff, se)
    # stratified by steps of geometric length: the edges cover steps 3..40 once
    edges = sampled_variational_bound(m, x[:1], strata=5, exact_steps=2)["edges"]
    assert edges[0] == 3 and edges[-1] == 41 and bool((edges.diff() > 0).all())


def test_bad_input():
    data, ddpm = _ddpm(T=10)
    x = data.sample_levels(2) / (K - 1)
    sm = DDPMScore(ddpm)
    with pytest.raises(ValueError, match="endpoint must be one of"):
        probability_flow_bits_per_dim(sm, x, num_bins=K, endpoint="variational")
    with pytest.raises(ValueError, match="decodes from its step 1"):
        probability_flow_decoder_bound(sm, x, num_bins=K, eps=0.5)
    with pytest.raises(ValueError, match="must be the DDPM's"):
        probability_flow_decoder_bound(sm, x, num_bins=256)
    with pytest.raises(ValueError, match="levels"):
        probability_flow_decoder_bound(sm, x + 0.01, num_bins=K)
    with pytest.raises(ValueError, match="strata must be"):
        sampled_variational_bound(ddpm, x, strata=0)
    with pytest.raises(ValueError, match="exact_steps"):
        sampled_variational_bound(ddpm, x, exact_steps=11)
