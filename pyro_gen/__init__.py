"""pyro_gen: deep generative models written the Pyro way."""

from __future__ import annotations

__version__ = "0.1.0"
