"""Exclusive use of a run directory by one training process (a lock file)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pyro_gen.infer.checkpoint_format import CheckpointError
from pyro_gen.infer.files import O_NOFOLLOW, remove_stale_temporaries, try_lock, unlock

LOCK_NAME = ".pyro-gen.lock"


class RunLockedError(CheckpointError):
    """Another process is training into the same run directory."""


_held: dict[str, list[int]] = {}  # real path -> [lock file descriptor, depth]
_held_guard = threading.Lock()


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[Path]:
    """Exclusive use of a run directory (created if missing) for as long as the block runs.

    Re-entrant within one process, so the command line can take it before writing
    ``config.json`` and :func:`~pyro_gen.infer.fit` take it again. The first acquisition
    removes temporary files that killed writers left behind.

    Raises:
        RunLockedError: at once, naming the directory and the other process, if another
            process holds it.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with run_lock(d), run_lock(d):
        ...     pass
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(directory)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            entry = _held[key] = [_acquire(directory), 1]
    try:
        yield directory
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                unlock(entry[0])
                os.close(entry[0])


def _acquire(directory: Path) -> int:
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW, 0o644)
    if not try_lock(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"run directory {directory} is in use by another process (pid {holder}); wait for "
            "it to finish, or choose another directory"
        )
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    remove_stale_temporaries(directory)
    return fd
