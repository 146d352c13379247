"""Score-based samplers and the probability-flow likelihood, given the exact score of a
perturbed Gaussian / Gaussian mixture: each sampler must reproduce the data distribution and
the ODE log-density must equal the true one."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen.diffusion import (
    DDPM,
    VESDE,
    VPSDE,
    NoiseSchedule,
    ScheduleSDE,
    SubVPSDE,
    linear_betas,
    probability_flow_bits_per_dim,
    probability_flow_log_prob,
    sample,
)
from tests.diffusion.closed_form import gaussian, mixture

torch.set_num_threads(1)

SDES = {"ve": lambda: VESDE(0.01, 8.0), "vp": VPSDE, "subvp": SubVPSDE}
SAMPLER_ARGS = {
    "euler_maruyama": {"steps": 200},
    "pc": {"steps": 100, "snr": 0.1},
    "langevin": {"steps": 15, "steps_per_level": 40, "step_size": 0.5},
    "ode": {"rtol": 1e-4, "atol": 1e-4},
}
N = 2000


def _check_moments(x, mean, cov, what):
    # mean within 5 standard errors; covariance entries within 12% of the largest
    se = (cov.diagonal() / x.shape[0]).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se + 0.02).all(), (what, x.mean(0), mean)
    emp = torch.cov(x.T)
    assert ((emp - cov).abs() < 0.12 * cov.abs().max()).all(), (what, emp, cov)


CASES = [(s, d) for s in SAMPLER_ARGS for d in SDES if (s, d) != ("langevin", "subvp")]


# Annealed Langevin is NCSN's sampler for VE; sub-VP's smallest stds (~1e-4 at eps = 1e-3) take
# steps too small to finish moving the mean from alpha(t) mu to mu, so it is not run there.
@pytest.mark.parametrize("sampler,sde_name", CASES)
def test_samplers_reproduce_a_gaussian(sampler, sde_name):
    torch.manual_seed(0)
    cf = gaussian(SDES[sde_name]())
    x = sample(cf, N, sampler, dtype=torch.float64, **SAMPLER_ARGS[sampler])
    assert x.shape == (N, 2) and x.dtype == torch.float64
    _check_moments(x, *cf.moments(), (sampler, sde_name))


@pytest.mark.parametrize("sampler", list(SAMPLER_ARGS))
def test_samplers_reproduce_a_mixture(sampler):
    # moments and the share of each mode (a two-sample check of the bimodal shape: both modes
    # found with their weights, within 4 binomial standard errors)
    torch.manual_seed(1)
    cf = mixture(VPSDE())
    x = sample(cf, N, sampler, dtype=torch.float64, **SAMPLER_ARGS[sampler])
    _check_moments(x, *cf.moments(), sampler)
    share = float((x[:, 0] < -0.25).double().mean())
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / N), (sampler, share)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("data", ["gaussian", "mixture"])
def test_probability_flow_log_density_is_exact(sde_name, data):
    # with the exact score and the exact density at t = 1, the ODE gives the exact density at
    # t = 0 (for VE, the data smoothed by sigma_min) up to the solver tolerance
    torch.manual_seed(2)
    cf = (gaussian if data == "gaussian" else mixture)(SDES[sde_name]())
    x = cf.sample_data(16)
    lp = probability_flow_log_prob(
        cf, x, eps=0.0, rtol=1e-8, atol=1e-8, prior_log_prob=lambda z: cf.log_prob(z, 1.0)
    )
    assert (lp - cf.log_prob(x, 0.0)).abs().max() < 1e-3


def test_probability_flow_with_the_gaussian_prior_is_close():
    # VP at t = 1 is N(0, I) up to alpha(1)^2 ~ 7e-5: the default prior changes little
    torch.manual_seed(3)
    cf = mixture(VPSDE())
    x = cf.sample_data(16)
    lp = probability_flow_log_prob(cf, x, eps=0.0, rtol=1e-6, atol=1e-6)
    # the prior misses p_1 by alpha(1) |mu| |z| ~ 0.007 * 2 * 1
    assert (lp - cf.log_prob(x, 0.0)).abs().max() < 3e-2


class _OracleEps(torch.nn.Module):
    """A DDPM network that predicts the exact noise of Gaussian data at any fractional step."""

    def __init__(self, cf, num_timesteps: int) -> None:
        super().__init__()
        self.cf, self.T = cf, num_timesteps
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, steps):
        t = steps.to(torch.float64) / self.T
        sigma = self.cf.sde.marginal(t)[1][:, None]
        return -sigma * self.cf.score(x, t) + 0 * self.dummy


def test_a_ddpm_is_a_score_model_of_its_schedule_sde():
    # a DDPM whose network is exact serves every score sampler and the ODE likelihood
    torch.manual_seed(4)
    schedule = NoiseSchedule(linear_betas(20))
    cf = gaussian(ScheduleSDE(schedule))
    ddpm = DDPM(_OracleEps(cf, 20), (2,), schedule).double()
    for sampler in ("pc", "ode"):
        x = sample(ddpm, N, sampler, **SAMPLER_ARGS[sampler])
        _check_moments(x, *cf.moments(), sampler)
    x = cf.sample_data(8)
    lp = probability_flow_log_prob(ddpm, x, eps=1e-4, rtol=1e-8, atol=1e-8,
                                   prior_log_prob=lambda z: cf.log_prob(z, 1.0))  # fmt: skip
    assert (lp - cf.log_prob(x, 1e-4)).abs().max() < 1e-3


def test_a_1000_step_ddpm_density_takes_a_short_ode_solve():
    """The probability-flow density of a 1000-step DDPM (an exact network) is exact to
    1e-3 nats in a few hundred network calls: its schedule's beta(t) is continuous, so the
    solver need not restart at each of the 999 step boundaries (which cost thousands)."""
    torch.manual_seed(6)
    schedule = NoiseSchedule(linear_betas(1000))
    cf = gaussian(ScheduleSDE(schedule))
    net = _OracleEps(cf, 1000)
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    ddpm = DDPM(net, (2,), schedule).double()
    x = cf.sample_data(8)
    lp = probability_flow_log_prob(ddpm, x, eps=1e-4, rtol=1e-6, atol=1e-6,
                                   prior_log_prob=lambda z: cf.log_prob(z, 1.0))  # fmt: skip
    assert (lp - cf.log_prob(x, 1e-4)).abs().max() < 1e-3
    assert len(calls) < 300, len(calls)


def test_bits_per_dim_dequantizes_levels():
    # data N(0, I) on [-1, 1] with 4096 levels: bits/dim tends to the discretized density's
    class StandardNormal:
        sde, event_shape = VPSDE(), (2,)

        def score(self, x, t):
            return -x

    torch.manual_seed(5)
    levels = torch.randint(1000, 3096, (64, 2))
    bpd = probability_flow_bits_per_dim(StandardNormal(), levels, num_bins=4096, eps=0.0)
    width = 2 / 4096
    y = -1 + (levels + 0.5) * width
    exact = -(torch.distributions.Normal(0, 1).log_prob(y).sum(-1) + 2 * math.log(width))
    assert torch.allclose(bpd, exact / (2 * math.log(2)), atol=1e-3)


def test_bad_input():
    cf = gaussian(VPSDE())
    with pytest.raises(ValueError, match="unknown sampler 'heun'"):
        sample(cf, 4, "heun")
    with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
        sample(cf, 4, "euler_maruyama", steps=0)
    with pytest.raises(ValueError, match="rtol must be a positive number"):
        sample(cf, 4, "ode", rtol=0.0)
    with pytest.raises(ValueError, match="snr must be a positive number"):
        sample(cf, 4, "pc", snr=-1.0)
    with pytest.raises(TypeError, match="cannot provide a score"):
        sample(torch.nn.Linear(2, 2), 4, "pc")
    with pytest.raises(ValueError, match="eps .* must lie in"):
        probability_flow_log_prob(cf, torch.zeros(2, 2), eps=1.0)
    with pytest.raises(ValueError, match="integer levels"):
        probability_flow_bits_per_dim(cf, torch.full((2, 2), 0.5), num_bins=8)
