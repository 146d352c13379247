"""Fully connected conditioner networks."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from pyro_gen.nn.arguments import check_count
from pyro_gen.nn.legacy_keys import LegacyKeys


def layer_widths(hidden_dims: object) -> list[int]:
    """``hidden_dims`` as a list of positive ints: a sequence of widths, or one int for one
    layer (as the VAE's networks take it; the flows iterated it, "'int' object is not
    iterable"). Anything else gets one error naming the argument.

    Example:
        >>> layer_widths((64, 64)), layer_widths(16)
        ([64, 64], [16])
        >>> layer_widths([8, 0])
        Traceback (most recent call last):
        ...
        ValueError: hidden_dims must hold positive whole numbers, got [8, 0]
    """
    if isinstance(hidden_dims, numbers.Integral) and not isinstance(hidden_dims, bool):
        hidden_dims = [hidden_dims]
    if isinstance(hidden_dims, (str, torch.Tensor)) or not isinstance(hidden_dims, Sequence):
        raise TypeError(
            "hidden_dims must be a sequence of layer widths (or one int for one layer), got "
            f"the {type(hidden_dims).__name__} {hidden_dims!r}"
        )
    widths = list(hidden_dims)
    whole = (numbers.Integral,)
    if not all(isinstance(h, whole) and not isinstance(h, bool) and h > 0 for h in widths):
        raise ValueError(f"hidden_dims must hold positive whole numbers, got {widths!r}")
    return [int(h) for h in widths]


def broadcast_context(x: torch.Tensor, context: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Expands ``context`` (shape ``(..., K)``) to the batch shape of ``x``.

    Args:
        x: input with ``event_dim`` rightmost event dimensions.
        context: context vectors, batch dims broadcastable against those of ``x``.
        event_dim: number of rightmost event dims of ``x``.

    Returns:
        ``context`` expanded to ``x.shape[:-event_dim] + (K,)`` (or a broadcast of both).

    Example:
        >>> broadcast_context(torch.zeros(5, 3), torch.ones(2), 1).shape
        torch.Size([5, 2])
    """
    batch = x.shape[: x.dim() - event_dim]
    try:
        shape = torch.broadcast_shapes(batch, context.shape[:-1])
    except RuntimeError as exc:
        raise ValueError(
            # the batch shapes only: the network's input may be part of the caller's (a
            # coupling's conditioner sees half of it), so its full shape would mislead
            f"the context's batch shape {tuple(context.shape[:-1])} (context shape "
            f"{tuple(context.shape)}) does not broadcast with the input's batch shape "
            f"{tuple(batch)}: give one context per input, or one for all"
        ) from exc
    return context.expand(shape + context.shape[-1:])


def concat_context(
    x: torch.Tensor, context: torch.Tensor | None, in_dim: int, context_dim: int, name: str
) -> torch.Tensor:
    """Checks ``x`` and ``context`` against a network's sizes, then appends the context to ``x``.

    Shared by the vector conditioners (``MLP``, ``MADE``): a network built with
    ``context_dim > 0`` requires a context, one built without refuses it.

    Args:
        x: input of shape ``(..., D)``.
        context: context vectors ``(..., K)`` (batch dims broadcast against ``x``) or ``None``.
        in_dim: the ``D`` the network was built with.
        context_dim: the ``K`` the network was built with (0: unconditional).
        name: network name used in error messages.

    Returns:
        ``x`` unchanged without a context, else ``(..., D + K)`` with broadcast batch dims.

    Example:
        >>> concat_context(torch.zeros(5, 3), torch.ones(2), 3, 2, "MLP").shape
        torch.Size([5, 5])
    """
    if x.shape[-1] != in_dim:
        raise ValueError(f"{name} expected last dim {in_dim}, got shape {tuple(x.shape)}")
    if context_dim:
        if context is None:
            raise ValueError(f"this {name} was built with context_dim > 0; pass a context")
        context = broadcast_context(x, context, 1)
        return torch.cat([x.expand(context.shape[:-1] + x.shape[-1:]), context], dim=-1)
    if context is not None:
        raise ValueError(f"context given to this {name}, built with context_dim=0")
    return x


class MLP(LegacyKeys):
    r"""Multi-layer perceptron :math:`\mathbb{R}^{d_\text{in}} \to \mathbb{R}^{d_\text{out}}`.

    Acts on the last dimension, so any batch shape is accepted. With ``context_dim > 0``
    the context vector is concatenated to the input (batch dims broadcast), which is how
    the conditional coupling and autoregressive transforms condition on a class or
    other side information.

    Args:
        in_dim: input features.
        hidden_dims: widths of the hidden layers (may be empty: a linear map).
        out_dim: output features.
        activation: activation module class, instantiated once per hidden layer.
        context_dim: size of an optional context vector concatenated to the input.
        zero_init_output: zero the last layer so the network starts at the constant 0
            (a coupling layer built on it then starts at the identity).

    Example:
        >>> net = MLP(3, [16, 16], 4)
        >>> net(torch.randn(7, 3)).shape
        torch.Size([7, 4])
        >>> cnet = MLP(3, [8], 2, context_dim=5)
        >>> cnet(torch.randn(2, 7, 3), torch.randn(7, 5)).shape
        torch.Size([2, 7, 2])
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        *,
        context_dim: int = 0,
        zero_init_output: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim = check_count("in_dim", in_dim)
        # 0 passes: the coupling helpers build their MLP before checking the element-wise
        # map, whose own error names the map that asked for no outputs
        self.out_dim = out_dim = check_count("out_dim", out_dim, minimum=0)
        self.context_dim = context_dim = check_count("context_dim", context_dim, minimum=0)
        dims = [in_dim + context_dim, *layer_widths(hidden_dims)]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), activation()]
        self.output = nn.Linear(dims[-1], out_dim)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)
        # The hidden layers only: the output layer is registered once, as ``output`` (the name
        # the param store knows it by), so each tensor has one name in the state dict.
        self.net = nn.Sequential(*layers)

    def _legacy_keys(self) -> dict[str, str]:
        # Earlier versions also held the output layer as the last entry of ``net``, so their
        # state dicts name its tensors twice: ``net.<2 * len(hidden_dims)>.*`` as well.
        return {f"net.{len(self.net)}.": "output."}

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = concat_context(x, context, self.in_dim, self.context_dim, "MLP")
        return self.output(self.net(x))
