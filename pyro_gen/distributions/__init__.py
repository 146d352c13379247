"""Densities and priors usable inside ``pyro.sample`` under plates."""

from __future__ import annotations

from pyro_gen.distributions.flow import (
    ConditionalNormal,
    Flow,
    FlowDistribution,
    LearnedMixture,
    LearnedNormal,
)
from pyro_gen.distributions.mixture import GaussianMixture, MixturePrior
from pyro_gen.distributions.prior_module import PriorModule
from pyro_gen.distributions.vamp import VampPrior

__all__ = [
    "ConditionalNormal",
    "Flow",
    "FlowDistribution",
    "GaussianMixture",
    "LearnedMixture",
    "LearnedNormal",
    "MixturePrior",
    "PriorModule",
    "VampPrior",
]
