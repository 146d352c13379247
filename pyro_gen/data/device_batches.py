"""Shuffled minibatches of one tensor (or a tuple or dict of aligned tensors) held on a
device, as the batches themselves rather than model arguments."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from pyro_gen.data.tensor_batches import TensorBatches

Batch = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


class DeviceBatches:
    """Shuffled minibatches of one tensor (or a tuple or dict of aligned tensors) held on a
    device, each batch of the form given: a tensor, a tuple (``for x, y in batches:
    svi.step(x, y)``, as over a ``TensorDataset``) or a dict.

    Kept for code that wants the batches themselves rather than model arguments.

    Example:
        >>> batches = DeviceBatches({"x": torch.zeros(10, 2), "y": torch.arange(10)}, 4)
        >>> [b["x"].shape[0] for b in batches]
        [4, 4, 2]
        >>> [y.tolist() for _, y in DeviceBatches((torch.zeros(5, 2), torch.arange(5)), 3,
        ...                                       shuffle=False)]
        [[0, 1, 2], [3, 4]]
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
        if isinstance(data, Mapping):
            self._form, args, kwargs = "dict", (), data
        elif isinstance(data, tuple):  # aligned tensors, as a TensorDataset's
            self._form, args, kwargs = "tuple", data, None
        else:
            self._form, args, kwargs = "tensor", (data,), None
        if self._form != "tensor" and not data:
            raise ValueError(f"data is an empty {self._form}: pass at least one tensor")
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
            if self._form == "dict":
                yield call.kwargs
            elif self._form == "tuple":
                yield call.args
            else:
                yield call.args[0]
