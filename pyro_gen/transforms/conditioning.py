"""A conditional layer's network with its context bound: what ``condition(context)`` of the
coupling and autoregressive layers hands the transform it returns."""

from __future__ import annotations

import functools
from typing import Any

import torch

from pyro_gen.nn.mlp import broadcast_context


def bind_context(net: Any, context: torch.Tensor, event_dims: int) -> functools.partial:
    """``net`` with ``context`` bound, as a conditioned layer calls it: ``net(h, context=...)``
    with ``h`` (``event_dims`` rightmost event dims) first expanded to the batch shape it
    broadcasts to with the context's.

    Why: Pyro's conditioners (``ConditionalDenseNN``, ``ConditionalAutoRegressiveNN``), which
    the conditional layers take as they are, expand the context to the input's batch shape
    and cannot grow the input to the context's. A context with batch dims the value lacks is
    what Pyro's machinery makes: an enumerated label ``(E, 1, 1, C)`` or a latent drawn per
    vectorized particle ``(K, B, C)`` against observed data ``(B, D)``. Those failed with
    "expand(...): the number of sizes provided ... must be greater or equal"; pyro_gen's own
    networks broadcast both ways already. Still a ``functools.partial`` holding ``net``, so
    the layer's cache stamp finds its parameters
    (:func:`~pyro_gen.transforms.ladj_cache.conditioner_modules`).

    Example:
        >>> from pyro.nn import ConditionalDenseNN
        >>> net = ConditionalDenseNN(2, 3, [8], param_dims=[2])
        >>> bind_context(net, torch.zeros(5, 4, 3), 1)(torch.zeros(4, 2)).shape
        torch.Size([5, 4, 2])
    """
    return functools.partial(_call_with_context, net, event_dims, context=context)


def _call_with_context(net: Any, event_dims: int, h: torch.Tensor, *, context: torch.Tensor):
    batch = h.shape[: h.dim() - event_dims]
    if context.shape[:-1] != batch:  # the usual one context per input skips this
        full = broadcast_context(h, context, event_dims).shape[:-1]
        if full != batch:
            h = h.expand(full + h.shape[h.dim() - event_dims :])
    return net(h, context=context)
