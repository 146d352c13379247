"""Code run as if it left no trace in the tensors that existed before it.

The compiled SVI step runs a model more often than SVI would: a structural check, a probe
of its input checks, a recording, a compilation. Each such run writes, as a forward pass in
training mode does, to buffers such as a batch norm's running statistics; if those writes
stood, the statistics would count runs that are not steps, and training through the
compiled step would differ from SVI's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["UndoWrites"]


class UndoWrites(TorchDispatchMode):
    """Undoes, on exit, what the code run inside wrote to tensors that existed before it
    (buffers such as a batch norm's running statistics, inputs), so that a structural
    check, a probe or a recording leaves the model's state as it was. Writes happen in
    place while the code runs, as they would outside; each written tensor is saved before
    its first write and copied back on exit, errors included. Writes to parameters (leaf
    tensors that require grad) stand: the ones a forward pass makes are data-dependent
    initializations (ActNorm's), which the first run makes as the first step would, and
    which their modules remember having made.

    Example:
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> with UndoWrites():
        ...     _ = bn(torch.randn(8, 2))
        >>> int(bn.num_batches_tracked), bn.running_mean.tolist()
        (0, [0.0, 0.0])
    """

    def __init__(self) -> None:
        super().__init__()
        # Storages made during the run. A storage that existed before stays alive while in
        # use, so no storage made during the run can share its address.
        self._fresh: set[int] = set()
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return self._run(func, args, kwargs or {})

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        with torch.no_grad():  # the latest saved first, for overlapping views
            for target, saved in reversed(self._saved.values()):
                target.copy_(saved)
        self._saved.clear()

    def _run(self, func: Any, args: tuple, kwargs: dict) -> Any:
        for t in _written(func, args, kwargs):
            if _state(t) and id(t) not in self._saved and _storage(t) not in self._fresh:
                self._saved[id(t)] = (t, t.clone())
        out = func(*args, **kwargs)
        # An output is new memory unless it is a view of an input (a slice of a buffer).
        used = {_storage(t) for t in pytree.tree_leaves((args, kwargs)) if _plain(t)}
        for t in pytree.tree_leaves(out):
            if _plain(t) and _storage(t) not in used:
                self._fresh.add(_storage(t))
        return out


def _plain(t: Any) -> bool:
    # Tensor subclasses (the fake tensors of a recording) hold no state to put back.
    return type(t) in (torch.Tensor, torch.nn.Parameter)


def _state(t: torch.Tensor) -> bool:
    """A tensor whose writes are undone: not a parameter (see :class:`UndoWrites`)."""
    return _plain(t) and not (t.is_leaf and t.requires_grad)


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage (e.g. sparse): never fresh
        return -1


# Ops that update a batch norm's running statistics without declaring the write in their
# schema: op -> (positions of the running mean and variance, position of the training flag).
_UNDECLARED_WRITES = {
    torch.ops.aten.native_batch_norm.default: ((3, 4), 5),
    torch.ops.aten.cudnn_batch_norm.default: ((3, 4), 5),
    torch.ops.aten.miopen_batch_norm.default: ((3, 4), 5),
    torch.ops.aten.batch_norm_update_stats.default: ((1, 2), None),
}


def _written(func: Any, args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    """The tensors an op writes to (in-place and ``out=`` arguments, and the running
    statistics of batch norm ops, whose schemas do not say that they write them)."""
    undeclared = _UNDECLARED_WRITES.get(func)
    if undeclared is not None:
        positions, training = undeclared
        if training is None or (len(args) > training and args[training]):
            yield from (args[i] for i in positions if torch.is_tensor(args[i]))
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        for t in value if isinstance(value, (list, tuple)) else (value,):
            if torch.is_tensor(t):
                yield t
