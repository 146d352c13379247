"""Every distribution pyro_gen hands to ``pyro.sample``, built for Pyro's distribution contract
(test_pyro_distribution_*.py): the ``CASES`` table and its ``case`` fixture (modules moved
off their zero-initialised identity, so a wrong density cannot hide as N(0, I)), and
Pyro's ``check_sample_shapes`` (an expanded density is the small one broadcast)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import pytest
import torch

from pyro_gen import transforms as T
from pyro_gen.diffusion.likelihood import DiscretizedGaussian
from pyro_gen.distributions import ConditionalNormal, Flow, LearnedMixture, LearnedNormal
from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from pyro_gen.distributions.vamp import VampPrior
from pyro_gen.vae.discrete import ExpRelaxedCategorical
from pyro_gen.vae.priors import FlowPrior, NormalPrior

K, D = 3, 2


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    # away from the zero-initialised identity, so a wrong density cannot hide as N(0, I)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _gm_shared() -> GaussianMixture:
    return GaussianMixture(torch.randn(K), torch.randn(K, D), torch.rand(K, D) + 0.5)


def _gm_batched() -> GaussianMixture:
    # batch (1, 3): a size-1 dim for Pyro's expand-an-existing-dim checks, and a size-3 one
    # that must not be expanded to 1
    return GaussianMixture(torch.randn(1, 3, K), torch.randn(3, K, D), torch.rand(K, D) + 0.5)


def _vamp() -> GaussianMixture:
    w, v = torch.randn(4, D), torch.randn(4, D)
    prior = VampPrior((4,), num_components=K, encode=lambda u: (u @ w, (u @ v).exp()))
    return prior()


def _flow_of(base: torch.nn.Module | None = None, conditional: bool = False) -> Callable:
    if conditional:
        parts = [T.conditional_affine_coupling(D, 3, hidden_dims=[8])]
    else:
        parts = [T.affine_coupling(D, hidden_dims=[8]), T.masked_autoregressive(D, [8])]
    flow = _perturbed(Flow(D, parts, base=base))
    return lambda: flow(torch.randn(4, 3) if flow.conditional else None)


CASES: dict[str, Callable[[], dist.TorchDistribution]] = {
    "GaussianMixture-shared": _gm_shared,
    "GaussianMixture-batched": _gm_batched,
    "MixturePrior": lambda: _perturbed(MixturePrior(D, K))(),
    "VampPrior": _vamp,
    "Flow": lambda: _flow_of()(),
    "Flow-conditional": lambda: _flow_of(conditional=True)(),
    "Flow-LearnedNormal": lambda: _flow_of(LearnedNormal(D))(),
    "Flow-LearnedMixture": lambda: _flow_of(LearnedMixture(D, K))(),
    "Flow-ConditionalNormal": lambda: _flow_of(ConditionalNormal(D, 3, (8,)))(),
    "Flow-image": lambda: _perturbed(
        Flow(
            (4, 2, 2),
            [T.Squeeze((1, 4, 4)), T.affine_coupling((4, 2, 2), mask="channel", hidden_channels=4)],
        )
    )(),
    "NormalPrior": lambda: NormalPrior(D)(),
    "FlowPrior": lambda: _perturbed(FlowPrior(D, 2, (8,)))(),
    "DiscretizedGaussian": lambda: DiscretizedGaussian(torch.randn(3, 1), torch.rand(3, 1) + 0.2),
    "ExpRelaxedCategorical": lambda: ExpRelaxedCategorical(
        torch.tensor(0.7), logits=torch.randn(4, K)
    ),
}


# draws on a grid (a pmf), on a simplex's log-space surface, or in R^16: no density on a
# 2-D grid to test
_NO_DENSITY = {"DiscretizedGaussian", "ExpRelaxedCategorical", "Flow-image"}


@pytest.fixture(params=sorted(CASES))
def case(request) -> dist.TorchDistribution:
    torch.manual_seed(0)
    return CASES[request.param]()


def _bad_value(d: dist.TorchDistribution, shape: torch.Size) -> torch.Tensor:
    if isinstance(d, DiscretizedGaussian):
        return torch.full(shape, 2.0)  # outside [-1, 1]
    return torch.full(shape, math.nan)  # outside every real support


def _check_sample_shapes(small: dist.TorchDistribution, large: dist.TorchDistribution) -> None:
    """Pyro's check: the large density is the small one broadcast, on draws of either."""
    with torch.no_grad():
        x = small.sample()
        expected = small.log_prob(x).expand(large.batch_shape)
        torch.testing.assert_close(large.log_prob(x), expected)
        x = large.sample()
        torch.testing.assert_close(large.log_prob(x), small.log_prob(x))
