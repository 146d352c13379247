"""Samplers run on a user's own networks, checked against closed forms.

A DDPM denoiser linear in its input, :math:`\\hat\\epsilon = k_t x_t` (one factor per int64
step), makes every sampler a linear map of its Gaussian draws: the ancestral chain's variance
follows :math:`V_{t-1} = M_t^2 V_t + \\sigma_t^2` and DDIM at ``eta=0`` multiplies its start by
a product of known factors, so the draws (and Pyro's ``Predictive`` on the model, with and
without vectorized samples) have known spreads, for 1-D data (N, 1) and for images
(N, 1, 8, 8). The score samplers and the probability-flow likelihood run on scalar data (event
shape ``()``) with a user's exact network for Gaussian data :math:`\\mathcal N(0, s^2)`.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

from pyro_gen.diffusion import (
    DDPM,
    VPSDE,
    NoiseSchedule,
    ScoreModel,
    ancestral_sample,
    ddim_sample,
    ddim_timesteps,
    euler_maruyama,
)
from tests.diffusion.test_user_programs_ddpm import BETAS, K, LinearEps

D = torch.float64
T = len(BETAS)
AB = torch.cumprod(1 - BETAS, 0)
AB_PREV = torch.cat([torch.ones(1, dtype=D), AB[:-1]])
POST_VAR = BETAS * (1 - AB_PREV) / (1 - AB)
SMALL_VAR = torch.cat([POST_VAR[1:2], POST_VAR[1:]])  # step 1 clipped, as the DDPM's
# the reverse mean is M_t x_t: c1_t * x0_hat + c2_t x_t with x0_hat = (1 - s_t k_t) / a_t x_t
M = BETAS * AB_PREV.sqrt() / (1 - AB) * (1 - (1 - AB).sqrt() * K) / AB.sqrt() + (1 - AB_PREV) * (
    1 - BETAS
).sqrt() / (1 - AB)


def chain_variances() -> tuple[float, float]:
    """Variance of the ancestral sample (decoder mean, no noise) and of the model's ``x_0``
    site (the decoder's draw)."""
    v = torch.tensor(1.0, dtype=D)
    for t in range(T, 1, -1):
        v = M[t - 1] ** 2 * v + SMALL_VAR[t - 1]
    mean_var = M[0] ** 2 * v
    return float(mean_var), float(mean_var + SMALL_VAR[0])


def ddim_factor(steps: int) -> float:
    """DDIM at eta=0 maps x_T to x_T times this factor."""
    taus = ddim_timesteps(T, steps).tolist()
    g = 1.0
    for i in range(len(taus) - 1, -1, -1):
        t = taus[i]
        ab, ab_prev = AB[t - 1], (AB[taus[i - 1] - 1] if i > 0 else torch.tensor(1.0, dtype=D))
        x0_hat = (1 - (1 - ab).sqrt() * K[t - 1]) / ab.sqrt()
        g *= float(ab_prev.sqrt() * x0_hat + (1 - ab_prev).sqrt() * K[t - 1])
    return g


def _ddpm(event_shape=(1,), **kwargs) -> DDPM:  # noqa: ANN001
    return DDPM(LinearEps(K), event_shape, NoiseSchedule(BETAS), **kwargs).double()


def _assert_variance(x: torch.Tensor, expected: float) -> None:
    n = x.numel()
    assert abs(float(x.mean())) < 5 * math.sqrt(expected / n)
    # the sample variance's relative standard error is sqrt(2 / n)
    assert abs(float(x.var()) / expected - 1) < 5 * math.sqrt(2 / n), (float(x.var()), expected)


def test_ancestral_draws_and_predictive_have_the_chains_closed_form_variance():
    torch.manual_seed(0)
    mean_var, site_var = chain_variances()
    m = _ddpm()
    x = m.sample(20000)
    assert x.shape == (20000, 1) and x.dtype == D
    _assert_variance(x, mean_var)
    # Predictive on the model (no data: the generative chain), one loop and vectorized; the
    # x_0 site is the decoder's draw, wider than the sampler's noise-free mean by sigma_1^2
    for parallel in (False, True):
        draws = Predictive(m.model, num_samples=20 if not parallel else 500, parallel=parallel)(
            None, 1000 if not parallel else 40
        )
        assert draws["x_0"].shape[-2:] == (1000 if not parallel else 40, 1)
        _assert_variance(draws["x_0"], site_var)
        _assert_variance(draws[f"x_{T}"], 1.0)
        # each step, given the one before, is N(M_t x_t, sigma_t^2): its residual's variance
        for t in range(T, 0, -1):
            residual = draws[f"x_{t - 1}"] - M[t - 1] * draws[f"x_{t}"]
            _assert_variance(residual, float(SMALL_VAR[t - 1]))


@pytest.mark.parametrize("steps", [T, 2, 1])
def test_ddim_at_eta_0_is_the_closed_form_map_of_its_start(steps):
    torch.manual_seed(1)
    z = torch.randn(6, 1, dtype=D)
    x = ddim_sample(_ddpm(), 6, steps=steps, x_T=z)
    torch.testing.assert_close(x, z * ddim_factor(steps), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("event_shape", [(1, 8, 8), (8, 8)])
def test_image_shaped_data_go_through_ddim_pixel_by_pixel(event_shape):
    # images live in [-1, 1] inside the model: x = (model-space value + 1) / 2, clamped
    m = _ddpm(event_shape, clip_denoised=False)
    torch.manual_seed(2)
    z = 0.1 * torch.randn(5, 1, 8, 8, dtype=D)
    x = ddim_sample(m, 5, steps=2, x_T=z)
    expected = ((z * ddim_factor(2) + 1) / 2).clamp(0, 1).reshape(5, *event_shape)
    assert x.shape == (5, *event_shape)
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-12)
    assert m.sample(3).shape == (3, *event_shape)
    draws = ancestral_sample(m, 4)
    assert draws.shape == (4, *event_shape) and bool(((draws >= 0) & (draws <= 1)).all())


S = 0.7  # data N(0, S^2)


class ScalarOracle(nn.Module):
    """A user's eps network for scalar data N(0, S^2) under the VP SDE (x of shape (N,))."""

    def __init__(self) -> None:
        super().__init__()
        self.sde = VPSDE()
        self.unused = nn.Parameter(torch.zeros((), dtype=D))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x.shape == t.shape  # one time per scalar example
        alpha, sigma = self.sde.marginal(t)
        return sigma * x / (alpha**2 * S**2 + sigma**2) + self.unused


@pytest.mark.parametrize(
    "sampler, kwargs",
    [
        ("pc", {"steps": 100}),  # its corrector took one norm per sample with flatten(1)
        ("euler_maruyama", {"steps": 100}),
        ("ode", {}),
        ("langevin", {"steps": 10, "steps_per_level": 50}),
    ],
)
def test_every_score_sampler_draws_scalar_data_at_the_gaussians_spread(sampler, kwargs):
    torch.manual_seed(3)
    m = ScoreModel(ScalarOracle(), VPSDE(), ())
    x = m.sample(4000, sampler, **kwargs)
    assert x.shape == (4000,) and x.dtype == D
    # at the data end t = eps the marginal is N(0, alpha^2 S^2 + sigma^2), about S^2
    assert abs(float(x.std()) / S - 1) < 0.06, float(x.std())


def test_the_flow_likelihood_of_scalar_gaussian_data_is_the_normal_log_density():
    m = ScoreModel(ScalarOracle(), VPSDE(), ())
    x = torch.tensor([-1.5, -0.2, 0.0, 0.9, 2.1], dtype=D)
    eps = 1e-3
    alpha, sigma = VPSDE().marginal(torch.tensor(eps, dtype=D))
    exact = torch.distributions.Normal(0.0, (alpha**2 * S**2 + sigma**2).sqrt()).log_prob(x)
    lp = m.log_prob(x, eps=eps, rtol=1e-7, atol=1e-7)
    assert lp.shape == (5,)
    # the prior N(0, 1) stands for p_1, which is N(0, alpha(1)^2 S^2 + sigma(1)^2): ~1e-5 off
    torch.testing.assert_close(lp, exact, atol=1e-4, rtol=0)


def test_x_init_of_another_shape_than_shape_is_refused():
    # a score function of x alone ran on x_init's shape and returned it, shape notwithstanding
    with pytest.raises(ValueError, match="x_init has shape \\(3, 2\\) but shape is \\(3, 1\\)"):
        euler_maruyama(lambda x, t: -x, VPSDE(), (3, 1), steps=2, x_init=torch.randn(3, 2))
    # one step from x_init with denoise returns its mean, x - (f x - g^2 s) h with s = -x
    x0 = torch.randn(3, 2)
    x = euler_maruyama(lambda x, t: -x, VPSDE(), (3, 2), steps=1, eps=0.5, x_init=x0)
    beta = VPSDE().beta(torch.tensor(1.0))
    torch.testing.assert_close(x, x0 - (-0.5 * beta * x0 + beta * x0) * 0.5)


def test_predictive_on_a_scalar_score_model_keeps_its_outer_dims():
    pyro.set_rng_seed(4)
    m = ScoreModel(ScalarOracle(), VPSDE(), ())
    draws = Predictive(m.model, num_samples=3, parallel=True)(None, 500)
    assert draws["x"].shape == (3, 500)
    assert abs(float(draws["x"].std()) / S - 1) < 0.08


@pytest.mark.parametrize("event_shape", [(1, 8, 8), (8, 8), (1,)])
def test_predictive_on_the_model_gives_the_draws_in_data_space_too(event_shape):
    # "x_0" holds the model's space (images: levels in [-1, 1], (N, 1, H, W) for (H, W));
    # Predictive gave users only that, and from_model_space kept one batch dim alone
    m = _ddpm(event_shape)
    pyro.set_rng_seed(5)
    draws = Predictive(m.model, num_samples=3, parallel=True)(None, 4)
    x, x_0 = draws["x"], draws["x_0"]
    assert x.shape == (3, 4, *event_shape)
    if len(event_shape) == 1:
        assert torch.equal(x, x_0)
    else:
        assert bool(((x >= 0) & (x <= 1)).all()) and float(x_0.min()) < 0
        torch.testing.assert_close(x, ((x_0 + 1) / 2).clamp(0, 1).reshape(x.shape))


def test_a_start_x_T_of_another_shape_is_refused():
    # 5 rows for num_samples=3 drew 5 samples silently; a wrong event met torch's reshape error
    m = _ddpm()
    for sampler in (ancestral_sample, ddim_sample):
        for x_T in (torch.randn(5, 1, dtype=D), torch.randn(3, 2, dtype=D)):
            with pytest.raises(ValueError, match="x_T has shape .* must be .*= \\(3, 1\\)"):
                sampler(m, 3, x_T=x_T)
    z = torch.randn(3, 1, dtype=D)
    torch.testing.assert_close(ddim_sample(m, 3, x_T=z), z * ddim_factor(T))


def test_sample_in_chunks_is_the_one_batch_draw_and_bad_sizes_are_named():
    m = _ddpm()
    torch.manual_seed(6)
    whole = ddim_sample(m, 5, x_T=torch.randn(5, 1, dtype=D))
    torch.manual_seed(6)
    z = torch.randn(5, 1, dtype=D)
    torch.testing.assert_close(whole, z * ddim_factor(T))
    assert m.sample(5, batch_size=2).shape == (5, 1)
    for bad in (-2, 0, 2.5):
        # -2 met torch's "negative dimension", 2.5 range()'s TypeError
        with pytest.raises(ValueError, match=f"batch_size must be a whole number >= 1, got {bad}"):
            m.sample(5, batch_size=bad)
    with pytest.raises(ValueError, match="'ancestral' or 'ddim', got 'pc'.*diffusion.sample"):
        m.sample(2, "pc")


def test_integer_pixels_for_an_image_ddpms_bits_per_dim_are_named():
    from pyro_gen.diffusion import probability_flow_bits_per_dim

    class Scale(nn.Module):  # reads any (float) step: the ODE asks at fractional ones
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5, dtype=D))

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.w * x

    m = DDPM(Scale(), (8, 8), NoiseSchedule(BETAS)).double()
    pixels = torch.randint(0, 256, (2, 8, 8))
    with pytest.raises(TypeError, match="floats in \\[0, 1\\].*x.float\\(\\) / 255"):
        probability_flow_bits_per_dim(m, pixels)
    torch.manual_seed(7)
    bpd = probability_flow_bits_per_dim(m, pixels.double() / 255, rtol=1e-3, atol=1e-3)
    assert bpd.shape == (2,) and bool(torch.isfinite(bpd).all()) and bool((bpd > 0).all())


def test_a_plain_function_as_the_network_samples_and_one_ddim_step_starts_at_T():
    # an oracle written as a function (no parameters): the draws take the schedule's dtype
    m = DDPM(lambda x, t: torch.zeros_like(x), (1,), NoiseSchedule(BETAS)).double()
    torch.manual_seed(8)
    z = torch.randn(4, 1, dtype=D)
    # eps_hat = 0: x0_hat = x_t / a_t, and one DDIM step at eta=0 maps x_T to x_T / a_T
    # (it ran from step 1, linspace(1, T, 1) = [1], and returned z / a_1, about z)
    torch.testing.assert_close(ddim_sample(m, 4, steps=1, x_T=z), z / AB[-1].sqrt())
    torch.testing.assert_close(ddim_sample(m, 4, steps=2, x_T=z), z / AB[-1].sqrt())
    assert m.sample(3).dtype == D
