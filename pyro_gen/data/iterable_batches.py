"""The user's own batches (a list, a ``DataLoader``, a function returning an iterator),
re-iterated every epoch.

A ``DataLoader`` that has no generator of its own draws its sampler's order and its
workers' seeds from the global RNG, which a checkpoint records; a loader or sampler given
``generator=`` draws from a state no checkpoint holds, and a pass that follows a restored
state says so with a warning (:func:`own_generator` finds such a generator).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import SubsetRandomSampler

from pyro_gen.data.batch_call import Call, as_call
from pyro_gen.data.batch_kinds import _check_kinds, _kinds
from pyro_gen.data.random_state import global_rng_state, same_rng_state, set_global_rng_state


def _index_samplers(source: Any) -> list[tuple[str, Any]]:
    """The samplers a ``DataLoader`` draws its indices through, named as the user set them:
    its ``sampler`` and ``batch_sampler``, and the samplers inside those (a ``BatchSampler``
    wraps one, also when given as ``sampler=`` with ``batch_size=None``, the recipe for
    indexing a ``TensorDataset`` a batch at a time)."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for name in ("sampler", "batch_sampler"):
        owner = getattr(source, name, None)
        while owner is not None and id(owner) not in seen:
            seen.add(id(owner))
            found.append((name, owner))
            owner, name = getattr(owner, "sampler", None), f"{name}'s sampler"
    return found


def own_generator(source: Any) -> str | None:
    """Where a ``DataLoader`` (or any object with ``generator`` / ``sampler`` attributes)
    draws random numbers from a ``torch.Generator`` of its own rather than the global RNG,
    in words; None when it has none.

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.zeros(4))
        >>> own_generator(torch.utils.data.DataLoader(data, shuffle=True)) is None
        True
        >>> own_generator(torch.utils.data.DataLoader(data, generator=torch.Generator()))
        'its generator= argument'
        >>> sampler = torch.utils.data.RandomSampler(data, generator=torch.Generator())
        >>> batches = torch.utils.data.BatchSampler(sampler, 2, drop_last=False)
        >>> own_generator(torch.utils.data.DataLoader(data, batch_size=None, sampler=batches))
        "its sampler's sampler's generator"
    """
    if isinstance(getattr(source, "generator", None), torch.Generator):
        return "its generator= argument"
    for name, sampler in _index_samplers(source):
        if isinstance(getattr(sampler, "generator", None), torch.Generator):
            return f"its {name}'s generator"
    return None


@dataclass
class _Peeked:
    """An iterator that :meth:`IterableBatches.peek` started, with the random states from
    before and after it was made and read once."""

    batches: Iterator[Any]
    before: dict[str, Any]
    after: dict[str, Any]


