"""Small helpers shared inside :mod:`pyro_gen.vae` (not public API)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from torch import nn


def numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int | None = None,
    activation: type[nn.Module] = nn.Softplus,
) -> nn.Sequential:
    """Linear layers with ``activation`` between them; no activation after ``out_dim``.

    With ``out_dim=None`` the network ends with the last hidden activation.
    """
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden_dims:
        layers += [nn.Linear(d, h), activation()]
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def cat_context(h: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """Concatenate ``context`` (..., C) to ``h`` (..., F), broadcasting leading dims."""
    if context is None:
        return h
    context = context.to(h.dtype)
    shape = torch.broadcast_shapes(h.shape[:-1], context.shape[:-1])
    h = h.expand(shape + h.shape[-1:])
    return torch.cat([h, context.expand(shape + context.shape[-1:])], -1)


def setup_off_the_store(setup: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run a guide's ``setup`` (which runs the model once) against an empty param store,
    restoring the user's store as it was afterwards.

    Why: a model built at construction must not write the global param store, as Pyro's
    autoguides do not before their first call. Its decoder's tensors left there under the
    default names were taken, by ``pyro.param``, for those of another model with the same
    names, whose own decoder then never trained."""
    with pyro.get_param_store().scope():
        setup(*args, **kwargs)
