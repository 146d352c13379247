"""Decoders: :math:`z \\mapsto p(x \\mid z)`, a network followed by a :class:`Likelihood`."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pyro_gen.nn.mlp import layer_widths
from pyro_gen.transforms._base import PicklableModule, as_event_shape
from pyro_gen.vae._utils import cat_context, mlp, numel
from pyro_gen.vae.likelihoods import Likelihood, make_likelihood


class Decoder(PicklableModule):
    """Base class. Subclasses implement :meth:`params` returning
    ``(..., *event_shape, likelihood.num_params)``."""

    event_shape: tuple[int, ...]
    likelihood: Likelihood

    def params(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None, **kwargs
    ) -> dist.TorchDistribution:
        """The distribution :math:`p(x \\mid z)`, batch shape ``z.shape[:-1]``."""
        return self.likelihood(self.params(z, context), len(self.event_shape))

    def mean(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Mean image :math:`\\mathbb{E}[x \\mid z]` in :math:`[0, 1]`."""
        return self.likelihood.mean(self.params(z, context))


class MLPDecoder(Decoder):
    """Fully connected decoder with softplus hidden layers.

    Args:
        z_dim: latent size.
        event_shape: shape of one example.
        hidden_dims: hidden layer sizes.
        likelihood: a :class:`Likelihood` or its name (``bernoulli``, ``gaussian``,
            ``gaussian_learned``, ``categorical``).
        context_dim: size of an optional context vector concatenated to ``z``.

    Example:
        >>> dec = MLPDecoder(2, (8, 8), hidden_dims=(16,))
        >>> px = dec(torch.randn(5, 2))
        >>> px.batch_shape, px.event_shape
        (torch.Size([5]), torch.Size([8, 8]))
    """

    def __init__(
        self,
        z_dim: int,
        event_shape: Sequence[int],
        hidden_dims: Sequence[int] = (400,),
        likelihood: str | Likelihood = "bernoulli",
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self.likelihood = make_likelihood(likelihood)
        k = self.likelihood.num_params
        self.net = mlp(z_dim + context_dim, layer_widths(hidden_dims), numel(self.event_shape) * k)

    def params(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(cat_context(z, context))
        return out.reshape(out.shape[:-1] + self.event_shape + (self.likelihood.num_params,))


class ConvDecoder(Decoder):
    """Small convolutional decoder: a dense layer to a (C, H/4, W/4) map, then two
    stride-2 transposed convolutions.

    Example:
        >>> dec = ConvDecoder(3, (8, 8), channels=(8, 4), hidden_dim=16)
        >>> dec.mean(torch.randn(2, 3)).shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        z_dim: int,
        event_shape: Sequence[int],
        channels: Sequence[int] = (64, 32),
        hidden_dim: int = 256,
        likelihood: str | Likelihood = "bernoulli",
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        self.event_shape = as_event_shape(event_shape)
        self.likelihood = make_likelihood(likelihood)
        c, h, w = (1, *self.event_shape) if len(self.event_shape) == 2 else self.event_shape
        if h % 4 or w % 4:
            raise ValueError(f"ConvDecoder needs H and W divisible by 4, got {self.event_shape}")
        c1, c2 = channels
        self.c = c
        self.start = (c1, h // 4, w // 4)
        self.dense = mlp(z_dim + context_dim, (hidden_dim,), c1 * (h // 4) * (w // 4))
        k = self.likelihood.num_params
        self.deconv = nn.Sequential(
            nn.Softplus(),
            nn.ConvTranspose2d(c1, c2, 4, stride=2, padding=1),
            nn.Softplus(),
            nn.ConvTranspose2d(c2, c * k, 4, stride=2, padding=1),
        )

    def params(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.dense(cat_context(z, context))
        batch = h.shape[:-1]
        out = self.deconv(h.reshape((-1, *self.start)))  # (N, C*K, H, W)
        k = self.likelihood.num_params
        out = out.reshape(out.shape[0], self.c, k, *out.shape[-2:]).movedim(2, -1)
        return out.reshape(batch + self.event_shape + (k,))
