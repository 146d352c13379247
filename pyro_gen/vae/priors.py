"""Priors :math:`p(z)` for the VAE family.

A prior is a module whose ``forward(context=None)`` returns a distribution with event
shape ``(z_dim,)`` and a batch shape that broadcasts under ``pyro.plate("data")``.
Learnable priors keep their parameters as module parameters, so ``pyro.module`` in the
model registers them.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class NormalPrior(nn.Module):
    """Standard Normal prior :math:`p(z) = \\mathcal{N}(0, I)`.

    Example:
        >>> p = NormalPrior(3)()
        >>> p.event_shape, round(p.log_prob(torch.zeros(3)).item(), 4)
        (torch.Size([3]), -2.7568)
    """

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        if z_dim < 1:
            raise ValueError(f"the latent size must be at least 1, got z_dim={z_dim}")
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self, context: torch.Tensor | None = None, **kwargs) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
