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
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pyro_gen.data.random_state import global_rng_state, same_rng_state, set_global_rng_state

Batch = torch.Tensor | dict[str, torch.Tensor]
STEPS_PER_EPOCH_WITHOUT_DATA = 100
Transform = Callable[[Any], Any] | Mapping[int | str, Callable[[Any], Any]]


@dataclass(frozen=True)
class Call:
    """One batch, as the arguments of ``model(*args, **kwargs)``.

    Attributes:
        args: positional arguments.
        kwargs: keyword arguments.
        size: examples in the batch (first dimension of the first tensor), or None when the
            batch does not say.
    """

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int | None = None


def _size(value: Any) -> int | None:
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.dim() > 0 else None
    batch_sizes = getattr(value, "batch_sizes", None)  # a PackedSequence
    if isinstance(batch_sizes, torch.Tensor) and batch_sizes.numel():
        return int(batch_sizes[0])
    return None


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor) or hasattr(value, "batch_sizes"):
        return value.to(device)
    return value


def _first_size(values: Iterable[Any]) -> int | None:
    return next((s for s in map(_size, values) if s is not None), None)


def as_call(batch: Any, device: torch.device | None = None) -> Call:
    """The arguments one batch stands for: a dict by name, a tuple or list positionally,
    anything else as the single positional argument.

    Example:
        >>> as_call({"x": torch.zeros(3, 2)}).kwargs["x"].shape, as_call(torch.zeros(3)).size
        (torch.Size([3, 2]), 3)
    """
    if isinstance(batch, Mapping):
        kwargs = {k: _to(v, device) for k, v in batch.items()}
        return Call((), kwargs, _first_size(kwargs.values()))
    if isinstance(batch, tuple | list) and not hasattr(batch, "_fields"):  # not a namedtuple
        args = tuple(_to(v, device) for v in batch)
        return Call(args, {}, _first_size(args))
    value = _to(batch, device)
    return Call((value,), {}, _size(value))


def describe(call: Call) -> str:
    """The arguments of a batch in words, for error messages.

    Example:
        >>> describe(Call((torch.zeros(2),), {"y": torch.zeros(2)}))
        "1 positional and keywords 'y'"
    """
    parts = [f"{len(call.args)} positional"] if call.args else []
    if call.kwargs:
        parts.append("keywords " + ", ".join(map(repr, sorted(call.kwargs))))
    return " and ".join(parts) or "no arguments"


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
    """
    if isinstance(getattr(source, "generator", None), torch.Generator):
        return "its generator= argument"
    sampler = getattr(source, "sampler", None)
    batch_sampler = getattr(source, "batch_sampler", None)
    for name, owner in [("sampler", sampler), ("batch_sampler", batch_sampler)]:
        if isinstance(getattr(owner, "generator", None), torch.Generator):
            return f"its {name}'s generator"
    inner = getattr(batch_sampler, "sampler", None)
    if inner is not sampler and isinstance(getattr(inner, "generator", None), torch.Generator):
        return "its batch_sampler's sampler's generator"
    return None


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
        device = torch.device(device) if device is not None else None
        self.args = tuple(_to(v, device) for v in args)
        self.kwargs = {k: _to(v, device) for k, v in kwargs.items()}
        sizes = {
            (f"argument {i}" if isinstance(i, int) else repr(i)): t.shape[0]
            for i, t in [*enumerate(self.args), *self.kwargs.items()]
            if isinstance(t, torch.Tensor)
        }
        if not sizes:
            raise ValueError("data holds no tensor: pass a tensor, a tuple or dict of tensors")
        if any(
            isinstance(t, torch.Tensor) and t.dim() == 0
            for t in [*self.args, *self.kwargs.values()]
        ):
            raise ValueError("data tensors need a first dimension that indexes examples")
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
        dataset = getattr(self.source, "dataset", None)  # a DataLoader
        try:
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


def with_transform(call: Call, transform: Transform | None) -> Call:
    """Applies ``transform`` to a batch: a callable transforms the first positional argument
    (or ``x`` when the batch is passed by name); a dict maps argument names or positional
    indices to callables.

    Example:
        >>> c = with_transform(Call((torch.ones(2), torch.zeros(2))), {1: lambda t: t + 5})
        >>> c.args[1].tolist()
        [5.0, 5.0]
    """
    if transform is None:
        return call
    if not isinstance(transform, Mapping):
        if call.args:
            transform = {0: transform}
        elif "x" in call.kwargs:
            transform = {"x": transform}
        else:
            raise ValueError(
                "transform= applies to the first positional argument or to 'x', and this batch "
                f"has neither (keywords {sorted(call.kwargs)}): pass transform={{name: fn}}"
            )
    args, kwargs = list(call.args), dict(call.kwargs)
    for key, fn in transform.items():
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(args):
            args[key] = fn(args[key])
        elif isinstance(key, str) and key in kwargs:
            kwargs[key] = fn(kwargs[key])
        else:
            raise ValueError(
                f"transform= names argument {key!r}, which the batch does not have: it has "
                f"{describe(call)} arguments"
            )
    return Call(tuple(args), kwargs, call.size)


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
