"""Exclusive use of a run directory by one training process (a lock file), and reading a
run that no process is training into, without writing anything there."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from pyro_gen.infer.checkpoint_format import CheckpointError
from pyro_gen.infer.files import (
    O_NOFOLLOW,
    UnsafePathError,
    refuse_symlink,
    remove_stale_temporaries,
    try_lock,
    unlock,
)

try:
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range locks have no shared mode
    fcntl = None

LOCK_NAME = ".pyro-gen.lock"


class RunLockedError(CheckpointError):
    """Another process is training into the same run directory."""


# real path -> [lock file descriptor, depth, thread id, whether a fit trains there]
_held: dict[str, list[int]] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def run_lock(directory: str | Path, *, training: bool = False) -> Iterator[Path]:
    """Exclusive use of a run directory (created if missing) for as long as the block runs.

    Re-entrant within one thread, so the command line can take it before writing
    ``config.json`` and :func:`~pyro_gen.infer.fit` take it again; another thread of the
    process is refused as another process is (the lock file's ``flock`` is the process's,
    so two threads training into one directory both got it, and wrote one checkpoint and
    one metrics file in turn). Once a holder that trains there (``training=True``, as
    ``fit`` takes it) has it, no one else in the thread takes it again: a ``fit`` into the
    same directory from the outer fit's callback or from the user's code it runs restored
    and overwrote the outer run's checkpoint and metrics, which the outer run overwrote
    again. The first acquisition removes temporary files that killed writers left behind.

    Args:
        directory: the run directory.
        training: the holder writes the run's checkpoint and metrics for as long as it
            holds the lock (``fit``), so the thread may not take it again meanwhile.

    Raises:
        RunLockedError: at once, naming the directory and the other process, if another
            process or another thread of this one holds it, or if a training holder of this
            thread does.
        UnsafePathError: if the lock file is a symlink or not a regular file.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with run_lock(d), run_lock(d):
        ...     pass
    """
    directory = Path(directory)
    made = _missing_folders(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(directory)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None and entry[2] != threading.get_ident():
            raise RunLockedError(
                f"run directory {directory} is in use by another thread of this process "
                f"(pid {os.getpid()}); wait for it to finish, or choose another directory"
            )
        if entry is not None and entry[3]:
            raise RunLockedError(
                f"run directory {directory} is in use by a fit that is still training into it "
                "in this thread (this call comes from its callback, or from code it runs); "
                "training into it too would overwrite that run's checkpoint and metrics: give "
                "this one another directory (checkpoint_dir=, --out)"
            )
        if entry is not None:
            entry[1] += 1
            created = False
        else:
            try:
                fd, created = _acquire(directory)
            except BaseException:
                _remove_folders(made)
                raise
            entry = _held[key] = [fd, 1, threading.get_ident(), False]
        entry[3] = training
    failed = True
    try:
        yield directory
        failed = False
    finally:
        with _held_guard:
            entry[3] = False  # a training holder is the innermost one: none came after it
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                if failed and created:
                    # A refused or failed run leaves no lock file of its own behind (nor the
                    # folders it made, if they are empty): the directory is as it was found.
                    # Unlinked while still locked, so a process that opened it meanwhile
                    # finds, once it has the lock, that its file is no longer the lock file.
                    with contextlib.suppress(OSError):
                        os.unlink(directory / LOCK_NAME)
                    _remove_folders(made)
                unlock(entry[0])
                os.close(entry[0])


@contextlib.contextmanager
def run_read_lock(directory: str | Path) -> Iterator[Path]:
    """Reads a run directory that no one trains into for as long as the block runs, writing
    nothing there (``fit(steps=0)``: restoring a run, which may be read-only).

    :func:`run_lock` creates and writes the lock file, so a restore that took it failed in a
    read-only run directory (``PermissionError`` on ``.pyro-gen.lock``) though it writes
    nothing. This opens the lock file read-only and holds a shared ``flock`` on it, which a
    training holder's exclusive one excludes both ways: a restore is refused while a run
    trains there (it would read a checkpoint about to be replaced, and its param store is
    the trainer's if in this process), and a run cannot start there meanwhile. Without a
    lock file no run holds the directory; checkpoints are replaced atomically, so a run that
    starts meanwhile cannot show this reader half a file. Where ``flock`` is missing
    (Windows) nothing is locked.

    Args:
        directory: the run directory; it must exist.

    Raises:
        RunLockedError: at once, naming the directory and the other process, if a process
            (or another thread of this one, or a fit in this thread) trains there.
        UnsafePathError: if the lock file is a symlink or not a regular file.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with run_lock(d):
        ...     pass
        >>> with run_read_lock(d), run_read_lock(d):
        ...     pass
    """
    directory = Path(directory)
    with _held_guard:
        entry = _held.get(os.path.realpath(directory))
        if entry is not None and entry[2] != threading.get_ident():
            who = "another thread of this process"
        elif entry is not None and entry[3]:
            who = "a fit still training in this thread (this call comes from its callback)"
        else:
            who = None
        if who is not None:
            raise RunLockedError(
                f"run directory {directory} is in use by {who} (pid {os.getpid()}), which "
                "may be training into it: restore it once that has finished"
            )
    if entry is not None or fcntl is None:  # held by this thread's command line, not training
        yield directory
        return
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | O_NOFOLLOW)
    except FileNotFoundError:  # no run ever held it (a copied run): none trains there
        fd = None
    except OSError:
        refuse_symlink(path)
        raise
    if fd is None:
        yield directory
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or folder under its name
            raise UnsafePathError(f"{path} exists and is not a regular file: move it")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"run directory {directory} is in use by another process (pid {holder}) that "
                "is training into it: restore it once that has finished"
            ) from None
        yield directory
    finally:
        os.close(fd)  # closing releases the shared lock


def _acquire(directory: Path) -> tuple[int, bool]:
    """The locked lock file's descriptor, and whether this call created the file."""
    path = directory / LOCK_NAME
    for _ in range(_ATTEMPTS):
        fd, created = _open_lock_file(path)
        if not try_lock(fd):
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"run directory {directory} is in use by another process ({_who(holder)}); "
                "wait for it to finish, or choose another directory"
            )
        if _still_named(fd, path):
            break
        # The holder removed the file after we opened it (a refused run takes its lock file
        # away): our lock is on a file no one else will open, so take the one now named.
        os.close(fd)
    else:
        raise RunLockedError(
            f"run directory {directory}: its lock file kept being replaced while taking it; "
            "another process is starting and stopping runs there: wait, or choose another "
            "directory"
        )
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    remove_stale_temporaries(directory)
    return fd, created


