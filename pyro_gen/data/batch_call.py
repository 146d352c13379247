"""One batch as the arguments of a Pyro model call: :class:`Call`, read from a batch by
:func:`as_call`, described for error messages by :func:`describe`, and transformed by
:func:`with_transform`.

:func:`~pyro_gen.data.batching.batch_calls` makes these from the data forms users have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Transform = Callable[[Any], Any] | Mapping[int | str, Callable[[Any], Any]]


@dataclass(frozen=True)
class Call:
    """One batch, as the arguments of ``model(*args, **kwargs)``.

    Attributes:
        args: positional arguments.
        kwargs: keyword arguments.
        size: examples in the batch (first dimension of the first tensor), or None when the
            batch does not say.
    """

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The batch's tensors, also inside tuples, lists and dicts (a PackedSequence's
        ``data`` among them).

        Example:
            >>> len(Call((torch.zeros(2), [torch.ones(1)]), {"y": {"z": torch.ones(3)}}).tensors())
            3
        """
        return _tensors((self.args, self.kwargs))


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, tuple | list):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, Mapping):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _size(value: Any) -> int | None:
    # a numpy batch (a user's generator of np arrays) counted as one example: fit's
    # train_loss, a per-example mean, came out per batch (batch_size times too large)
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.shape[0] if value.ndim > 0 else None
    batch_sizes = getattr(value, "batch_sizes", None)  # a PackedSequence
    if isinstance(batch_sizes, torch.Tensor) and batch_sizes.numel():
        return int(batch_sizes[0])
    return None


def _to(value: Any, device: torch.device | None) -> Any:
    """``value`` on ``device``, with the tensors inside its lists, tuples and dicts (a
    collate_fn's ``{"x": x, "cond": {"label": y}}``): they were left on the host, and the
    model failed on the device with an error naming neither the batch nor the argument."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor) or hasattr(value, "batch_sizes"):  # a PackedSequence
        return value.to(device)
    # plain containers only: a class of the user's keeps its type and is theirs to move
    if type(value) is dict:
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return value._make(_to(v, device) for v in value)
    if type(value) in (tuple, list):
        return type(value)(_to(v, device) for v in value)
    return value


def _first_size(values: Iterable[Any]) -> int | None:
    return next((s for s in map(_size, values) if s is not None), None)


def as_call(batch: Any, device: torch.device | None = None) -> Call:
    """The arguments one batch stands for: a dict by name, a tuple or list positionally,
    anything else as the single positional argument.

    Example:
        >>> as_call({"x": torch.zeros(3, 2)}).kwargs["x"].shape, as_call(torch.zeros(3)).size
        (torch.Size([3, 2]), 3)
    """
    if isinstance(batch, Mapping):
        kwargs = {k: _to(v, device) for k, v in batch.items()}
        return Call((), kwargs, _first_size(kwargs.values()))
    if isinstance(batch, tuple | list) and not hasattr(batch, "_fields"):  # not a namedtuple
        args = tuple(_to(v, device) for v in batch)
        return Call(args, {}, _first_size(args))
    value = _to(batch, device)
    return Call((value,), {}, _size(value))


def describe(call: Call) -> str:
    """The arguments of a batch in words, for error messages.

    Example:
        >>> describe(Call((torch.zeros(2),), {"y": torch.zeros(2)}))
        "1 positional and keywords 'y'"
    """
    parts = [f"{len(call.args)} positional"] if call.args else []
    if call.kwargs:
        parts.append("keywords " + ", ".join(map(repr, sorted(call.kwargs))))
    return " and ".join(parts) or "no arguments"


def with_transform(call: Call, transform: Transform | None) -> Call:
    """Applies ``transform`` to a batch: a callable transforms the first positional argument
    (or ``x`` when the batch is passed by name); a dict maps argument names or positional
    indices to callables.

    Example:
        >>> c = with_transform(Call((torch.ones(2), torch.zeros(2))), {1: lambda t: t + 5})
        >>> c.args[1].tolist()
        [5.0, 5.0]
    """
    if transform is None:
        return call
    fns = transform.values() if isinstance(transform, Mapping) else [transform]
    if not all(callable(fn) for fn in fns):
        raise TypeError(
            "transform must be a function of a batch tensor, a dict of them by argument name "
            f"or position, or None; got {transform!r}"
        )
    if not isinstance(transform, Mapping):
        if call.args:
            transform = {0: transform}
        elif "x" in call.kwargs:
            transform = {"x": transform}
        else:
            raise ValueError(
                "transform= applies to the first positional argument or to 'x', and this batch "
                f"has neither (keywords {sorted(call.kwargs)}): pass transform={{name: fn}}"
            )
    args, kwargs = list(call.args), dict(call.kwargs)
    for key, fn in transform.items():
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(args):
            args[key] = fn(args[key])
        elif isinstance(key, str) and key in kwargs:
            kwargs[key] = fn(kwargs[key])
        else:
            raise ValueError(
                f"transform= names argument {key!r}, which the batch does not have: it has "
                f"{describe(call)} arguments"
            )
    return Call(tuple(args), kwargs, call.size)
