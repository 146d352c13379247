"""The labels a user's conditional GAN model is called with, as the adversarial losses give
them to the discriminator: found by name or by position in the model's own signature, and
in the dtype a discriminator takes."""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["context_like", "model_labels"]

#: the signatures of the models the losses have seen, to find labels passed by position
_SIGNATURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_labels(model: Callable[..., Any], args: tuple, kwargs: dict, name: str = "y") -> Any:
    """The labels a model was called with as its argument ``name`` (``y`` unless the user's
    model calls them something else), by name or by position: ``svi.step(x, y)`` and fit's
    ``(x, y)`` tuples and DataLoaders pass them positionally to ``model(x, y)``, and a
    discriminator left without them would be conditioned on nothing.

    Example:
        >>> def model(x, y=None): ...
        >>> model_labels(model, (1, 2), {}), model_labels(model, (1,), {"y": 3})
        (2, 3)
        >>> def digits(x, digit): ...
        >>> model_labels(digits, (1, 4), {}, name="digit")
        4
    """
    if name in kwargs or len(args) < 2:
        return kwargs.get(name)
    key = getattr(model, "__func__", model)  # a bound method's function: one per class
    try:
        signature = _SIGNATURES.get(key)
    except TypeError:  # a callable that takes no weak reference: not cached
        signature = None
    try:
        if signature is None:
            signature = inspect.signature(model)
            with contextlib.suppress(TypeError):
                _SIGNATURES[key] = signature
        bound = signature.bind_partial(*args)
    except (TypeError, ValueError):  # no signature (a builtin), or arguments it refuses
        return None
    parameter = signature.parameters.get(name)
    if parameter is None or parameter.kind not in (
        parameter.POSITIONAL_ONLY,
        parameter.POSITIONAL_OR_KEYWORD,
    ):
        return None
    return bound.arguments.get(name)


def context_like(context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``context`` on ``x``'s device, and in its dtype when floating (one-hot or given
    features); integer labels stay integers, for a discriminator that embeds them.

    Example:
        >>> context_like(torch.tensor([1, 2]), torch.zeros(2, dtype=torch.float64)).dtype
        torch.int64
    """
    if context.is_floating_point():
        return context.to(x)
    return context.to(x.device)
