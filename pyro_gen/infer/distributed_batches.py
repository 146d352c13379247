"""Each rank's share of an epoch's batches in data-parallel training (see
:mod:`pyro_gen.infer.distributed`): a combined tensor batch split by rank, the user's own
batches dealt out in turn."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch

from pyro_gen.data.batching import Call, IterableBatches, TensorBatches, as_call, batch_calls


class ShardedBatches:
    """This rank's batches of an epoch, each with the examples in the combined batch.

    Args:
        data: any data form :func:`~pyro_gen.data.batching.batch_calls` takes.
        batch_size: examples per process and step (tensor data).
        rank: this process's rank.
        world_size: number of processes.
        device: where this rank's batches go.

    Example:
        >>> x = torch.arange(10.0)  # 2 processes, 2 examples each a step: combined batches of 4
        >>> shards = [ShardedBatches(x, 2, r, 2, torch.device("cpu")) for r in range(2)]
        >>> [len(s) for s in shards]  # 4 + 4 + 2: the last combined batch is shared too
        [3, 3]
    """

    def __init__(
        self, data: Any, batch_size: int, rank: int, world_size: int, device: torch.device
    ) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.inner: TensorBatches | IterableBatches
        self.inner = batch_calls(data, batch_size * world_size, shuffle=True, device=device)
        if isinstance(self.inner, TensorBatches):
            if self.inner.num_examples < world_size:
                raise ValueError(
                    f"data has {self.inner.num_examples} examples, fewer than the "
                    f"{world_size} processes training on it: use fewer processes"
                )
            self._sampler = None
        else:  # the user's batches, moved to the device only on the rank that takes them
            self.inner = IterableBatches(data)
            loader_sampler = getattr(data, "batch_sampler", None)
            sampler = getattr(data, "sampler", None)
            sampler = getattr(loader_sampler, "sampler", sampler)
            presharded = isinstance(sampler, torch.utils.data.DistributedSampler)
            self._sampler = sampler if presharded else None

    def __len__(self) -> int:
        if isinstance(self.inner, TensorBatches):
            full, rest = divmod(self.inner.num_examples, self.inner.batch_size)
            return full + (rest >= self.world_size)
        if self._sampler is not None:
            return len(self.inner)
        return len(self.inner) // self.world_size

    def peek(self) -> Call:
        """This rank's first batch in data order (for checks), drawing no random numbers."""
        first = self.inner.peek()
        if isinstance(self.inner, TensorBatches):
            return _part(first, self.rank, self.world_size)
        return self._to_device(first)

    def epoch(self, skip: int = 0, number: int = 0) -> Iterator[tuple[Call, int]]:
        """Pass ``number`` (counting from 0): ``(this rank's call, examples in the combined
        batch)`` per step. The order is drawn now, from the current (shared) RNG stream;
        ``skip`` steps are left out (resuming mid-epoch). A last combined batch with fewer
        examples than processes is left out."""
        if self._sampler is not None:
            self._sampler.set_epoch(number)
        if isinstance(self.inner, TensorBatches):
            return self._tensor_epoch(self.inner.epoch(skip=skip))
        if self._sampler is not None:
            return self._presharded_epoch(self.inner.epoch(skip=skip))
        return self._dealt_epoch(self.inner.epoch(skip=skip * self.world_size))

    def _tensor_epoch(self, calls: Iterator[Call]) -> Iterator[tuple[Call, int]]:
        for call in calls:
            size = call.size if call.size is not None else self.world_size
            if size < self.world_size:
                return
            yield _part(call, self.rank, self.world_size), size

    def _presharded_epoch(self, calls: Iterator[Call]) -> Iterator[tuple[Call, int]]:
        # A DistributedSampler gives every rank as many examples, so its batches match.
        for call in calls:
            yield self._to_device(call), _count(call) * self.world_size

    def _dealt_epoch(self, calls: Iterator[Call]) -> Iterator[tuple[Call, int]]:
        while True:
            group = list(itertools.islice(calls, self.world_size))
            if len(group) < self.world_size:
                return
            yield self._to_device(group[self.rank]), sum(map(_count, group))

    def _to_device(self, call: Call) -> Call:
        return as_call(dict(call.kwargs) if call.kwargs else list(call.args), self.device)


def _count(call: Call) -> int:
    """Examples in a batch; a batch that does not say counts as one."""
    return call.size if call.size is not None else 1


def _part(call: Call, rank: int, world_size: int) -> Call:
    """Rank ``rank``'s rows of a combined tensor batch (sizes differ by at most one)."""

    def take(v: Any) -> Any:
        if torch.is_tensor(v) and v.dim() > 0:
            return v.tensor_split(world_size)[rank]
        return v

    args = tuple(map(take, call.args))
    kwargs = {k: take(v) for k, v in call.kwargs.items()}
    size = next((t.shape[0] for t in (*args, *kwargs.values()) if torch.is_tensor(t)), None)
    return Call(args, kwargs, size if call.size is not None else None)
