"""Schedules: buffers, validation, forward marginals against the simulated chain, and the
forward posterior against Bayes' rule."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen.diffusion import NoiseSchedule, linear_betas, make_schedule


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_schedule_buffers(name):
    s = make_schedule(name, 50)
    names = {n for n, _ in s.named_buffers()}
    assert {"betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1"} <= names
    assert bool((s.betas > 0).all() and (s.betas < 1).all())
    ab = s.alphas_cumprod.double()
    assert bool((ab[1:] < ab[:-1]).all())
    assert torch.allclose(ab, torch.cumprod(1 - s.betas.double(), 0), rtol=1e-5)
    assert s.double().alphas_cumprod.dtype == torch.float64  # buffers follow .to()


def test_schedule_validation():
    with pytest.raises(ValueError, match="inside"):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="inside"):
        NoiseSchedule(torch.tensor([0.0, 0.2]))
    with pytest.raises(ValueError, match=">= 1"):
        make_schedule("linear", 0)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic", 10)


def test_forward_marginals_match_step_by_step_chain():
    torch.manual_seed(0)
    s = NoiseSchedule(linear_betas(6, 0.05, 0.4))
    x0 = torch.tensor([1.5, -0.7])
    x = x0.expand(200_000, 2).clone()
    for t in range(1, 7):
        beta = s.betas[t - 1]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn_like(x)
        mean, std = s.q_mean_std(x0[None], torch.tensor([t]), 1)
        assert torch.allclose(x.mean(0), mean[0], atol=0.01)
        assert torch.allclose(x.std(0), std[0], atol=0.01)


def test_posterior_matches_bayes_rule():
    s = NoiseSchedule(linear_betas(5, 0.1, 0.5)).double()
    x0, xt = torch.tensor(0.8, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64)
    grid = torch.linspace(-8, 8, 40001, dtype=torch.float64)
    dx = grid[1] - grid[0]
    for t in range(2, 6):
        beta, ab_prev = s.betas[t - 1], s.alphas_cumprod[t - 2]

        def log_normal(x, m, v):
            return -0.5 * (x - m) ** 2 / v - 0.5 * torch.log(2 * math.pi * v)

        # q(x_{t-1} | x_t, x_0) is proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0)
        log_joint = log_normal(xt, (1 - beta).sqrt() * grid, beta) + log_normal(
            grid, ab_prev.sqrt() * x0, 1 - ab_prev
        )
        post = (log_joint - log_joint.max()).exp()
        post = post / (post.sum() * dx)
        mean = (grid * post).sum() * dx
        var = ((grid - mean) ** 2 * post).sum() * dx
        m, log_var = s.q_posterior(x0[None], xt[None], torch.tensor([t]), 0)
        assert torch.allclose(mean, m[0], atol=1e-6)
        assert torch.allclose(var, log_var[0].exp(), rtol=1e-5)
        # the density itself, not only its moments
        ref = log_normal(grid, m[0], log_var[0].exp())
        assert torch.allclose(post[::1000].log(), ref[::1000], atol=1e-4)
