"""GaussianMixture and MixturePrior: log density against a direct computation, shapes
under plates, sampling moments, gradients, and the prior's starting scales."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior


def direct_log_prob(logits, locs, scales, z):
    """log sum_k pi_k prod_d N(z_d; mu_kd, s_kd), one component at a time."""
    terms = []
    log_pi = logits - torch.logsumexp(logits, -1, keepdim=True)
    for k in range(locs.shape[-2]):
        normal = torch.distributions.Normal(locs[..., k, :], scales[..., k, :])
        terms.append(log_pi[..., k] + normal.log_prob(z).sum(-1))
    return torch.logsumexp(torch.stack(terms, -1), -1)


@pytest.mark.parametrize("batched", [False, True])
def test_log_prob_matches_direct_computation(batched):
    torch.manual_seed(0)
    k, d = 5, 3
    batch = (4,) if batched else ()
    logits = torch.randn(*batch, k, dtype=torch.float64)
    locs = 2 * torch.randn(*batch, k, d, dtype=torch.float64)
    scales = torch.rand(*batch, k, d, dtype=torch.float64) + 0.2
    z = 3 * torch.randn(7, *batch, d, dtype=torch.float64)
    p = GaussianMixture(logits, locs, scales)
    expected = direct_log_prob(logits, locs, scales, z)
    assert torch.allclose(p.log_prob(z), expected, atol=1e-10)
    # the expanded (plate) version, which takes the matmul path when unbatched
    if not batched:
        pe = p.expand((7,))
        assert pe.batch_shape == (7,)
        assert torch.allclose(pe.log_prob(z), expected, atol=1e-10)


def test_single_component_is_normal():
    loc, scale = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 2.0]])
    p = GaussianMixture(torch.zeros(1), loc, scale)
    z = torch.randn(6, 2)
    expected = torch.distributions.Normal(loc[0], scale[0]).log_prob(z).sum(-1)
    assert torch.allclose(p.log_prob(z), expected, atol=1e-5)


def test_under_plate_and_sampling_moments():
    torch.manual_seed(1)
    logits = torch.tensor([0.0, math.log(3.0)])  # weights 1/4, 3/4
    locs = torch.tensor([[-4.0, 0.0], [4.0, 1.0]])
    scales = torch.ones(2, 2) * 0.5
    p = GaussianMixture(logits, locs, scales)
    with pyro.plate("data", 11):
        z = pyro.sample("z", p)
    assert z.shape == (11, 2)
    s = p.sample((20000,))
    assert s.shape == (20000, 2)
    assert torch.allclose(s.mean(0), p.mean, atol=0.1)
    assert torch.allclose(p.mean, torch.tensor([2.0, 0.75]))
    assert abs((s[:, 0] > 0).float().mean().item() - 0.75) < 0.02


def test_mixture_prior_gradients_and_density_normalizes():
    prior = MixturePrior(2, num_components=3)
    z = torch.randn(8, 2)
    prior().log_prob(z).sum().backward()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # 2-D grid integral of the density is one
    g = torch.linspace(-10, 10, 401)
    zz = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = prior().log_prob(zz).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(mass.item() - 1) < 1e-3


def test_bad_shapes():
    with pytest.raises(ValueError, match="locs"):
        GaussianMixture(torch.zeros(2), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError):
        MixturePrior(0)


# MixturePrior's scales start at one, as documented, whatever floor ``min_scale`` puts under
# them: they had started at 1 + min_scale (1.3 with min_scale=0.3).
@pytest.mark.parametrize("min_scale", [0.0, 1e-3, 0.3, 0.9])
def test_the_component_scales_start_at_one(min_scale):
    prior = MixturePrior(2, num_components=3, min_scale=min_scale)
    scales = prior().scales
    assert torch.allclose(scales, torch.ones_like(scales), atol=1e-6)


def test_a_floor_above_one_starts_the_scales_just_above_it():
    scales = MixturePrior(2, num_components=3, min_scale=2.0)().scales
    assert bool((scales > 2.0).all()) and bool((scales < 2.01).all())
