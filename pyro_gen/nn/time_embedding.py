"""Sinusoidal time-step embeddings and a time-conditioned MLP for low-dimensional diffusion."""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_gen.nn.arguments import check_count

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
        if check_count("dim", dim, minimum=2) % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        if out_dim is not None:
            out_dim = check_count("out_dim", out_dim)
        if not max_period > 1:  # log(max_period) > 0: frequencies below one, the longest last
            raise ValueError(f"max_period must be a number > 1, got {max_period!r}")
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


def label_table(num_classes: int | None, dim: int) -> nn.Embedding | None:
    """A learned embedding per class label, added to the time embedding (a class-conditional
    network, as in Dhariwal & Nichol's class-conditional U-Net); None without classes."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a whole number >= 1, got {num_classes!r}")
    return nn.Embedding(int(num_classes), dim)


def add_label(
    emb: torch.Tensor, table: nn.Embedding | None, y: torch.Tensor | None, owner: str
) -> torch.Tensor:
    """``emb`` plus the embedding of labels ``y`` (one per row), with one error for a label
    missing or given to a network built without ``num_classes``."""
    if table is None:
        if y is not None:
            raise ValueError(
                f"{owner} got labels y= but was built without classes: build it with "
                "num_classes=... to condition on them"
            )
        return emb
    if y is None:
        raise ValueError(
            f"{owner} was built with num_classes={table.num_embeddings} and needs labels: pass "
            "y= to the model (model(x, y=labels), sample(..., context={'y': labels}))"
        )
    if torch.is_floating_point(y) or y.shape != emb.shape[:1]:
        raise ValueError(
            f"{owner}'s labels y must be integers, one per example ({emb.shape[0]}), got "
            f"{y.dtype} of shape {tuple(y.shape)}"
        )
    return emb + table(y.long())


class TimeMLP(nn.Module):
    """Residual MLP :math:`\\epsilon_\\theta(x_t, t)` for vector data: each block adds a
    projection of the time embedding before a SiLU layer.

    Args:
        dim: data dimension (input size).
        hidden_dim: width.
        num_layers: residual blocks.
        out_dim: output size (default ``dim``; ``2 * dim`` for learned variances).
        time_dim: sinusoidal embedding size.
        num_classes: when given, ``forward(x, t, y)`` takes integer labels ``y`` in
            ``[0, num_classes)`` whose learned embedding joins the time embedding (a
            class-conditional network: ``model(x, y=labels)``).

    Example:
        >>> net = TimeMLP(2, 32)
        >>> net(torch.randn(5, 2), torch.randint(1, 100, (5,))).shape
        torch.Size([5, 2])
        >>> TimeMLP(2, 32, num_classes=3)(torch.randn(2, 2), torch.tensor([1, 4]),
        ...                               y=torch.tensor([0, 2])).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 128,
        num_layers: int = 3,
        out_dim: int | None = None,
        time_dim: int = 32,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        dim = check_count("dim", dim)
        hidden_dim = check_count("hidden_dim", hidden_dim)
        num_layers = check_count("num_layers", num_layers, minimum=0)
        if out_dim is not None:
            out_dim = check_count("out_dim", out_dim)
        if check_count("time_dim", time_dim, minimum=2) % 2:
            raise ValueError(f"time_dim must be even (sines paired with cosines), got {time_dim}")
        self.embed = SinusoidalTimeEmbedding(time_dim, hidden_dim)
        self.label = label_table(num_classes, hidden_dim)
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

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = add_label(self.embed(t), self.label, y, "TimeMLP")
        h = self.inp(x)
        for block in self.blocks:
            r = self.act(block["fc1"](self.act(h)) + block["time"](emb))
            h = h + block["fc2"](r)
        return self.out(self.act(h))
