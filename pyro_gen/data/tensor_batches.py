"""Shuffled minibatches of tensor datasets held whole on the training device.

The data are moved to the device once and sliced there, so there is no per-batch
host-to-device copy; the shuffle order is drawn from the global torch RNG on that device,
which makes it part of the RNG state a checkpoint records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from pyro_gen.data.batch_call import Call, _first_size, _to


def refuse_numpy_datasets(data: tuple | Mapping) -> None:
    """A numpy array in a tuple or dict of datasets was passed whole to every step as a
    constant (only tensors are sliced): ``(x_numpy,)`` became 100 full-data steps an epoch
    whatever the batch size, ``(x_numpy, y)`` paired all of x with 4 labels, and
    ``DeviceBatches({"x": x, "y": y_numpy}, 4)`` gave all of y with every 4 rows of x.

    Example:
        >>> refuse_numpy_datasets((torch.zeros(3), np.float32(2.0)))  # a constant passes
    """
    items = data.items() if isinstance(data, Mapping) else enumerate(data)
    for key, value in items:
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise TypeError(
                f"data[{key!r}] is a numpy array of shape {value.shape}, which would be passed "
                f"whole to every step (only tensors are split into batches): pass "
                f"torch.as_tensor(data[{key!r}]) in the model's dtype"
            )


class TensorBatches:
    """Shuffled minibatches of tensor datasets held whole on the training device.

    Args:
        args: positional datasets; tensors share their first dimension (examples).
        kwargs: named datasets, likewise; non-tensor values are passed unchanged.
        batch_size: examples per batch.
        shuffle: draw a fresh permutation at every pass.
        drop_last: skip the final incomplete batch.
        device: where the data should live; defaults to where it already is.
    """

    def __init__(
        self,
        args: tuple = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        kwargs = dict(kwargs or {})
        refuse_numpy_datasets(tuple(args))
        refuse_numpy_datasets(kwargs)
        device = torch.device(device) if device is not None else None
        self.args = tuple(_to(v, device) for v in args)
        self.kwargs = {k: _to(v, device) for k, v in kwargs.items()}
        tensors = {
            (f"argument {i}" if isinstance(i, int) else repr(i)): t
            for i, t in [*enumerate(self.args), *self.kwargs.items()]
            if isinstance(t, torch.Tensor)
        }
        if not tensors:
            raise ValueError("data holds no tensor: pass a tensor, a tuple or dict of tensors")
        for name, t in tensors.items():
            if t.dim() == 0:  # checked before any size is read: a 0-dim tensor has none
                raise ValueError(
                    f"data tensors need a first dimension that indexes examples; {name} is a "
                    "0-dim tensor: give one example as x.reshape(1), or pass a value that is "
                    "not data as the model's own argument"
                )
        sizes = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all tensors must share their first dimension, got sizes {sizes}")
        self.num_examples = next(iter(sizes.values()))
        if self.num_examples == 0:
            raise ValueError("data has no examples (its first dimension is 0)")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        if len(self) == 0:
            raise ValueError(
                f"drop_last with batch_size={batch_size} leaves no batch of the "
                f"{self.num_examples} examples: lower batch_size"
            )

    @property
    def device(self) -> torch.device:
        return next(t for t in [*self.args, *self.kwargs.values()] if torch.is_tensor(t)).device

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def _take(self, index: torch.Tensor | slice) -> Callable[[Any], Any]:
        def take(t: Any) -> Any:
            if not torch.is_tensor(t):
                return t
            return t[index] if isinstance(index, slice) else t.index_select(0, index)

        return take

    def peek(self) -> Call:
        """The first batch in data order, drawing no random numbers."""
        return next(self._calls(None, 0))

    def epoch(self, skip: int = 0) -> Iterator[Call]:
        """One pass. Its shuffle order is drawn now, not at the first batch, so a resume
        that restores the RNG state of the epoch's start gets the same order; ``skip``
        batches are then left out (resuming mid-epoch)."""
        order = torch.randperm(self.num_examples, device=self.device) if self.shuffle else None
        return self._calls(order, skip)

    def _calls(self, order: torch.Tensor | None, skip: int) -> Iterator[Call]:
        for i in range(skip, len(self)):
            rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
            take = self._take(rows if order is None else order[rows])
            args = tuple(map(take, self.args))
            kwargs = {k: take(v) for k, v in self.kwargs.items()}
            yield Call(args, kwargs, _first_size([*args, *kwargs.values()]))

    def __iter__(self) -> Iterator[Call]:
        return self.epoch()
