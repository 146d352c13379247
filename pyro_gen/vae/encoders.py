"""Encoders: networks from an image ``x`` to the parameters of :math:`q(z \\mid x)`.

Every encoder returns ``(loc, scale, hidden)``: the mean-field Normal parameters and the
last hidden features, which richer posterior families (IAF) condition on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from pyro_gen.nn.mlp import layer_widths
from pyro_gen.transforms._base import PicklableModule, as_event_shape
from pyro_gen.vae._utils import cat_context, mlp, numel


class Encoder(PicklableModule):
    """Base class: a trunk to ``hidden_dim`` features followed by loc and scale heads."""

    z_dim: int
    hidden_dim: int

    def features(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(x, context)
        loc = self.loc(h)
        scale = F.softplus(self.scale(h)) + self.min_scale
        return loc, scale, h

    def _heads(self, hidden_dim: int, z_dim: int, min_scale: float) -> None:
        if z_dim < 1:
            raise ValueError(f"the latent size must be at least 1, got z_dim={z_dim}")
        self.z_dim, self.hidden_dim, self.min_scale = z_dim, hidden_dim, min_scale
        self.loc = nn.Linear(hidden_dim, z_dim)
        self.scale = nn.Linear(hidden_dim, z_dim)


class MLPEncoder(Encoder):
    """Fully connected encoder, :math:`x \\mapsto (\\mu(x), \\sigma(x))` with softplus layers.

    Args:
        event_shape: shape of one example, e.g. ``(28, 28)``.
        z_dim: latent size.
        hidden_dims: hidden layer sizes (default one layer of 400, as in Kingma & Welling).
        context_dim: size of an optional context vector (e.g. one-hot label) concatenated
            to the flattened input.
        min_scale: floor added to the softplus scale.

    References:
        Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114.

    Example:
        >>> enc = MLPEncoder((8, 8), z_dim=2, hidden_dims=(16,))
        >>> [t.shape for t in enc(torch.rand(5, 8, 8))]
        [torch.Size([5, 2]), torch.Size([5, 2]), torch.Size([5, 16])]
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        z_dim: int,
        hidden_dims: Sequence[int] = (400,),
        context_dim: int = 0,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        hidden_dims = tuple(layer_widths(hidden_dims))
        self.trunk = mlp(numel(self.event_shape) + context_dim, hidden_dims)
        self._heads(hidden_dims[-1], z_dim, min_scale)

    def features(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x.reshape(x.shape[: x.dim() - len(self.event_shape)] + (-1,))
        return self.trunk(cat_context(x.to(self.loc.weight.dtype), context))


class ConvEncoder(Encoder):
    """Small convolutional encoder: two stride-2 convolutions then a dense layer.

    ``event_shape`` is ``(H, W)`` or ``(C, H, W)`` with H and W divisible by 4.

    Example:
        >>> enc = ConvEncoder((8, 8), z_dim=3, channels=(4, 8), hidden_dim=16)
        >>> enc(torch.rand(2, 8, 8))[0].shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        z_dim: int,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        context_dim: int = 0,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        c, h, w = (1, *self.event_shape) if len(self.event_shape) == 2 else self.event_shape
        if h % 4 or w % 4:
            raise ValueError(f"ConvEncoder needs H and W divisible by 4, got {self.event_shape}")
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.Flatten(),
        )
        self.chw = (c, h, w)
        self.dense = mlp(c2 * (h // 4) * (w // 4) + context_dim, (hidden_dim,))
        self._heads(hidden_dim, z_dim, min_scale)

    def features(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        h = self.conv(x.reshape((-1, *self.chw)).to(self.loc.weight.dtype))
        return self.dense(cat_context(h.reshape(batch + h.shape[-1:]), context))
