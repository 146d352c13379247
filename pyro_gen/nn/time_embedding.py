"""Sinusoidal time-step embeddings and a time-conditioned MLP for low-dimensional diffusion."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalTimeEmbedding", "TimeMLP"]


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style embedding of (integer or real) time steps:

    .. math::

        e(t)_{i} = \\sin(t\\, \\omega_i),\\; e(t)_{i + d/2} = \\cos(t\\, \\omega_i),\\quad
        \\omega_i = P^{-i/(d/2)},

    with maximum period :math:`P` (``max_period``), followed by a two-layer SiLU MLP when
    ``out_dim`` is given.

    Args:
        dim: embedding size (even).
        out_dim: width of the MLP applied after the sinusoids (None: no MLP).
        max_period: longest wavelength.

    References:
        Vaswani et al. Attention Is All You Need. arXiv:1706.03762. Ho, Jain, Abbeel.
        Denoising Diffusion Probabilistic Models. arXiv:2006.11239.

    Example:
        >>> SinusoidalTimeEmbedding(8)(torch.tensor([1, 5])).shape
        torch.Size([2, 8])
    """

    freqs: torch.Tensor

    def __init__(self, dim: int, out_dim: int | None = None, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        # in the default dtype, as nn.Linear's weights: a float32 buffer in a module built
        # under torch.set_default_dtype(torch.float64) cast its times to float32 (and its
        # MLP then refused the float32 features)
        dtype = torch.get_default_dtype()
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype) / half)
        self.register_buffer("freqs", freqs)
        self.mlp = (
            nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
            if out_dim is not None
            else nn.Identity()
        )
        self.out_dim = out_dim if out_dim is not None else dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.to(self.freqs.dtype)[..., None] * self.freqs
        return self.mlp(torch.cat([args.sin(), args.cos()], dim=-1))


class TimeMLP(nn.Module):
    """Residual MLP :math:`\\epsilon_\\theta(x_t, t)` for vector data: each block adds a
    projection of the time embedding before a SiLU layer.

    Args:
        dim: data dimension (input size).
        hidden_dim: width.
        num_layers: residual blocks.
        out_dim: output size (default ``dim``; ``2 * dim`` for learned variances).
        time_dim: sinusoidal embedding size.

    Example:
        >>> net = TimeMLP(2, 32)
        >>> net(torch.randn(5, 2), torch.randint(1, 100, (5,))).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 128,
        num_layers: int = 3,
        out_dim: int | None = None,
        time_dim: int = 32,
    ) -> None:
        super().__init__()
        self.embed = SinusoidalTimeEmbedding(time_dim, hidden_dim)
        self.inp = nn.Linear(dim, hidden_dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "time": nn.Linear(hidden_dim, hidden_dim),
                    "fc1": nn.Linear(hidden_dim, hidden_dim),
                    "fc2": nn.Linear(hidden_dim, hidden_dim),
                }
            )
            for _ in range(num_layers)
        )
        self.out = nn.Linear(hidden_dim, dim if out_dim is None else out_dim)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(t)
        h = self.inp(x)
        for block in self.blocks:
            r = self.act(block["fc1"](self.act(h)) + block["time"](emb))
            h = h + block["fc2"](r)
        return self.out(self.act(h))
