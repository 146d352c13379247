"""What the encoder of :class:`~pyro_gen.vae.autoguide.AutoAmortizedNormal` reads: the
model's floating-point tensor arguments with one row per example, flattened per example and
concatenated."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame


def model_signature(model: Callable[..., Any]) -> inspect.Signature | bool:
    """The model's signature, or False where Python cannot tell it."""
    try:
        return inspect.signature(model)
    except (TypeError, ValueError):
        return False


def bind_arguments(
    signature: inspect.Signature | bool | None, args: tuple, kwargs: dict
) -> dict[int | str, Any]:
    """The model's arguments by parameter name (by position if it takes ``*args``, or when
    ``signature`` is unknown).

    Raises:
        TypeError: the arguments do not fit the model's signature.

    Example:
        >>> def model(x, *rest, y=None, **more): ...
        >>> bind_arguments(inspect.signature(model), (1, 2, 3), {"y": 4, "w": 5})
        {'x': 1, 'rest[0]': 2, 'rest[1]': 3, 'y': 4, 'w': 5}
        >>> bind_arguments(False, (1, 2), {"y": 4})
        {0: 1, 1: 2, 'y': 4}
    """
    if not isinstance(signature, inspect.Signature):
        return {**dict(enumerate(args)), **kwargs}
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        # the model would refuse them too: say so here, not "x was not given" further on
        raise TypeError(
            f"the guide was called with arguments that the model{signature} does not take "
            f"({error}); AutoAmortizedNormal reads the model's own arguments, so call model "
            "and guide with the same ones"
        ) from None
    out: dict[int | str, Any] = {}
    for key, value in bound.arguments.items():
        kind = bound.signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            out.update({f"{key}[{i}]": v for i, v in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[key] = value
    return out


def sized_arguments(arguments: dict[int | str, Any], sizes: Iterable[int]) -> list:
    """Floating-point tensor arguments with one row per example (indices and integer
    labels are left to ``input_fn``).

    Example:
        >>> args = {"x": torch.zeros(5, 2), "idx": torch.arange(5), "c": torch.zeros(3)}
        >>> sized_arguments(args, {5})
        ['x']
    """
    sizes = set(sizes)
    return [
        k
        for k, v in arguments.items()
        if torch.is_tensor(v) and v.is_floating_point() and v.dim() and v.shape[0] in sizes
    ]


def skipped_integer_arguments(arguments: dict[int | str, Any], sizes: Iterable[int]) -> str:
    """What to do about the non-floating tensor arguments with one row per example, which
    the encoder leaves out (counts, indices, labels), or ``""`` if there are none: the
    sentence the "nothing to encode" errors end with, so that data held as a LongTensor of
    counts is named rather than silently missing.

    Example:
        >>> args = {"counts": torch.ones(5, 3, dtype=torch.long), "c": torch.ones(3)}
        >>> print(skipped_integer_arguments(args, {5}))  # doctest: +NORMALIZE_WHITESPACE
        ; the model's argument 'counts', a torch.int64 tensor of shape (5, 3), was left out,
        as the encoder reads floating-point arguments only (integer ones are taken for
        indices or labels): if it is the data to encode, pass counts.float() to model and
        guide, or give input_fn, a function of the model's arguments returning
        counts.float()
    """
    sizes = set(sizes)
    skipped = [
        (k, v)
        for k, v in arguments.items()
        if torch.is_tensor(v) and not v.is_floating_point() and v.dim() and v.shape[0] in sizes
    ]
    if not skipped:
        return ""
    names = " and ".join(
        f"{k!r}, a {v.dtype} tensor of shape {tuple(v.shape)}," for k, v in skipped
    )
    plural = "s" if len(skipped) > 1 else ""
    key = skipped[0][0]
    name = key if isinstance(key, str) else f"args[{key}]"  # by position where unnamed
    return (
        f"; the model's argument{plural} {names} {'were' if plural else 'was'} left out, as "
        f"the encoder reads floating-point arguments only (integer ones are taken for indices "
        f"or labels): if it is the data to encode, pass {name}.float() to model and guide, or "
        f"give input_fn, a function of the model's arguments returning {name}.float()"
    )


def encoder_rows(arguments: dict[int | str, Any], keys: list[int | str]) -> torch.Tensor:
    """Per-example inputs, ``(rows, features)``: the arguments ``keys``, flattened per
    example and concatenated.

    Example:
        >>> args = {"x": torch.zeros(5, 2, 2), "y": torch.ones(5, 1)}
        >>> encoder_rows(args, ["x", "y"]).shape
        torch.Size([5, 5])
    """
    missing = [k for k in keys if arguments.get(k) is None]
    if missing:
        given = [k for k in keys if k not in missing]
        why = (
            f": an argument left out on some calls (labels given for part of the data) "
            f"cannot be an input of the encoder; pass input_fn=lambda *args, **kwargs: "
            f"(rows, features) tensor of {given} alone"
            if given
            else "; pass input_fn=lambda *args, **kwargs: (rows, features) tensor to choose"
        )
        raise ValueError(
            f"AutoAmortizedNormal was built to encode the model arguments "
            f"{keys} but {missing} were not given{why}"
        )
    parts = [arguments[k] for k in keys]
    flat = [p.reshape(p.shape[0], -1).to(parts[0].dtype) for p in parts]
    return flat[0] if len(flat) == 1 else torch.cat(flat, -1)  # no copy for one input


def choose_inputs(
    frame: CondIndepStackFrame, arguments: dict[int | str, Any]
) -> tuple[list[int | str], bool]:
    """The arguments to encode for the data plate ``frame``, and whether they hold the full
    data (to be indexed by the plate's subsample) rather than the minibatch.

    Example:
        >>> from pyro.poutine.indep_messenger import CondIndepStackFrame
        >>> frame = CondIndepStackFrame("data", -1, 4, 0, full_size=100)
        >>> choose_inputs(frame, {"x": torch.zeros(100, 3)})  # the full data: indexed
        (['x'], True)
    """
    full = frame.full_size or frame.size
    keys, index_inputs = sized_arguments(arguments, {frame.size}), False
    if not keys and full != frame.size:
        keys, index_inputs = sized_arguments(arguments, {full}), True
    if not keys:
        raise ValueError(
            f"AutoAmortizedNormal found no floating-point tensor argument of the model "
            f"with first dimension {frame.size} (the size of plate {frame.name!r}) to "
            f"encode; "
            f"pass input_fn=lambda *args, **kwargs: tensor of shape (batch, features)"
            + skipped_integer_arguments(arguments, {frame.size, full})
        )
    return keys, index_inputs
