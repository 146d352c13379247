"""Densities and priors usable inside ``pyro.sample`` under plates."""

from __future__ import annotations

from pyro_gen.distributions.flow import (
    ConditionalNormal,
    Flow,
    FlowDistribution,
    LearnedMixture,
    LearnedNormal,
)

__all__ = ["ConditionalNormal", "Flow", "FlowDistribution", "LearnedMixture", "LearnedNormal"]
