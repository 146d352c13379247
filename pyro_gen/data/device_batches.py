"""Shuffled minibatches of one tensor (or a dict of aligned tensors) held on a device, as
the batches themselves rather than model arguments."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from pyro_gen.data.tensor_batches import TensorBatches

Batch = torch.Tensor | dict[str, torch.Tensor]


class DeviceBatches:
    """Shuffled minibatches of one tensor (or a dict of aligned tensors) held on a device.

    Kept for code that wants the batches themselves rather than model arguments.

    Example:
        >>> batches = DeviceBatches({"x": torch.zeros(10, 2), "y": torch.arange(10)}, 4)
        >>> [b["x"].shape[0] for b in batches]
        [4, 4, 2]
    """

    def __init__(
        self,
        data: Batch,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self._is_dict = isinstance(data, Mapping)
        if self._is_dict and not data:
            raise ValueError("data is an empty dict: pass at least one tensor")
        args, kwargs = ((), data) if self._is_dict else ((data,), None)
        self._batches = TensorBatches(
            args, kwargs, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, device=device
        )
        self.num_examples = self._batches.num_examples

    @property
    def device(self) -> torch.device:
        return self._batches.device

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[Batch]:
        for call in self._batches:
            yield call.kwargs if self._is_dict else call.args[0]
