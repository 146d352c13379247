"""The user's own batches (a list, a ``DataLoader``, a function returning an iterator),
re-iterated every epoch.

A ``DataLoader`` that has no generator of its own draws its sampler's order and its
workers' seeds from the global RNG, which a checkpoint records; a loader or sampler given
``generator=`` draws them from that generator, whose state ``fit`` records beside it
(:meth:`IterableBatches.generator_states`, found by :func:`own_generators`). What no
checkpoint holds (persistent workers' own draws, a generator that a batch function's
fresh loaders share) makes a resumed pass say so with a warning.
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


def own_generators(source: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` s a ``DataLoader`` (or any object with ``generator`` /
    ``sampler`` attributes) draws its order and its workers' base seed from instead of the
    global RNG, each once, in a fixed order (the loader's, then its samplers' outwards in).

    Example:
        >>> data = torch.utils.data.TensorDataset(torch.zeros(4))
        >>> g = torch.Generator()
        >>> [x is g for x in own_generators(torch.utils.data.DataLoader(data, generator=g))]
        [True]
        >>> own_generators(torch.utils.data.DataLoader(data, shuffle=True))
        []
    """
    found: list[torch.Generator] = []
    owners = [source] + [sampler for _, sampler in _index_samplers(source)]
    for owner in owners:
        generator = getattr(owner, "generator", None)
        # shuffle=True hands the loader's own generator to its RandomSampler: one stream
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _states(generators: list[torch.Generator]) -> list[torch.Tensor]:
    return [g.get_state() for g in generators]


def _set_states(generators: list[torch.Generator], states: list[torch.Tensor]) -> None:
    for generator, state in zip(generators, states, strict=True):
        generator.set_state(state)


def _same_states(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


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
    """An iterator that :meth:`IterableBatches.peek` started, with the random states (the
    global RNG's and the source's own generators') from before and after it was made and
    read once."""

    batches: Iterator[Any]
    before: dict[str, Any]
    after: dict[str, Any]
    generators_before: list[torch.Tensor]
    generators_after: list[torch.Tensor]


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
        # Whether a checkpoint's states of the source's own generators were put back (a
        # resumed pass from them is the uninterrupted run's), and why not where refused.
        self._restored = False
        self._not_restored: str | None = None
        # A batch function's last loader's own generators, and whether its loaders share one
        # (whose state no checkpoint holds: each call's loader is a new object).
        self._made_generators: list[torch.Generator] = []
        self._shared_generator: str | None = None

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
        generators = own_generators(self.source)
        generators_before = _states(generators)
        try:
            batches = self._fresh()
            first = next(batches, None)
            after, generators_after = global_rng_state(), _states(generators)
        finally:
            set_global_rng_state(before)
            _set_states(generators, generators_before)
        if first is None:
            raise ValueError("data yields no batches")
        chained = itertools.chain([first], batches)
        self._peeked = _Peeked(chained, before, after, generators_before, generators_after)
        return self._first(first)

    def generator_states(self) -> list[torch.Tensor]:
        """The states (``torch.Generator.get_state()``, uint8 tensors) of the generators of
        the source's own (:func:`own_generators`) as they are now: taken at an epoch's start,
        they redraw its order on resume (:meth:`restore_generator_states`).

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> loader = torch.utils.data.DataLoader(range(4), shuffle=True, generator=g)
            >>> batches = IterableBatches(loader)
            >>> states = batches.generator_states()
            >>> first = [call.args[0].item() for call in batches]
            >>> batches.restore_generator_states(states)
            >>> [call.args[0].item() for call in batches] == first
            True
        """
        return _states(own_generators(self.source))

    def restore_generator_states(self, states: list[torch.Tensor] | None) -> None:
        """Puts back the states :meth:`generator_states` gave (read from a checkpoint), so
        that the next pass draws the order the recorded one drew. None (a checkpoint written
        before they were recorded) leaves the generators as they are, as does a list that
        does not fit them (the data changed since): a resumed pass then warns."""
        if states is None:
            return
        generators = own_generators(self.source)
        try:
            states = [s.cpu() for s in states]  # a checkpoint loaded onto the GPU
            for generator, state in zip(generators, states, strict=True):
                torch.Generator(generator.device).set_state(state)  # a throwaway: all or none
        except (ValueError, RuntimeError, TypeError, AttributeError):
            self._not_restored = (
                f"the checkpoint recorded {len(states)} generator state(s) of the data and it "
                f"has {len(generators)} generator(s) of its own now (or of another kind)"
            )
            return
        _set_states(generators, states)
        self._restored = True

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
        if isinstance(self.source, Iterable):
            return iter(self.source)
        made = self.source()
        generators = own_generators(made)
        if any(g is h for g in generators for h in self._made_generators):
            self._shared_generator = own_generator(made)
        self._made_generators = generators
        return iter(made)

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
        if peeked is None:
            return self._fresh()
        _set_states(own_generators(self.source), peeked.generators_after)
        return peeked.batches

    def epoch(self, skip: int = 0) -> Iterator[Call]:
        """One pass over the batches. The iterator is made and ``skip`` batches are read
        now, not at the first batch, so a resume that restores the RNG state of the epoch's
        start reads them with the same random numbers (a ``DataLoader``'s shuffle).

        A pass that :meth:`peek` started but that begins from other random states, or
        inside the epoch (a resume restored a checkpoint's states), warns where the
        restored states leave out what the source draws: a generator of its own whose
        state was not restored (:meth:`restore_generator_states`), persistent workers, a
        generator that a batch function's loaders share. Every batch's arguments must be of
        the kinds the first one has."""
        if self._one_shot and self._passes > 0:
            raise ValueError(
                "data is an iterator and was used up after one pass: pass a list, a "
                "DataLoader or a function that returns a fresh iterator for each epoch"
            )
        self._passes += 1
        peeked, self._peeked = self._peeked, None
        generators = own_generators(self.source)
        if (
            peeked is not None
            and skip == 0
            and same_rng_state(global_rng_state(), peeked.before)
            and _same_states(_states(generators), peeked.generators_before)
        ):
            batches = peeked.batches  # its draws made now, as a fresh iterator's would be
            set_global_rng_state(peeked.after)
            _set_states(generators, peeked.generators_after)
        else:
            batches = self._fresh()
            if peeked is not None or skip > 0:
                self._warn_unrecorded()
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
        if where is not None and not self._restored:
            why = self._not_restored or (
                "the checkpoint does not hold its state (written before pyro-gen recorded it)"
            )
            message = (
                f"data ({name}) draws its order from {where}, and {why}: this resumed pass is "
                "not the one the uninterrupted run made, nor are the batches after it. Pass "
                "the data the checkpoint was written with, or train into a fresh "
                "checkpoint_dir, whose checkpoints hold it, to resume exactly"
            )
        elif self._shared_generator is not None:
            message = (
                f"data (the function {getattr(self.source, '__name__', name)}) returns loaders "
                f"that share {self._shared_generator}, whose state a checkpoint cannot hold "
                "(each call's loader is a new object): this resumed pass is not the one the "
                "uninterrupted run made. Pass the DataLoader itself, or give each call's "
                "loader its own seeded generator, to resume exactly"
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
