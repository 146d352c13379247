"""Minibatches as model arguments, from the data forms users already have.

A Pyro model is called as ``model(*args, **kwargs)``; a batch is therefore a :class:`Call`:
the positional and keyword arguments of one call. :func:`batch_calls` turns any of the
usual data forms into a re-iterable source of calls:

- a tensor: a dataset whose first dimension indexes examples, passed positionally
  (``model(batch)``);
- a tuple of tensors: aligned datasets passed positionally (``model(*batch)``);
- a dict of tensors: aligned datasets passed by name (``model(**batch)``);
- any other iterable (a list of batches, a ``DataLoader``) or a function returning a fresh
  iterator: the batches themselves; a dict is passed by name, a tuple or list
  positionally, anything else (a tensor, a ``PackedSequence``) as the one argument.
- a tuple or dict holding no tensor (``()`` for a model without arguments): the same call
  at every step, :data:`STEPS_PER_EPOCH_WITHOUT_DATA` steps an epoch.

Tensor datasets are moved to the device once and sliced there, so there is no per-batch
host-to-device copy; their shuffle order is drawn from the global torch RNG on that
device, which makes it part of the RNG state a checkpoint records. So is a ``DataLoader``'s
when it has no generator of its own (its sampler and workers' seeds are drawn from the
global RNG); a loader or sampler given ``generator=`` draws from a state no checkpoint
holds, and a pass that follows a restored state says so with a warning.

The pieces live one concept to a module: :mod:`~pyro_gen.data.batch_call` (a batch as
model arguments), :mod:`~pyro_gen.data.tensor_batches`,
:mod:`~pyro_gen.data.iterable_batches` and :mod:`~pyro_gen.data.device_batches`; their
names are re-exported here, where code has always imported them from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from pyro_gen.data.batch_call import Call, Transform, as_call, describe, with_transform
from pyro_gen.data.device_batches import Batch, DeviceBatches
from pyro_gen.data.iterable_batches import IterableBatches, own_generator
from pyro_gen.data.tensor_batches import TensorBatches, refuse_numpy_datasets

__all__ = [
    "STEPS_PER_EPOCH_WITHOUT_DATA",
    "Batch",
    "BatchCalls",
    "Call",
    "DeviceBatches",
    "IterableBatches",
    "TensorBatches",
    "Transform",
    "as_call",
    "batch_calls",
    "describe",
    "own_generator",
    "release_peeked",
    "with_transform",
]

STEPS_PER_EPOCH_WITHOUT_DATA = 100

BatchCalls = TensorBatches | IterableBatches


def release_peeked(batches: Any) -> None:
    """:meth:`IterableBatches.release` for the user's batches that ``batches`` reads (itself,
    or the batches a data-parallel wrapper shards); nothing for tensor data, which holds no
    iterator.

    Example:
        >>> calls = batch_calls([torch.zeros(2)], 8, shuffle=False)
        >>> _ = calls.peek()
        >>> release_peeked(calls)
        >>> calls._peeked is None
        True
    """
    inner = getattr(batches, "inner", batches)
    if isinstance(inner, IterableBatches):
        inner.release()


def batch_calls(
    data: Any,
    batch_size: int,
    *,
    shuffle: bool,
    device: torch.device | str | None = None,
    drop_last: bool = False,
) -> BatchCalls:
    """A re-iterable source of :class:`Call` s from any of the data forms in this module's
    docstring.

    Example:
        >>> calls = batch_calls((torch.zeros(10, 2), torch.arange(10)), 4, shuffle=False)
        >>> [(len(c.args), c.size) for c in calls]
        [(2, 4), (2, 4), (2, 2)]
        >>> [c.kwargs["x"].shape[0] for c in batch_calls([{"x": torch.ones(3)}] * 2, 99,
        ...                                               shuffle=False)]
        [3, 3]
        >>> calls = batch_calls((), 99, shuffle=False)  # model(): the same call, 100 an epoch
        >>> len(calls), {c.args for c in calls}
        (100, {()})
    """
    if isinstance(data, torch.Tensor):
        return TensorBatches(
            (data,), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, device=device
        )
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        raise TypeError(
            f"data is a {type(data).__name__}, which is one batch: pass a list of batches "
            "(e.g. [data]) or a function returning an iterator of batches"
        )
    if isinstance(data, tuple | Mapping):
        refuse_numpy_datasets(data)
    if isinstance(data, tuple | Mapping) and not any(
        map(torch.is_tensor, data.values() if isinstance(data, Mapping) else data)
    ):
        # No dataset to slice (a model of an unnormalized density, or one that holds its own
        # data): every step is the same call, as Pyro's ``svi.step(*data)``. With no pass
        # over examples to mark, an epoch is a fixed number of steps, so that the history,
        # evaluation and checkpoints come at that pace rather than after every step.
        return IterableBatches([data] * STEPS_PER_EPOCH_WITHOUT_DATA, device=device)
    if isinstance(data, tuple):
        return TensorBatches(
            data, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, device=device
        )
    if isinstance(data, Mapping):
        return TensorBatches(
            (), data, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, device=device
        )
    if isinstance(data, np.ndarray):  # iterable, but over rows: each would be one "batch"
        raise TypeError(
            f"data is a numpy array of shape {data.shape}: pass a tensor, e.g. "
            "torch.as_tensor(data).float() (the model's dtype)"
        )
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Iterable):
        raise TypeError(
            f"data is a {type(data).__name__}, which holds single examples: pass "
            "torch.utils.data.DataLoader(data, batch_size=..., shuffle=True), or its tensors"
        )
    if isinstance(data, Iterable) or callable(data):
        return IterableBatches(data, device=device)
    raise TypeError(
        f"data of type {type(data).__name__} is not a tensor, a tuple or dict of tensors, an "
        "iterable of batches, or a function returning an iterator of batches (for a model "
        "that takes no arguments pass data=())"
    )