class IterableBatches:
    """The user's own batches, re-iterated every epoch.

    Args:
        source: an iterable (list, ``DataLoader``, ...), a one-shot iterator (one pass
            only), or a function returning a fresh iterator each time it is called.
        device: where tensors (and packed sequences) in each batch are moved.
    """

    def __init__(self, source: Any, device: torch.device | str | None = None) -> None:
        self.source = source
        self.device = torch.device(device) if device is not None else None
        self._one_shot = isinstance(source, Iterator)
        self._passes = 0
        self._peeked: _Peeked | None = None
        self._first_kinds: dict[int | str, str] | None = None  # batch 0's, once read
        self._warned = False

    def __len__(self) -> int:
        if callable(self.source) and not isinstance(self.source, Iterable):
            raise TypeError("a batch function has no length")
        return len(self.source)

    @property
    def num_examples(self) -> int | None:
        """The examples an epoch draws its batches from: a ``DataLoader``'s dataset, or the
        part of it a ``SubsetRandomSampler`` picks (a train split of one dataset, as torch's
        recipe makes it); None where the source does not say."""
        dataset = getattr(self.source, "dataset", None)  # a DataLoader
        # the split, not the whole dataset: a model with the split's size was warned that
        # its batches came from all of the dataset's examples, and told to give that size
        subsets = [s for _, s in _index_samplers(self.source) if isinstance(s, SubsetRandomSampler)]
        try:
            if subsets:
                return len(subsets[0].indices)
            return len(dataset) if dataset is not None else None
        except TypeError:
            return None

    def peek(self) -> Call:
        """The first batch, read so that training still follows the user's own loop: the
        user's batch function is called (an iterable iterated) once per epoch, and the same
        random numbers are drawn.

        A one-shot iterator keeps the batch for the pass that follows. Otherwise the
        iterator made here is kept for the first pass, and the random states are put back
        as they were: making and reading it may have drawn random numbers (a
        ``DataLoader``'s base seed and shuffle order, a generator's own shuffle), which the
        first pass takes up if it starts from the same states (as ``fit`` does, with
        nothing drawn in between); if not (a resume restored other states, or skips
        batches), the pass makes a fresh iterator instead.
        """
        if self._one_shot:
            first = next(self.source, None)
            if first is None:
                raise ValueError("data is an iterator that yields no batches")
            self.source = itertools.chain([first], self.source)
            return self._first(first)
        before = global_rng_state()
        try:
            batches = self._fresh()
            first = next(batches, None)
            after = global_rng_state()
        finally:
            set_global_rng_state(before)
        if first is None:
            raise ValueError("data yields no batches")
        self._peeked = _Peeked(itertools.chain([first], batches), before, after)
        return self._first(first)

    def release(self) -> None:
        """Drops the pass :meth:`peek` started and kept, if no pass took it: a caller that
        is done, or gives up before its first pass (an error), lets a ``DataLoader``'s
        iterator and its worker processes go now, not when the error or this object goes."""
        self._peeked = None

    def _first(self, batch: Any) -> Call:
        call = as_call(batch, self.device)
        self._first_kinds = _kinds(call)
        return call

    def _fresh(self) -> Iterator[Any]:
        return iter(self.source if isinstance(self.source, Iterable) else self.source())

    @property
    def makes_a_pass_per_read(self) -> bool:
        """Whether each pass costs a call of the user's function or uses up their one-shot
        iterator (rather than re-iterating a list or a ``DataLoader``)."""
        return self._one_shot or not isinstance(self.source, Iterable)

    def take_peeked(self) -> Iterator[Any]:
        """The user's batches of the pass :meth:`peek` started, from its first, for a
        consumer that makes its own pass of them whatever the random state is by then
        (held-out data checked before training and scored after it), so that the peek
        costs no extra call of the user's function and no batch of their iterator. After
        it, or without a peek, a fresh pass (a one-shot iterator has none: it is refused).
        """
        if self._one_shot:
            if self._passes > 0:
                raise ValueError(
                    "data is an iterator and was used up after one pass: pass a list, a "
                    "DataLoader or a function that returns a fresh iterator for each pass"
                )
            self._passes += 1
            return self.source
        peeked, self._peeked = self._peeked, None
        return peeked.batches if peeked is not None else self._fresh()

    def epoch(self, skip: int = 0) -> Iterator[Call]:
        """One pass over the batches. The iterator is made and ``skip`` batches are read
        now, not at the first batch, so a resume that restores the RNG state of the epoch's
        start reads them with the same random numbers (a ``DataLoader``'s shuffle).

        A pass that :meth:`peek` started but that begins from another random state, or
        inside the epoch (a resume restored a checkpoint's state), warns when the source
        draws from a generator of its own, which the restored state does not include.
        Every batch's arguments must be of the kinds the first one has."""
        if self._one_shot and self._passes > 0:
            raise ValueError(
                "data is an iterator and was used up after one pass: pass a list, a "
                "DataLoader or a function that returns a fresh iterator for each epoch"
            )
        self._passes += 1
        peeked, self._peeked = self._peeked, None
        if peeked is not None and skip == 0 and same_rng_state(global_rng_state(), peeked.before):
            batches = peeked.batches  # its draws made now, as a fresh iterator's would be
            set_global_rng_state(peeked.after)
        else:
            if peeked is not None or skip > 0:
                self._warn_unrecorded()
            batches = self._fresh()
        for _ in itertools.islice(batches, skip):
            pass
        return self._checked(batches, skip)

    def _checked(self, batches: Iterator[Any], start: int) -> Iterator[Call]:
        # A while loop, not a for loop, so that the pass is held by the local alone (not
        # by the loop's own iterator): a refused batch's error keeps this frame in its
        # traceback, and a DataLoader's workers should end now, not when the error goes.
        index, end = start, object()
        while (batch := next(batches, end)) is not end:
            call = as_call(batch, self.device)
            if self._first_kinds is None:
                self._first_kinds = _kinds(call)
            try:
                _check_kinds(self._first_kinds, call, index)
            except TypeError:
                del batches, batch
                raise
            yield call
            index += 1

    def _warn_unrecorded(self) -> None:
        if self._warned:
            return
        name = type(self.source).__name__
        where = own_generator(self.source)
        if where is not None:
            message = (
                f"data ({name}) draws its order from {where}, whose state a checkpoint does "
                "not hold (it records the global random state): this resumed pass is not the "
                "one the uninterrupted run made, nor are the batches after it. Leave "
                "generator= unset so that the shuffle draws from the global RNG, which "
                "checkpoints record, to resume exactly"
            )
        elif getattr(self.source, "persistent_workers", False):
            # Its shuffle resumes exactly; what its workers draw themselves may not.
            message = (
                f"data ({name}) has persistent_workers=True: its workers' random states "
                "carry over from epoch to epoch, and a checkpoint does not hold them, so if "
                "the dataset draws random numbers in them (augmentation, noise) this resumed "
                "run's batches differ from the uninterrupted run's. persistent_workers=False "
                "seeds the workers from the global RNG each epoch and resumes exactly"
            )
        else:
            return
        self._warned = True
        warnings.warn(message, stacklevel=2)

    def __iter__(self) -> Iterator[Call]:
        return self.epoch()