_ATTEMPTS = 16


def _who(holder: str) -> str:
    """The process that holds the lock, from the pid its file holds. A restore
    (:func:`run_read_lock`) writes no pid, so the file still names the last trainer: if that
    one has exited, the holder is a process restoring from the run."""
    if fcntl is None:  # Windows: no restores lock there, and os.kill(pid, 0) sends Ctrl-C
        return f"pid {holder}"
    try:
        os.kill(int(holder), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return f"one restoring from it, fit(steps=0); pid {holder}, which trained there, has exited"
    except (ValueError, OSError, OverflowError, AttributeError):  # alive, or cannot tell
        pass
    return f"pid {holder}"


def _open_lock_file(path: Path) -> tuple[int, bool]:
    try:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o644), True
        except FileExistsError:
            return os.open(path, os.O_RDWR | O_NOFOLLOW), False
    except FileNotFoundError:  # removed between the two opens: create it again
        return _open_lock_file(path)
    except OSError:
        refuse_symlink(path)  # a planted link (or a directory) there: say so, by name
        raise


def _still_named(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _missing_folders(directory: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` of ``directory`` creates, deepest first."""
    missing = []
    for folder in (directory, *directory.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing


def _remove_folders(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; one that holds anything now is someone's
        try:
            folder.rmdir()
        except OSError:
            return
