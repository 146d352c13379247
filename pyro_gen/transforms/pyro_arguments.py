"""Clear errors for Pyro's helper arguments that pyro_gen's helpers name or order differently.

Why: the helpers mirror ``pyro.distributions.transforms`` so that a program swaps
``T.affine_coupling`` for ours, but a few of Pyro's arguments have another name here
(``count_bins`` is ``num_bins``), another meaning (``order``) or no counterpart
(``split_dim``, ``stable``). Python's own ``TypeError: unexpected keyword argument`` does not
say what to pass instead; :func:`pyro_arguments` does. Pyro's spellings that mean exactly
what pyro_gen does anyway (``dim=-1``, ``hidden_dims=None``, ``order="quadratic"`` for a
spline) are accepted, so such a program runs unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_LOG_SCALE = (
    "pass log_scale_bound= instead (pyro_gen bounds the log-scale smoothly to "
    "(-log_scale_bound, log_scale_bound))"
)
_SIGMOID = (
    "pyro_gen's affine layers have no sigmoid parameterisation (Pyro's stable=True); "
    "leave it out, the bounded log-scale (log_scale_bound=) plays that part"
)

#: Pyro's argument name -> what to pass to pyro_gen's helper instead
_ADVICE = {
    "count_bins": "pass num_bins= instead (pyro_gen's name for the number of spline bins)",
    "split_dim": (
        "pass mask=torch.arange(input_dim) < split_dim instead (a bool mask of the event "
        "shape, True where the input is kept), or mask='half', which keeps the first "
        "ceil(input_dim / 2) entries (Pyro's default split keeps input_dim // 2)"
    ),
    "log_scale_min_clip": _LOG_SCALE,
    "log_scale_max_clip": _LOG_SCALE,
    "sigmoid_bias": _SIGMOID,
    "stable": _SIGMOID,
    "permutation": (
        "pass the permutation as the second argument, permute(event_shape, permutation), "
        "or build Permute(permutation)"
    ),
}


def _drop_pyro_defaults(name: str, kwargs: dict[str, Any]) -> None:
    """Removes Pyro spellings that mean what pyro_gen does anyway; raises for other values."""
    if "dim" in kwargs:
        if kwargs["dim"] != -1:
            raise TypeError(
                f"{name}(dim={kwargs['dim']!r}): pyro_gen transforms act on the trailing event "
                f"dims; pass the event shape instead (e.g. event_shape=(C, H, W) for images) "
                f"and leave dim out"
            )
        del kwargs["dim"]
    if "hidden_dims" in kwargs and kwargs["hidden_dims"] is None:
        del kwargs["hidden_dims"]  # Pyro's "default widths"
    order = kwargs.get("order")
    if isinstance(order, str):
        if order != "quadratic":
            raise TypeError(
                f"{name}(order={order!r}): Pyro's order= picks the spline kind; pyro_gen's "
                f"splines are rational-quadratic (Pyro's order='quadratic'), and order= here "
                f"is the MADE input order (a permutation tensor); leave order out"
            )
        del kwargs["order"]


def pyro_arguments(fn: F) -> F:
    """Wraps a helper so that Pyro's arguments get an error saying what to pass instead.

    Example (the doctest elides the end of the message):
        >>> @pyro_arguments
        ... def helper(input_dim, *, num_bins=8):
        ...     return num_bins
        >>> helper(2, count_bins=4)
        Traceback (most recent call last):
        ...
        TypeError: helper(count_bins=...) is Pyro's argument: pass num_bins= instead ...
    """
    sig = inspect.signature(fn)
    positional = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    keyword = [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for key in kwargs:
            if key in _ADVICE and key not in sig.parameters:
                raise TypeError(f"{name}({key}=...) is Pyro's argument: {_ADVICE[key]}")
        if len(args) > len(positional):
            raise TypeError(
                f"{name} takes {len(positional)} positional argument(s) ({', '.join(positional)}) "
                f"but {len(args)} were given; pass the others by keyword ({', '.join(keyword)}). "
                f"Pyro's helper of this name orders its arguments differently"
            )
        hidden_slot = positional.index("hidden_dims") if "hidden_dims" in positional else -2
        if len(args) == hidden_slot + 1 and args[-1] is None:  # Pyro's "default widths"
            args = args[:-1]
        _drop_pyro_defaults(name, kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
