"""Marking a ``fit`` step callback that changes only tensors.

``fit``'s compiled step holds what the model reads besides parameters, buffers and its
inputs (a Python number such as an annealed noise scale) as constants of its recording. A
step callback may change such a value, so after every step with an unmarked callback the
next step is checked against Pyro's own run (an extra forward pass of model and guide) and
recorded again if stale. A callback that only updates tensors in place (an exponential
moving average of the weights, a buffer the model reads, a learning rate) needs no check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "changes_only_tensors"


def changes_only_tensors(callback: F) -> F:
    """Marks ``callback`` as changing only tensors (parameters, buffers, optimizer state),
    never a Python value the model reads, so ``fit`` skips the check of its recording after
    it. Use it on a function, or on a method where it is defined.

    Example:
        >>> @changes_only_tensors
        ... def update_ema(step, model):
        ...     pass
        >>> only_tensors([update_ema]), only_tensors([update_ema, lambda s, m: None])
        (True, False)
    """
    setattr(callback, _MARK, True)
    return callback


def only_tensors(callbacks: list[Callable[..., Any]]) -> bool:
    """Whether every one of ``callbacks`` is marked with :func:`changes_only_tensors`."""
    return all(getattr(cb, _MARK, False) for cb in callbacks)
