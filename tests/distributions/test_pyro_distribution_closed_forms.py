"""pyro_gen's distributions against closed forms: the reparameterized gradient of a
base-only flow, GaussianMixture's sampled mean and covariance (within five standard errors)
and its scales broadcast or one clear error; a module prior's ``.double()`` (and
``.to("cuda")``) moves its draws.

Ported (read, not copied) from pyro-ppl/pyro ``tests/distributions/test_distributions.py``
and run over every distribution pyro_gen hands to ``pyro.sample`` (the cases in
pyro_distribution_cases.py): GaussianMixture (shared and batched parameters), MixturePrior,
VampPrior, Flow / FlowDistribution (plain, conditional, image-shaped, LearnedNormal /
LearnedMixture / ConditionalNormal bases), the VAE's NormalPrior / FlowPrior, the DDPM's
DiscretizedGaussian and the discrete VAE's ExpRelaxedCategorical."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_gen import transforms as T
from pyro_gen.distributions import Flow, LearnedMixture, LearnedNormal
from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.priors import FlowPrior, NormalPrior
from tests.distributions.pyro_distribution_cases import D, K, _perturbed


def test_flow_rsample_gradient_is_the_closed_form() -> None:
    # no transforms: x = loc + exp(log_scale) * eps, so d sum(x) / d loc = n and
    # d sum(x) / d log_scale = sum over draws of (x - loc)
    base = _perturbed(LearnedNormal(D))
    x = Flow(D, [], base=base)().rsample((50,))
    x.sum().backward()
    torch.testing.assert_close(base.loc.grad, torch.full((D,), 50.0))
    torch.testing.assert_close(base.log_scale.grad, (x - base.loc).sum(0).detach())


def test_gaussian_mixture_sampled_mean_and_covariance_match_the_closed_form() -> None:
    torch.manual_seed(3)
    logits = torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64)
    locs = torch.tensor([[-2.0, 1.0], [0.5, -1.5], [2.0, 2.0]], dtype=torch.float64)
    scales = torch.tensor([[0.5, 1.0], [1.5, 0.3], [0.7, 0.7]], dtype=torch.float64)
    p = GaussianMixture(logits, locs, scales).expand((2,))  # also the expanded sampler
    pi = logits.softmax(-1)
    mean = (pi[:, None] * locs).sum(0)
    second = (
        pi[:, None, None] * (torch.diag_embed(scales**2) + locs[:, :, None] * locs[:, None])
    ).sum(0)
    cov = second - mean[:, None] * mean[None]
    n = 40000
    x = p.sample((n,)).reshape(-1, D)
    torch.testing.assert_close(p.mean[0], mean)
    torch.testing.assert_close(p.variance, cov.diagonal().expand(2, D))
    m = x.mean(0)
    assert ((m - mean).abs() < 5 * x.std(0) / math.sqrt(len(x))).all()
    c = x - m
    prods = c[:, :, None] * c[:, None]
    se = prods.std(0) / math.sqrt(len(x))
    assert ((prods.mean(0) - cov).abs() < 5 * se).all(), (prods.mean(0), cov)


def test_gaussian_mixture_scales_broadcast_or_a_clear_error() -> None:
    locs, x = torch.randn(K, D), torch.randn(5, D)
    # scales shared across dims, (K, 1): the density is that of the full (K, D) scales
    one = GaussianMixture(torch.zeros(K), locs, torch.full((K, 1), 0.7))
    full = GaussianMixture(torch.zeros(K), locs, torch.full((K, D), 0.7))
    torch.testing.assert_close(one.log_prob(x), full.log_prob(x))
    with pytest.raises(ValueError, match="logits"):
        GaussianMixture(torch.zeros(K + 1), locs, torch.ones(K, D))
    with pytest.raises(ValueError, match="scales"):
        GaussianMixture(torch.zeros(K), locs, torch.ones(K + 1, D))


@pytest.mark.parametrize("name", ["MixturePrior", "VampPrior", "Flow", "NormalPrior", "FlowPrior"])
def test_module_priors_follow_double(name) -> None:
    torch.manual_seed(0)
    w = torch.randn(4, D, dtype=torch.float64)
    modules = {
        "MixturePrior": lambda: MixturePrior(D, K),
        "VampPrior": lambda: VampPrior((4,), K, encode=lambda u: (u @ w, (u @ w).exp())),
        "Flow": lambda: Flow(D, [T.affine_coupling(D, hidden_dims=[8])], base=LearnedMixture(D)),
        "NormalPrior": lambda: NormalPrior(D),
        "FlowPrior": lambda: FlowPrior(D, 2, (8,)),
    }
    d = modules[name]().double()()
    x = d.sample((3,))
    assert x.dtype == torch.float64 and d.log_prob(x).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_module_priors_follow_to_cuda() -> None:
    for module in [MixturePrior(D, K), Flow(D, [T.affine_coupling(D)]), NormalPrior(D)]:
        d = module.to("cuda")()
        x = d.expand((4,)).sample((2,))
        assert x.device.type == "cuda" and d.log_prob(x).device.type == "cuda"
