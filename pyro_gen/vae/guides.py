"""Guides :math:`q(z \\mid x)` for the VAE family, swappable without touching the model.

A guide part is a module whose ``forward(x, context=None, **kwargs)`` returns the
distribution of the latent for a batch ``x``; :class:`~pyro_gen.vae.VAE` samples it at
the latent site under the data plate. Amortized guides also expose ``encode(x)`` giving a
Normal ``(loc, scale)``, used by the VampPrior and the diagnostics.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.vae.encoders import Encoder


class NormalGuide(nn.Module):
    """Amortized mean-field Normal guide, :math:`q(z \\mid x) = \\mathcal{N}(\\mu(x),
    \\operatorname{diag}\\sigma^2(x))`.

    Args:
        encoder: an :class:`~pyro_gen.vae.encoders.Encoder`.

    Example:
        >>> from pyro_gen.vae.encoders import MLPEncoder
        >>> q = NormalGuide(MLPEncoder((8, 8), 2, (16,)))
        >>> q(torch.rand(5, 8, 8)).batch_shape
        torch.Size([5])
    """

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.z_dim = encoder.z_dim

    def encode(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, _ = self.encoder(x, context)
        return loc, scale

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> dist.TorchDistribution:
        loc, scale = self.encode(x, context)
        return dist.Normal(loc, scale).to_event(1)
