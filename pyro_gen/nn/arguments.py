"""Checks of the sizes a network is built with, each failing with one error naming the argument.

Without them ``MADE(0, [8])`` or ``MLP(3, [8], 0)`` built networks over nothing, and
``MADE(-1, [8])`` or ``ResNetConv(1, 8, 2, context_dim=-2)`` failed inside torch with
messages that named no argument ("upper bound and lower bound inconsistent with step sign").
"""

from __future__ import annotations

import numbers

__all__ = ["check_count"]


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int, refused unless it is a whole number ``>= minimum`` (not a bool).

    Example:
        >>> check_count("context_dim", 0, minimum=0)
        0
        >>> check_count("input_dim", 2.5)
        Traceback (most recent call last):
        ...
        ValueError: input_dim must be a whole number >= 1, got 2.5
    """
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (whole and value >= minimum):  # type: ignore[operator]
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[call-overload]
