"""Densities and priors usable inside ``pyro.sample`` under plates."""

from __future__ import annotations

from pyro_gen.distributions.flow import Flow, FlowDistribution

__all__ = ["Flow", "FlowDistribution"]
