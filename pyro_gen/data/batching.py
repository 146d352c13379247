"""Minibatches sliced from a dataset that lives whole on the training device."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

Batch = torch.Tensor | dict[str, torch.Tensor]


class DeviceBatches:
    """Shuffled minibatches of a dataset held as one tensor on the training device.

    The whole dataset is moved to ``device`` once, at construction; every batch is then
    an index-select on that device, so there is no per-batch host-to-device copy. The
    shuffle order is drawn from the global torch RNG on the data's device, which makes
    it part of the RNG state that :func:`pyro_gen.infer.fit` checkpoints.

    Args:
        data: a tensor whose first dimension indexes examples, or a dict of such tensors
            that share that first dimension (e.g. ``{"x": images, "y": labels}``).
        batch_size: examples per batch.
        shuffle: draw a fresh permutation at every pass.
        drop_last: skip the final incomplete batch.
        device: where the data should live; defaults to where it already is.

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
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        tensors = dict(data) if isinstance(data, Mapping) else {"x": data}
        if not tensors:
            raise ValueError("data is an empty dict: pass at least one tensor")
        sizes = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all tensors must share their first dimension, got sizes {sizes}")
        self._is_dict = isinstance(data, Mapping)
        self.tensors = {n: t if device is None else t.to(device) for n, t in tensors.items()}
        self.num_examples = next(iter(sizes.values()))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = self.num_examples
        order = torch.randperm(n, device=self.device) if self.shuffle else None
        for i in range(len(self)):
            if order is None:
                batch = {
                    k: t[i * self.batch_size : (i + 1) * self.batch_size]
                    for k, t in self.tensors.items()
                }
            else:
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                batch = {k: t.index_select(0, idx) for k, t in self.tensors.items()}
            yield batch if self._is_dict else batch["x"]
