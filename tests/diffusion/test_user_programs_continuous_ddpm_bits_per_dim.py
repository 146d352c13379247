"""The probability-flow bits/dim and decoder bound with a DDPM on continuous data.

Those functions bound the probability of discrete data; a DDPM on continuous data takes its
data there as integer levels placed on ``[low, high]``, as any score model. Real-valued data
were refused with "discrete data for a score model must be integer levels 0..K-1": the model
named wrongly and no word of the density such data do have. Checked: the refusal names the
DDPM's continuous data and ``probability_flow_log_prob`` (which then runs on the same data);
on integer levels the DDPM's decoder bound has its closed form (quadrature, the exact score of
Gaussian data): the ODE's exact density at :math:`t_1 = 1/T`, VDM's decoder over the levels,
the forward entropy; and it bounds :math:`-\\log P(\\text{level})`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyro_gen.diffusion import DDPM, VPSDE, ScoreModel
from pyro_gen.diffusion.ode_likelihood import (
    probability_flow_bits_per_dim,
    probability_flow_decoder_bound,
    probability_flow_log_prob,
)
from pyro_gen.diffusion.schedules import make_schedule
from pyro_gen.diffusion.sde import ScheduleSDE

D = torch.float64
T, K = 10, 4
SCHEDULE = make_schedule("linear", T)


class ExactEps(nn.Module):
    """A user's denoiser, exact for data N(0, 1): then every x_t is N(0, 1) (alpha^2 + sigma^2
    = 1) and the noise in x_t is sigma(t) x_t, at fractional steps too."""

    def __init__(self) -> None:
        super().__init__()
        self.sde = ScheduleSDE(SCHEDULE)
        self.offset = nn.Parameter(torch.zeros((), dtype=D))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sde.marginal(t.to(x.dtype) / T)[1]
        return sigma[:, None] * x + self.offset


class TimeLinear(nn.Module):
    """A user's score network of 2-D points: one linear layer on (x, t)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x, t.to(x.dtype)[:, None]], -1))


def _ddpm() -> DDPM:
    return DDPM(ExactEps(), (1,), SCHEDULE, data="continuous")


def test_real_valued_data_of_a_continuous_ddpm_are_told_the_density_they_have():
    d = _ddpm()
    x = torch.randn(3, 1, dtype=D)
    calls = [
        lambda: probability_flow_bits_per_dim(d, x),
        lambda: probability_flow_bits_per_dim(d, x, endpoint="decoder"),
        lambda: probability_flow_decoder_bound(d, x),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"off the integer levels 0\.\.255") as err:
            call()
        assert "this DDPM models continuous data (data='continuous')" in str(err.value)
        assert "probability_flow_log_prob(model, x)" in str(err.value)
        assert "score model" not in str(err.value)
    # the function it names gives those data their density: N(0, 1) under the exact score
    lp = probability_flow_log_prob(d, x, rtol=1e-7, atol=1e-7)
    exact = torch.distributions.Normal(0.0, 1.0).log_prob(x)[:, 0]
    torch.testing.assert_close(lp, exact, rtol=0, atol=1e-4)
    m = ScoreModel(nn.Linear(1, 1).double(), VPSDE(), (1,))
    with pytest.raises(ValueError, match="for continuous data under this ScoreModel"):
        probability_flow_bits_per_dim(m, x, num_bins=8)


def test_a_continuous_ddpms_decoder_bound_on_integer_levels_has_its_closed_form():
    n = 400
    level = torch.arange(K).repeat_interleave(n)[:, None]
    g = torch.Generator().manual_seed(0)
    out = probability_flow_decoder_bound(_ddpm(), level, num_bins=K, generator=g,
                                         rtol=1e-6, atol=1e-6)  # fmt: skip
    total = out["total"].reshape(K, n)
    # closed form: E_q[-log N(x1; 0, 1) - log softmax_i(x1)] - H(q), q = N(alpha g_i, sigma^2)
    a, s = (float(v) for v in ScheduleSDE(SCHEDULE).marginal(torch.tensor(1 / T, dtype=D)))
    grid = torch.linspace(-1, 1, K, dtype=D)  # the levels on [low, high]
    x1 = torch.linspace(-6, 6, 200001, dtype=D)
    dx = x1[1] - x1[0]
    log_dec = (-0.5 * ((x1[:, None] - a * grid) / s) ** 2).log_softmax(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(x1)[:, None]
    q = torch.distributions.Normal(a * grid, s).log_prob(x1[:, None]).exp()
    entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    expected = (q * -(log_prior + log_dec)).sum(0) * dx - entropy
    se = total.std(1) / math.sqrt(n)
    assert ((total.mean(1) - expected).abs() < 4 * se + 1e-3).all(), (total.mean(1), expected)
    # a bound on the code length of the levels: P(i) = int N(x1) p(i | x1)
    nll = -((log_prior + log_dec).exp().sum(0) * dx).log()
    assert (expected >= nll).all()
    assert torch.allclose(out["entropy"], torch.full_like(out["entropy"], entropy))


@pytest.mark.parametrize("endpoint", ["dequantize", "decoder"])
def test_integer_levels_take_a_float64_networks_dtype(endpoint):
    # integer data carry no float dtype: they were made torch's default float32, which a
    # user's float64 network refused ("float64 parameters but was given float32 data")
    m = ScoreModel(TimeLinear().double(), VPSDE(), (2,))
    level = torch.tensor([[0, 7], [3, 4]])
    kwargs = dict(num_bins=8, endpoint=endpoint, rtol=1e-4, atol=1e-4)
    out = probability_flow_bits_per_dim(
        m, level, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert out.dtype == D
    as_floats = probability_flow_bits_per_dim(
        m, level.to(D), generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert torch.equal(out, as_floats)
