"""What a Ctrl-C or a SIGTERM left behind, said for the command it stopped.

One message for every command ("the last checkpoint is intact") was false for the commands
that never touch a checkpoint (``sample``, ``evaluate``, ``impute``), and for a ``train``
stopped before its first checkpoint (while downloading its data, say). Each message here
says only what the command's own writes guarantee: run files are replaced atomically, so a
stopped command leaves each one whole, old or new; a stopped download removes its partial
file (``pyro_gen.data.paths.atomic_write``).

A SIGTERM (what SLURM, Kubernetes or ``kill`` send before they kill a job) ended the process
on the spot, as ``kill -9`` does: no line, no clean-up (a fresh run's empty folder, a partial
download). :func:`sigterm_raises` makes it stop a command as Ctrl-C does. Only the command
line installs it: a signal's handler belongs to the whole process, so a library call
(``fit``) taking it over would override the handler of the program that calls it (a
notebook's kernel, a scheduler's wrapper, Lightning's own), and a program that wants this
wraps its own call in :func:`sigterm_raises`.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from pyro_gen.infer.callbacks import changes_only_tensors
from pyro_gen.infer.checkpoint import CHECKPOINT_NAME

# Modules whose frames on the interrupted stack mean a dataset was being fetched.
_DOWNLOADING = ("pyro_gen.data.download", "pyro_gen.data.http_get")


# what a shell reports for a process that SIGTERM ended: 128 + the signal's number
SIGTERM_STATUS = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread by a SIGTERM inside :func:`sigterm_raises`, or after
    training that :func:`sigterm_stops_training` stopped (``step``: the last step taken, whose
    checkpoint was written).

    A ``BaseException``, as ``KeyboardInterrupt`` is, so that no ``except Exception`` on the
    way up takes it for an error of its own, and every ``finally`` and ``with`` block runs
    (the run directory's lock is released, a partial download removed).
    """

    def __init__(self, *args: object, step: int | None = None) -> None:
        super().__init__(*args)
        self.step = step


@changes_only_tensors  # it changes nothing the model reads
class SigtermStop:
    """A step callback for :func:`pyro_gen.infer.fit` that returns True (stop after this step,
    writing its checkpoint) once ``requested``."""

    def __init__(self) -> None:
        self.requested = False
        self.step: int | None = None

    def __call__(self, step: int, model: object) -> bool:
        if self.requested:
            self.step = step
        return self.requested


def _handler_to_replace() -> Any:
    """SIGTERM's handler now, or None where none may be installed: outside the main thread
    (Python runs handlers there only), over a handler Python did not install, or over one
    that ignores SIGTERM (``nohup``-style: whoever ignored it meant it)."""
    found = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or found is signal.SIG_IGN:
        return None
    return found


@contextlib.contextmanager
def sigterm_stops_training() -> Iterator[SigtermStop]:
    """Inside, a SIGTERM asks the training loop to stop after its current step: pass the
    :class:`SigtermStop` yielded among ``fit``'s ``step_callbacks``, and ``fit`` writes that
    step's checkpoint and returns, within a step of the signal (a scheduler's grace period is
    seconds), rather than losing the epoch's steps. On leaving, :class:`Terminated` is raised
    if that happened. The first SIGTERM gives the handler found back, so a second one acts
    as before (under :func:`sigterm_raises`, stops at once).

    Example:
        >>> with sigterm_raises():
        ...     try:
        ...         with sigterm_stops_training() as stop:
        ...             signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # a SIGTERM
        ...             print(stop(7, None))  # the step callback: stop after step 7
        ...     except Terminated as e:
        ...         print("stopped after step", e.step)
        True
        stopped after step 7
    """
    stop = SigtermStop()
    found = _handler_to_replace()
    if found is None:
        yield stop
        return

    def request(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, found)
        stop.requested = True

    signal.signal(signal.SIGTERM, request)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, found)
    if stop.requested:
        raise Terminated(f"signal {signal.SIGTERM}", step=stop.step)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside, a SIGTERM raises :class:`Terminated` where the main thread is, as Ctrl-C raises
    ``KeyboardInterrupt``; the handler found is restored on leaving. The first SIGTERM
    restores it at once, so a second one acts as it did before (by default, ends the
    process). Nothing is installed outside the main thread (Python runs handlers there only)
    or over a handler Python did not install or one that ignores SIGTERM (``nohup``-style:
    whoever ignored it meant it).

    Example:
        >>> try:
        ...     with sigterm_raises():
        ...         handler = signal.getsignal(signal.SIGTERM)
        ...         handler(signal.SIGTERM, None)  # as Python calls it when SIGTERM comes
        ... except Terminated:
        ...     print("stopped")
        stopped
        >>> signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        True
    """
    found = _handler_to_replace()
    if found is None:
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, found)
        raise Terminated(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, found)


def interrupted_message(
    args: argparse.Namespace, traceback: TracebackType | None, stopped: str = "interrupted"
) -> str:
    """The line ``pyro-gen`` prints when Ctrl-C (or SIGTERM) stops ``args.command``.

    Args:
        args: the parsed command line.
        traceback: where the ``KeyboardInterrupt`` (or :class:`Terminated`) was raised
            (``error.__traceback__``).
        stopped: what stopped it, the line's first words (``"terminated (SIGTERM)"``).

    Example:
        >>> args = argparse.Namespace(command="sample", run="runs/vae-mnist")
        >>> print(interrupted_message(args, None))  # doctest: +NORMALIZE_WHITESPACE
        interrupted; sample leaves the checkpoint in runs/vae-mnist as it was, and writes
        its results whole or not at all
    """
    download = (
        "; the partial download was removed (a rerun fetches it again)"
        if _was_downloading(traceback)
        else ""
    )
    command = args.command
    if command == "train":
        out = args.out or Path("runs") / f"{args.model}-{args.data}"
        checkpoint = Path(out) / CHECKPOINT_NAME
        if checkpoint.is_file():
            return (
                f"{stopped}; {checkpoint}, the last checkpoint, is intact: rerun the same "
                f"command to resume from it{download}"
            )
        return f"{stopped} before the first checkpoint; nothing to resume from{download}"
    if command == "convert-checkpoint":
        checkpoint = Path(args.run) / CHECKPOINT_NAME
        return (
            f"{stopped}; {checkpoint} is whole, either the original or the converted file "
            "(rerun to finish; a converted one is refused as already current)"
        )
    # evaluate, sample and impute read the checkpoint; their results are written at the end,
    # each file atomically
    return (
        f"{stopped}; {command} leaves the checkpoint in {args.run} as it was, and writes "
        f"its results whole or not at all{download}"
    )


def _was_downloading(traceback: TracebackType | None) -> bool:
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__", "").startswith(_DOWNLOADING):
            return True
        traceback = traceback.tb_next
    return False
