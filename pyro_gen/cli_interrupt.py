"""What a Ctrl-C left behind, said for the command it stopped.

One message for every command ("the last checkpoint is intact") was false for the commands
that never touch a checkpoint (``sample``, ``evaluate``, ``impute``), and for a ``train``
stopped before its first checkpoint (while downloading its data, say). Each message here
says only what the command's own writes guarantee: run files are replaced atomically, so a
stopped command leaves each one whole, old or new; a stopped download removes its partial
file (``pyro_gen.data.paths.atomic_write``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import TracebackType

from pyro_gen.infer.checkpoint import CHECKPOINT_NAME

# Modules whose frames on the interrupted stack mean a dataset was being fetched.
_DOWNLOADING = ("pyro_gen.data.download", "pyro_gen.data.http_get")


def interrupted_message(args: argparse.Namespace, traceback: TracebackType | None) -> str:
    """The line ``pyro-gen`` prints when Ctrl-C stops ``args.command``.

    Args:
        args: the parsed command line.
        traceback: where the ``KeyboardInterrupt`` was raised (``error.__traceback__``).

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
                f"interrupted; {checkpoint}, the last checkpoint, is intact: rerun the same "
                f"command to resume from it{download}"
            )
        return f"interrupted before the first checkpoint; nothing to resume from{download}"
    if command == "convert-checkpoint":
        checkpoint = Path(args.run) / CHECKPOINT_NAME
        return (
            f"interrupted; {checkpoint} is whole, either the original or the converted file "
            "(rerun to finish; a converted one is refused as already current)"
        )
    # evaluate, sample and impute read the checkpoint; their results are written at the end,
    # each file atomically
    return (
        f"interrupted; {command} leaves the checkpoint in {args.run} as it was, and writes "
        f"its results whole or not at all{download}"
    )


def _was_downloading(traceback: TracebackType | None) -> bool:
    while traceback is not None:
        if traceback.tb_frame.f_globals.get("__name__", "").startswith(_DOWNLOADING):
            return True
        traceback = traceback.tb_next
    return False
