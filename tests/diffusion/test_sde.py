"""Forward SDEs against their closed forms: the marginals solve the moment ODEs of the drift and
diffusion, the DDPM's schedule is the VP SDE's discretisation, and predictions convert."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyro_gen.diffusion import (
    PARAMETERIZATIONS,
    VESDE,
    VPSDE,
    ScheduleSDE,
    SubVPSDE,
    linear_betas,
    make_schedule,
    make_sde,
)

SDES = {
    "ve": lambda: VESDE(0.05, 10.0),
    "vp": lambda: VPSDE(0.1, 20.0),
    "subvp": lambda: SubVPSDE(0.1, 20.0),
    "schedule": lambda: ScheduleSDE(make_schedule("cosine", 40)),
}


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_solves_moment_equations(name):
    # d log(alpha)/dt = f and d sigma^2/dt = 2 f sigma^2 + g^2, with autograd derivatives in t
    sde = SDES[name]()
    # interior points, and two of the schedule's knots i/40 (0.2, 0.5)
    t = torch.tensor([0.013, 0.2, 0.21, 0.5, 0.77, 0.96], dtype=torch.float64).requires_grad_()
    alpha, sigma = sde.marginal(t)
    (dlog_alpha,) = torch.autograd.grad(alpha.log().sum() + 0 * t.sum(), t, retain_graph=True)
    (dvar,) = torch.autograd.grad((sigma**2).sum(), t)
    f, g = sde.drift_coef(t.detach()), sde.diffusion(t.detach())
    assert torch.allclose(dlog_alpha, f, rtol=1e-6, atol=1e-8)
    assert torch.allclose(dvar, 2 * f * sigma.detach() ** 2 + g**2, rtol=1e-6, atol=1e-8)


def test_simulated_forward_sde_has_the_marginal():
    # Euler-Maruyama on the forward SDE from fixed x0 reaches mean alpha x0 and std sigma
    torch.manual_seed(0)
    sde = SubVPSDE()
    x = torch.full((20000, 1), 2.0, dtype=torch.float64)
    steps, t_end = 400, 0.4
    h = t_end / steps
    for i in range(steps):
        t = torch.tensor(i * h, dtype=torch.float64)
        x = x + sde.drift(x, t) * h + sde.diffusion(t) * h**0.5 * torch.randn_like(x)
    alpha, sigma = sde.marginal(torch.tensor(t_end, dtype=torch.float64))
    assert abs(float(x.mean()) - 2 * float(alpha)) < 4 * float(sigma) / 20000**0.5 + 2e-3
    assert abs(float(x.std()) / float(sigma) - 1) < 0.03


def test_schedule_sde_passes_through_the_ddpm_steps():
    s = make_schedule("linear", 50)
    sde = ScheduleSDE(s)
    t = torch.arange(1, 51, dtype=torch.float64) / 50
    alpha, sigma = sde.marginal(t)
    assert torch.allclose(alpha**2, s.alphas_cumprod.double(), rtol=1e-6)
    assert torch.allclose(sigma**2, 1 - s.alphas_cumprod.double(), rtol=1e-5)
    # beta(t) is continuous (no jump for an ODE solver to restart at), never negative, and
    # its mean over step i is the discrete step's, -T log(1 - beta_i) (Simpson's rule is
    # exact: beta is quadratic within a step)
    knots = t[:-1]
    assert torch.allclose(sde.beta(knots - 1e-9), sde.beta(knots + 1e-9), rtol=1e-5)
    fine = torch.linspace(1e-4, 1, 5001, dtype=torch.float64)
    assert bool((sde.beta(fine) >= 0).all())
    start, h = t - 1 / 50, 1 / 50
    ends = [sde.beta(start + 1e-12), sde.beta(start + h / 2), sde.beta(t - 1e-12)]
    mean = (ends[0] + 4 * ends[1] + ends[2]) / 6
    assert torch.allclose(mean, -50 * torch.log1p(-s.betas.double()), rtol=1e-8)


def test_ddpm_linear_schedule_discretises_the_vp_sde():
    # Ho et al.'s betas 1e-4..0.02 at T = 1000 are the VP SDE with beta in [0.1, 20]
    sde_d, sde_c = ScheduleSDE(make_schedule("linear", 1000)), VPSDE(0.1, 20.0)
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    assert torch.allclose(sde_d.marginal(t)[0], sde_c.marginal(t)[0], atol=2e-3)


@pytest.mark.parametrize("name", ["ve", "subvp"])
def test_conversions_with_any_alpha_and_sigma(name):
    # VE and sub-VP have alpha^2 + sigma^2 != 1: every pair still converts exactly
    torch.manual_seed(1)
    sde = SDES[name]()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    alpha, sigma = (c[:, None] for c in sde.marginal(t))
    assert not torch.allclose(alpha**2 + sigma**2, torch.ones(3, 1, dtype=torch.float64))
    x_t = sde.perturb(x0, t, eps)
    truth = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0, "score": -eps / sigma}
    for source, target in itertools.product(PARAMETERIZATIONS, repeat=2):
        out = sde.convert(truth[source], source, target, x_t, t)
        assert torch.allclose(out, truth[target], atol=1e-9), (source, target)


def test_linear_betas_scaling_matches_vp_defaults():
    assert torch.allclose(linear_betas(1000)[[0, -1]] * 1000, torch.tensor([0.1, 20.0]).double())


def test_bad_input():
    with pytest.raises(ValueError, match="sigma_max .* must exceed sigma_min"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="beta_min must be a positive"):
        VPSDE(-1.0, 20.0)
    with pytest.raises(ValueError, match="unknown SDE 'vv'"):
        make_sde("vv")
    with pytest.raises(ValueError, match=r"SDE times must lie in \[0, 1\]"):
        VPSDE().perturb(torch.zeros(2, 2), torch.tensor([0.5, 1.5]), torch.zeros(2, 2))
