"""Where a compiled SVI step's programs stand, kept in a checkpoint so that a resumed run
takes each step on the path the uninterrupted run took (a mixin of
:class:`~pyro_gen.infer.compiled.CompiledSVI`).

Which path a step takes decides its bits: Inductor fuses the recorded program's operations
and rounds in another order than Pyro's own code (1e-8 apart after one step of a small VAE),
while the recorded program as TorchScript or fx runs Pyro's operations one by one. A step
meets a new input signature with one plain Pyro step, records the program at the second,
and compiles it with Inductor at once or after ``compile_after`` steps. A run resumed from a
checkpoint with a fresh step would meet every signature anew: a plain step where the
uninterrupted run replayed its compiled program, and the switch to Inductor ``calls`` steps
late. The checkpoint therefore records, per input signature, what the step had done with
it (seen once; recorded, with its step count and whether compiled; to be recorded again),
and the resumed step, at its first step on that signature, records the program at once (a
recording runs the model on a forked random stream and applies nothing), compiles it if the
uninterrupted run had, continues its count, and applies the program's result, as the
uninterrupted run did. Only the steps that meet a signature for the first time read the
record: the steady-state step does no more work.

The record is plain data (the checkpoint loads with ``weights_only``)::

    {"backend": "inductor", "calls": 12, "rerecorded": False, "fallback": None,
     "seen": [name, ...], "programs": {name: [calls, compiled]}, "stale": [name, ...]}

``name`` is the input signature as text (:func:`signature_name`). A checkpoint without the
record (written before it was kept), a record of another backend, or a signature whose name
a new process does not give again (a non-tensor argument whose ``repr`` holds a memory
address) leaves that step as it was before: programs start afresh.

The step and the checkpoint meet through the Pyro optimizer, which both are given (``fit``
makes the step, then restores the checkpoint, then writes new ones): the step made last
with an optimizer is the one its checkpoints record and restore.
"""

from __future__ import annotations

import weakref
from typing import Any

import pyro.optim

__all__ = [
    "ResumableSteps",
    "compile_record",
    "compile_record_problem",
    "restore_compile_record",
    "signature_name",
]

# The CompiledSVI stepping with each Pyro optimizer, both held weakly: an optimizer a user
# keeps after training must not keep the step's compiled programs alive, and the user's
# optimizer object gets no attribute of ours.
_STEPS: weakref.WeakKeyDictionary[Any, weakref.ref] = weakref.WeakKeyDictionary()


def _step_of(optim: pyro.optim.PyroOptim | None) -> Any:
    ref = _STEPS.get(optim) if optim is not None else None
    return ref() if ref is not None else None


def signature_name(key: tuple) -> str:
    """A step's input signature (:meth:`SignaturePrograms._key`) as text that another
    process gives the same inputs: with the device's kind, not its index (each process of a
    data-parallel run has its own, and rank 0 writes the record every rank restores).

    Example:
        >>> import torch
        >>> def key(device):  # (argument structure, shapes, non-tensor values, grad mode)
        ...     return "spec", (((2,), torch.float32, torch.device(device), False),), (), True
        >>> signature_name(key("cuda:0")) == signature_name(key("cuda:1"))
        True
        >>> signature_name(key("cpu"))
        "('spec', (((2,), torch.float32, 'cpu', False),), (), True)"
    """
    spec, shapes, statics, grad = key
    kinds = tuple((s, dtype, device.type, rg) for s, dtype, device, rg in shapes)
    return repr((spec, kinds, statics, grad))


def compile_record(optim: pyro.optim.PyroOptim | None) -> dict[str, Any] | None:
    """The record of the compiled step that trains with ``optim`` (None when none does).

    Example:
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> optim = pyro.optim.Adam({"lr": 0.1})
        >>> print(compile_record(optim))  # no step trains with it yet
        None
        >>> step = CompiledSVI(lambda: None, lambda: None, optim, backend="fx")
        >>> compile_record(optim) == step.compile_record()  # the step made last with optim
        True
    """
    step = _step_of(optim)
    return None if step is None else step.compile_record()


def restore_compile_record(
    optim: pyro.optim.PyroOptim | None, record: dict[str, Any] | None
) -> None:
    """Hands a checkpoint's record to the compiled step that trains with ``optim`` (made
    before the restore, as ``fit`` makes it); nothing to do when there is none.

    Example:
        >>> restore_compile_record(pyro.optim.Adam({"lr": 0.1}), None)  # no step, no record
    """
    step = _step_of(optim)
    if step is not None:
        step.restore_compile_record(record)


