"""A Pyro loss's value as the one number a run reports."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["reported_loss"]


def reported_loss(value: Any) -> float:
    """``value`` as a float; for a loss of several terms (a tuple: ReweightedWakeSleep
    returns the model's loss, then the guide's, as Pyro's ``SVI.step`` does), its first
    term, the one a model is judged by (for ReweightedWakeSleep the negative importance
    weighted bound).

    Example:
        >>> reported_loss(torch.tensor(2.5)), reported_loss((torch.tensor(3.0), 7.0))
        (2.5, 3.0)
    """
    if isinstance(value, tuple):
        value = value[0]
    return float(value.detach() if torch.is_tensor(value) else value)
