"""What :class:`~pyro_gen.lightning.LightningSVI`'s optimizers are: the check of what its
``optimizer=`` builds (an optimizer, or with its LR schedulers what ``configure_optimizers``
may return), the test for Pyro's optimizer wrappers it refuses, and the gradient
averaging it hooks onto a loss's own optimizers under DDP.

Lightning trains with whatever ``configure_optimizers`` returns: ``None`` (a factory that
forgot its ``return``) trained nothing, with only a warning among Lightning's log lines, and
an optimizer built over other tensors than the parameters it was given (a closure over an
earlier model's parameters) left the model and guide at their initial values, silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.optim
import torch


def built_optimizers(built: Any) -> list[Any]:
    """The optimizers in ``built``, any of the forms Lightning's ``configure_optimizers`` may
    return: an optimizer, a dict with ``"optimizer"`` (and ``"lr_scheduler"``), a list or
    tuple of those, or a pair (optimizers, schedulers) of lists. Whatever else is kept as it
    is, for :func:`check_built_optimizer` to refuse.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=0.1)
        >>> step = torch.optim.lr_scheduler.StepLR(opt, 1)
        >>> built_optimizers({"optimizer": opt, "lr_scheduler": step}) == [opt]
        True
        >>> built_optimizers(([opt], [step])) == [opt]
        True
    """
    if isinstance(built, dict) and "optimizer" in built:
        return [built["optimizer"]]
    if isinstance(built, list | tuple):
        pair = len(built) == 2 and all(isinstance(b, list | tuple) for b in built)
        return [o for b in (built[0] if pair else built) for o in built_optimizers(b)]
    return [built]


def check_built_optimizer(built: Any, trained: Sequence[torch.nn.Parameter]) -> None:
    """Refuses ``built`` (what ``optimizer(trained)`` returned) unless its optimizers
    (:func:`built_optimizers`) are torch optimizers holding every parameter of ``trained``.

    Raises:
        TypeError: if it holds something other than a torch optimizer.
        ValueError: naming how many of the parameters it leaves out.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> check_built_optimizer(torch.optim.SGD([p], lr=0.1), [p])
        >>> check_built_optimizer(None, [p])
        Traceback (most recent call last):
        ...
        TypeError: optimizer= returned NoneType, not a torch.optim.Optimizer; ...
    """
    optimizers = built_optimizers(built)
    if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
        raise TypeError(
            f"optimizer= returned {type(built).__name__}, not a torch.optim.Optimizer; it must "
            "build one from the parameters it is given, e.g. lambda params: "
            "torch.optim.Adam(params, lr=1e-3), or return what configure_optimizers may "
            '(a dict {"optimizer": ..., "lr_scheduler": ...}), or Lightning trains nothing'
        )
    held = {id(p) for o in optimizers for group in o.param_groups for p in group["params"]}
    left_out = sum(id(p) not in held for p in trained)
    if left_out:
        raise ValueError(
            f"the optimizer built by optimizer= leaves out {left_out} of the {len(trained)} "
            "parameters the model and guide register, which would never train; build it from "
            "the parameters it is given (optimizer(params)), not from tensors of your own"
        )


def check_optimizer_factory(optimizer: Any) -> None:
    """Refuses an ``optimizer=`` that cannot build a torch optimizer from parameters: a Pyro
    optimizer (Lightning steps torch optimizers) or something not callable.

    Example:
        >>> import functools, pyro.optim
        >>> check_optimizer_factory(functools.partial(torch.optim.Adam, lr=1e-3))
        >>> check_optimizer_factory(pyro.optim.Adam({"lr": 1e-3}))
        Traceback (most recent call last):
        ...
        TypeError: optimizer must build a torch optimizer from parameters, ...
    """
    if isinstance(optimizer, pyro.optim.PyroOptim) or is_pyro_optim_builder(optimizer):
        given = (
            f"a Pyro {type(optimizer).__name__}"
            if isinstance(optimizer, pyro.optim.PyroOptim)
            else f"Pyro's pyro.optim.{optimizer.__name__}, which takes a dict of arguments"
        )
        raise TypeError(
            "optimizer must build a torch optimizer from parameters, e.g. "
            "functools.partial(torch.optim.Adam, lr=1e-3): Lightning steps torch "
            f"optimizers, not {given}"
        )
    if optimizer is not None and not callable(optimizer):
        raise TypeError(
            "optimizer must be a callable params -> torch.optim.Optimizer, got "
            f"{type(optimizer).__name__}"
        )


def is_pyro_optim_builder(optimizer: Any) -> bool:
    """Whether ``optimizer`` is one of Pyro's wrapper functions (``pyro.optim.Adam``, not
    called): it takes a dict of arguments, so given the parameters it failed inside Pyro
    with an AssertionError when training started. Pyro's torch optimizer classes
    (``pyro.optim.clipped_adam.ClippedAdam``) are torch optimizers and pass.

    Example:
        >>> import pyro.optim
        >>> is_pyro_optim_builder(pyro.optim.Adam), is_pyro_optim_builder(torch.optim.Adam)
        (True, False)
    """
    module = getattr(optimizer, "__module__", None) or ""
    return not isinstance(optimizer, type) and module.startswith("pyro.optim")


def world_size() -> int:
    """Processes in the default ``torch.distributed`` group (1 when there is none).

    Example:
        >>> world_size()
        1
    """
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_gradients(optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
    """Averages the gradients of ``optimizer``'s parameters over all processes (a step
    pre-hook: a loss's own optimizers, which DDP does not wrap, step on the mean)."""
    world = world_size()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= world