def compile_record_problem(record: Any) -> str | None:
    """What in a checkpoint's record has another type than restoring it reads, or None.

    Example:
        >>> print(compile_record_problem({"backend": "inductor", "calls": "2"}))
        the compiled step's record is not a record of programs
    """

    def names(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(n, str) for n in v)

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if record is None:
        return None
    keys = {"backend", "calls", "rerecorded", "fallback", "seen", "programs", "stale"}
    if not (
        isinstance(record, dict)
        and set(record) == keys
        and isinstance(record["backend"], str)
        and count(record["calls"])
        and isinstance(record["rerecorded"], bool)
        and isinstance(record["fallback"], (str, type(None)))
        and names(record["seen"])
        and names(record["stale"])
        and isinstance(record["programs"], dict)
        and all(
            isinstance(n, str)
            and isinstance(v, (list, tuple))
            and len(v) == 2
            and count(v[0])
            and isinstance(v[1], bool)
            for n, v in record["programs"].items()
        )
    ):
        return "the compiled step's record is not a record of programs"
    return None


class ResumableSteps:
    """Mixin of :class:`~pyro_gen.infer.compiled.CompiledSVI`: :meth:`compile_record`,
    :meth:`restore_compile_record` and what :meth:`_program_for` reads of a restored record.

    Reads and writes the step's ``_programs``, ``_sightings``, ``_stale``, ``_calls``,
    ``_rerecorded``, ``fallback_reason``, ``_resumed``, ``_resumed_stale``, ``backend``,
    ``optim`` and ``_off_from_start``, and calls ``_fall_back``.

    Example:
        A step resumed after the uninterrupted run's second step records its program at
        once, continuing its count, where a fresh step would run Pyro's own step first:

        >>> import pyro
        >>> import pyro.distributions as dist
        >>> import torch
        >>> from pyro_gen.infer.compiled import CompiledSVI
        >>> def model(x):
        ...     loc = pyro.param("loc", torch.zeros(1))
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("x", dist.Normal(loc, 1.0), obs=x)
        >>> first = CompiledSVI(model, lambda x: None, backend="fx")
        >>> _ = first.step(torch.zeros(4)), first.step(torch.zeros(4))
        >>> record = first.compile_record()
        >>> list(record["programs"].values())  # one program: one step, compiled (fx)
        [[1, True]]
        >>> resumed = CompiledSVI(model, lambda x: None, backend="fx")
        >>> resumed.restore_compile_record(record)
        >>> _ = resumed.step(torch.zeros(4))
        >>> [p.calls for p in resumed._programs.values()]
        [2]
    """

    def _serve_checkpoints(self) -> None:
        """Makes this step the one checkpoints of its optimizer record and restore."""
        _STEPS[self.optim] = weakref.ref(self)

    def compile_record(self) -> dict[str, Any]:
        """What the step has done with each input signature (the module's docstring), for
        a checkpoint; signatures of a restored record not met again since are kept as they
        were recorded."""
        name = {key: signature_name(key) for key in self._sightings}
        programs = {name[k]: [p.calls, p.compiled] for k, p in self._programs.items()}
        seen = [name[k] for k in self._sightings if k not in self._programs]
        for n, entry in self._resumed.items():
            if entry is None:
                seen.append(n)
            else:
                programs[n] = list(entry)
        return {
            "backend": self.backend,
            "calls": self._calls,
            "rerecorded": self._rerecorded,
            "fallback": self.fallback_reason,
            "seen": seen,
            "programs": programs,
            "stale": [name[k] for k in self._stale] + sorted(self._resumed_stale),
        }

    def restore_compile_record(self, record: dict[str, Any] | None) -> None:
        """Continues as the step that wrote ``record`` (:meth:`compile_record`): its programs
        are recorded again, each at its first step on its signature, and take up that
        step's count and path. None (a checkpoint written before records were kept), or a
        record of another backend, leaves the step as it is."""
        if record is None or record["backend"] != self.backend or self._off_from_start:
            return
        self._programs.clear()
        self._sightings.clear()
        self._stale.clear()
        self._calls, self._rerecorded = record["calls"], record["rerecorded"]
        self.fallback_reason = None
        self.__dict__.pop("_unannounced", None)
        if record["fallback"] is not None:  # the run that wrote it trained with plain Pyro
            self._fall_back(record["fallback"])
        resumed: dict[str, tuple[int, bool] | None] = dict.fromkeys(record["seen"])
        for n, (calls, compiled) in record["programs"].items():
            resumed[n] = calls, compiled
        self._resumed = resumed
        self._resumed_stale = set(record["stale"]) & set(record["programs"])

    def _take_resumed(self, key: tuple) -> tuple[int, bool | None] | None:
        """What the restored record says of this new input signature, taken out of it: None
        (never seen: a plain step first, as in any run), else the program's count of steps
        and whether it was compiled (None: record it and decide as a fresh recording does,
        for a signature seen once or a program to be recorded again with today's values)."""
        n = signature_name(key)
        if n not in self._resumed:
            return None
        entry = self._resumed.pop(n)
        if n in self._resumed_stale:
            self._resumed_stale.discard(n)
            return 0, None  # the uninterrupted run records it afresh: count from 0
        return (0, None) if entry is None else entry

    def _no_program_yet(self) -> bool:
        """Whether the step has no program, restored programs not yet recorded again
        included: the first program compiles at once under Inductor, later ones after
        ``compile_after`` steps (:func:`~pyro_gen.infer.compiled_backends.compile_after`)."""
        return not self._programs and all(e is None for e in self._resumed.values())
