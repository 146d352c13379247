"""Sample-quality measures shared by every model family (imports only ``nn`` and ``data``)."""

from __future__ import annotations

from pyro_gen.metrics.modes import (
    ModeCoverage,
    grid_modes,
    mode_coverage,
    ring_modes,
    sample_modes,
)

__all__ = ["ModeCoverage", "grid_modes", "mode_coverage", "ring_modes", "sample_modes"]
