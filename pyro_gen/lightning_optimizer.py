"""The check of what :class:`~pyro_gen.lightning.LightningSVI`'s ``optimizer=`` builds.

Lightning trains with whatever ``configure_optimizers`` returns: ``None`` (a factory that
forgot its ``return``) trained nothing, with only a warning among Lightning's log lines, and
an optimizer built over other tensors than the parameters it was given (a closure over an
earlier model's parameters) left the model and guide at their initial values, silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def check_built_optimizer(built: Any, trained: Sequence[torch.nn.Parameter]) -> None:
    """Refuses ``built`` (what ``optimizer(trained)`` returned) unless it is a torch
    optimizer, or a list of them, holding every parameter of ``trained``.

    Raises:
        TypeError: if it is not a torch optimizer.
        ValueError: naming how many of the parameters it leaves out.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> check_built_optimizer(torch.optim.SGD([p], lr=0.1), [p])
        >>> check_built_optimizer(None, [p])
        Traceback (most recent call last):
        ...
        TypeError: optimizer= returned NoneType, not a torch.optim.Optimizer; ...
    """
    optimizers = list(built) if isinstance(built, list | tuple) else [built]
    if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
        raise TypeError(
            f"optimizer= returned {type(built).__name__}, not a torch.optim.Optimizer; it must "
            "build one from the parameters it is given, e.g. lambda params: "
            "torch.optim.Adam(params, lr=1e-3), or Lightning trains nothing"
        )
    held = {id(p) for o in optimizers for group in o.param_groups for p in group["params"]}
    left_out = sum(id(p) not in held for p in trained)
    if left_out:
        raise ValueError(
            f"the optimizer built by optimizer= leaves out {left_out} of the {len(trained)} "
            "parameters the model and guide register, which would never train; build it from "
            "the parameters it is given (optimizer(params)), not from tensors of your own"
        )
