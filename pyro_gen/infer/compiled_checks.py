"""Input checks of a recorded step, run on the device instead of read back every step.

Models check their inputs in Python: ``if (x < 0).any(): raise ValueError(...)``. Recorded
as a tensor program (:mod:`pyro_gen.infer.compiled_recording`), such a check becomes a value
the program returns and that each step would have to read back to the host, which on an
accelerator is one synchronization per check and per step. Here, once per recording, each
value the model read as a bool is *probed*: the model is run once more with that one
answer flipped. If the flipped answer makes the model raise, the read is an input check;
the program then compares it on the device, a failed check skips that step's update as the
non-finite guard does, and the batch is kept on the device so that the model's own error
can be raised, for that batch, when the steps are next read back. Reads whose other answer
does not raise are genuine control flow and stay host reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from pyro_gen.infer.undo_writes import UndoWrites

__all__ = [
    "MAX_PROBES",
    "VALUE_READS",
    "HeldBatch",
    "InputCheckError",
    "failed_checks",
    "first_failed",
    "probe_input_checks",
]

# The ops through which Python reads a tensor's value (bool(t), float(t), t.item()).
VALUE_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)
# Probing costs one eager pass per bool read; past this many reads, none is probed (all
# stay host reads), so a model that reads hundreds of values records in bounded time.
MAX_PROBES = 32


class InputCheckError(ValueError):
    """A batch failed an input check that the compiled step ran on the device; the message
    names the step and carries the model's own error for that batch."""


class _ProbeMode(UndoWrites):
    """Answers reads of tensor values with the real value, except the ``flip``-th bool read
    and any later read of the same tensor (``bool(a or b)`` reads ``a`` twice), which it
    answers with the opposite; its writes are undone as in :class:`UndoWrites`.
    """

    def __init__(self, flip: int = -1) -> None:
        super().__init__()
        self.flip = flip
        self.values: list[Any] = []
        self._flipped: torch.Tensor | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in VALUE_READS:
            with _disable_current_modes():
                value = args[0].item()
            if len(self.values) == self.flip and isinstance(value, bool):
                self._flipped = args[0]
            if self._flipped is not None and args[0] is self._flipped:
                value = not value
            self.values.append(value)
            return value
        return self._run(func, args, kwargs)


def probe_input_checks(run: Callable[[], Any]) -> tuple[list[Any], list[bool]]:
    """The values ``run`` reads from tensors, and which of them are input checks.

    ``run`` is one eager pass of the step; it runs once as it is and once more per bool
    read with that read's answer flipped (at most ``MAX_PROBES``). A read is an input check
    when its flipped answer makes ``run`` raise. Writes to tensors that existed before a run
    are undone after it: probing leaves parameters and buffers as they were.

    Example:
        >>> def run():
        ...     x = torch.tensor([0.5, 2.0])
        ...     if (x < 0).any():
        ...         raise ValueError("x must be non-negative")
        ...     return x.log() if bool(x.max() > 1) else x
        >>> probe_input_checks(run)
        ([False, True], [True, False])
    """
    with _ProbeMode() as mode:
        run()
    values, checks = mode.values, []
    if sum(isinstance(v, bool) for v in values) > MAX_PROBES:
        return values, [False] * len(values)
    for i, value in enumerate(values):
        if not isinstance(value, bool):
            checks.append(False)
            continue
        try:
            with _ProbeMode(flip=i):
                run()
        except Exception:  # noqa: BLE001 - any error of the model's own counts
            checks.append(True)
        else:
            checks.append(False)
    return values, checks


def failed_checks(reads: Sequence[tuple[torch.Tensor, Any]]) -> torch.Tensor:
    """A 0-dim float32 flag, computed on the device: 1 when any checked value differs from
    the value it had when the program was recorded (traced into the program).

    Example:
        >>> x = torch.tensor([0.5, 2.0])
        >>> failed_checks([((x < 0).any(), False)]), failed_checks([((x > 1).any(), False)])
        (tensor(0.), tensor(1.))
    """
    differs = [_differs(t, value).reshape(()) for t, value in reads]
    return torch.stack(differs).any().to(torch.float32)


def _differs(t: torch.Tensor, value: Any) -> torch.Tensor:
    # ``ne`` with a Python bool is the one form TorchScript's tracer cannot take (its alias
    # analysis has no ``ne(Tensor, bool)``), which sent every program with an input check
    # to the slower plain recorded program: compare a bool through logical ops instead.
    if not isinstance(value, bool):
        return torch.ne(t, value)
    truth = t if t.dtype == torch.bool else t != 0
    return truth.logical_not() if value else truth


class HeldBatch:
    """The first batch since the last read-back whose input checks failed on the device:
    its step number and a copy of its tensors, updated without a host read.

    Example:
        >>> held = HeldBatch()
        >>> for step, x in enumerate([torch.ones(2), torch.full((2,), 9.0), torch.zeros(2)]):
        ...     held.note((x > 1).any().float(), [x], step)
        >>> first_failed([held]), held.tensors, first_failed([held])
        ((1, 0), [tensor([9., 9.])], None)
    """

    def __init__(self) -> None:
        self.step: torch.Tensor | None = None  # -1 while no batch failed
        self.tensors: list[torch.Tensor] = []

    @torch.no_grad()
    def note(self, failed: torch.Tensor, tensors: Sequence[torch.Tensor], step: int) -> None:
        """Keeps ``tensors`` as the failing batch if ``failed`` and none failed before."""
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.int64, device=failed.device)
            self.tensors = [torch.empty_like(t) for t in tensors]
        take = (failed > 0) & (self.step < 0)
        self.step = torch.where(take, step, self.step)
        for held, t in zip(self.tensors, tensors):
            held.copy_(torch.where(take, t, held))


def first_failed(held: Sequence[HeldBatch]) -> tuple[int, int] | None:
    """Reads the held batches' step numbers back (one transfer per device) and resets them.

    Returns:
        the earliest failing step and the index in ``held`` of the batch that holds its
        tensors, or None when no batch failed.
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, h in enumerate(held):
        if h.step is not None:
            by_device.setdefault(h.step.device, []).append(i)
    failing = []
    for indices in by_device.values():
        steps = torch.stack([held[i].step for i in indices]).tolist()  # type: ignore[misc]
        failing += [(s, i) for s, i in zip(steps, indices) if s >= 0]
    for indices in by_device.values():
        for i in indices:
            held[i].step.fill_(-1)  # type: ignore[union-attr]
    return min(failing) if failing else None
