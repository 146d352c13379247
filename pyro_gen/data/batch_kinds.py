"""Telling batches apart by the kinds of their arguments, so that a batch whose arguments
differ from the first batch's (a collate_fn that returns a numpy array for some batches) is
refused by name rather than failing deep inside the model."""

from __future__ import annotations

from typing import Any

import torch

from pyro_gen.data.batch_call import Call


def _kind(value: Any) -> str:
    """What a batch argument is, for telling batches apart: a tensor (any subclass), else
    its type's name."""
    if torch.is_tensor(value):
        return "Tensor"
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _kinds(call: Call) -> dict[int | str, str]:
    """Each argument's kind, by position or name; None values (an optional argument left
    out, as labels are in semi-supervised batches) are not counted."""
    named: list[tuple[int | str, Any]] = [*enumerate(call.args), *call.kwargs.items()]
    return {k: _kind(v) for k, v in named if v is not None}


def _check_kinds(first: dict[int | str, str], call: Call, index: int) -> None:
    """Refuses batch ``index`` when an argument is of another kind than in the first batch
    (a collate_fn that returns a numpy array or a list for some batches): the model would
    fail deep inside with an error naming neither the batch nor the argument."""
    for key, kind in _kinds(call).items():
        if key in first and first[key] != kind:
            where = f"argument {key}" if isinstance(key, int) else f"argument {key!r}"
            raise TypeError(
                f"batch {index} of data has {where} a {kind}, where batch 0 has a "
                f"{first[key]}: every batch must hold the same kinds of values (have the "
                "DataLoader's collate_fn or your batch function return tensors, e.g. "
                "torch.as_tensor)"
            )
