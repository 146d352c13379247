"""Writing run files safely: atomic replacement, no symlink following, no leftovers.

Every file a run writes (checkpoint, config, metrics, figures) goes through here, so that

* a reader sees either the old file or the new one, never half of one (temporary file in the
  same directory, ``fsync``, ``os.replace``);
* a symlink planted where a run file should be is refused rather than followed, so a write
  never lands outside the run directory (``os.replace`` would only replace the link, but a
  link there means someone expects the write to go elsewhere: that is an error, not a guess);
* a temporary file left by a killed writer is removed when the next run takes the
  directory (:func:`remove_stale_temporaries`), while one that a live writer still holds is
  left alone: each writer holds a ``flock`` on its own temporary file until it is renamed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: byte-range locks through msvcrt instead of flock
    fcntl = None
    import msvcrt

# Not on every platform; where missing, refuse_symlink's check is the only guard.
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

# mkstemp names its files PREFIX + 8 characters from [a-z0-9_] + SUFFIX.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class UnsafePathError(OSError):
    """A run file's path is a symlink or otherwise not a plain file we may replace."""


def refuse_symlink(path: str | Path) -> Path:
    """Returns ``path`` if writing there cannot follow a symlink; raises otherwise.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "link.png").symlink_to(d / "elsewhere")
        >>> refuse_symlink(d / "link.png")
        Traceback (most recent call last):
        ...
        pyro_gen.infer.files.UnsafePathError: ... is a symlink ...
    """
    path = Path(path)
    if path.is_symlink():
        raise UnsafePathError(
            f"{path} is a symlink (to {os.readlink(path)}); pyro-gen does not write through "
            "links: remove the link or choose another path"
        )
    if path.exists() and not path.is_file():
        raise UnsafePathError(
            f"{path} exists and is not a regular file: move it or choose another path"
        )
    return path


def refuse_read_only(path: str | Path) -> Path:
    """Returns ``path`` if it is missing or writable by us; raises ``PermissionError``
    naming it otherwise. A run replaces its files by renaming a new one over them, which
    the file's own mode does not stop: a checkpoint the user made read-only (to keep it)
    was overwritten by the next resume all the same.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "run.pt"
        >>> _ = p.write_bytes(b"x")
        >>> refuse_read_only(p).name  # writable (a read-only one raises PermissionError)
        'run.pt'
    """
    path = Path(path)
    if path.is_file() and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, "Permission denied (the file is read-only)", str(path))
    return path


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Writes ``payload`` to ``path`` so readers see either the old file or the new one.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> atomic_write_bytes(p, b"hello")
        >>> p.read_bytes()
        b'hello'
    """
    path = refuse_read_only(refuse_symlink(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a missing or read-only folder: named by the target, not the temporary
        raise OSError(e.errno, e.strerror, str(path)) from e
    try:
        # Held until the rename, so a concurrent clean-up leaves this live file alone.
        try_lock(fd)
        # mkstemp makes the file private; the result gets the mode a plain open() would give.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        # A failed write (a full disk, say) reports no file name of its own: name the target.
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_line(path: str | Path, line: str) -> None:
    """Appends one line to ``path`` (created if missing) without following a symlink."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | O_NOFOLLOW, 0o644)
    except OSError as e:
        if path.is_symlink():
            refuse_symlink(path)
        raise e
    data = (line.rstrip("\n") + "\n").encode()
    try:
        start = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):  # a write may be short (a disk filling up)
                written += os.write(fd, data[written:])
        except BaseException as e:
            # A full disk (or a file size limit, or Ctrl-C between two short writes) cut the
            # line: take its part back, so that the file holds whole records only, and name
            # the file (a failed write names none).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            if isinstance(e, OSError):
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Removes temporary files that killed writers left in ``directory``; returns them.

    A temporary file still locked by a live writer is kept.
    """
    removed = []
    for entry in os.scandir(directory):
        if not _TEMPORARY.match(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | O_NOFOLLOW)
        except OSError:
            continue
        if not try_lock(fd):
            os.close(fd)
            continue  # a live writer holds it
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


def try_lock(fd: int) -> bool:
    """Takes an exclusive lock on the open file ``fd`` without waiting; False if another
    open file holds it. The lock goes with the descriptor, so a killed process releases it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # other errors (no locks on this file system) propagate
            return False
        return True
    os.lseek(fd, 1 << 30, os.SEEK_SET)  # a byte past the content: readers are not blocked
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def unlock(fd: int) -> None:
    """Releases :func:`try_lock`'s lock."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _umask() -> int:
    # Read, not set-and-restore: os.umask would briefly change it for every thread.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
