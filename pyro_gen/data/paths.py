"""Where datasets are cached, and how files get there without ever being half-written.

Files are written to a temporary ``.<name>.<random>.part`` file beside their target and
renamed over it only when complete (:func:`atomic_write`). A writer holds an exclusive
``flock`` on its ``.part`` file until the rename, so when a process is killed (even with
``kill -9``, which releases its locks) the next load can tell an abandoned ``.part`` file
from one still being written and removes it (:func:`remove_stale_parts`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from pyro_gen.data.errors import DatasetError

try:
    import fcntl
except ImportError:  # Windows: no flock; stale files are recognised by age alone
    fcntl = None

#: Environment variable naming the data root when ``root=`` is not given.
DATA_ENV = "PYRO_GEN_DATA"
#: A ``.part`` file is only removed once unchanged for this many seconds. With flock this
#: only needs to cover the instant between creating a file and locking it; without flock
#: it must exceed any plausible pause of a live writer.
STALE_AFTER = 2.0 if fcntl is not None else 3600.0


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory that holds one sub-folder per dataset.

    Resolution order: the ``root`` argument, else the ``PYRO_GEN_DATA`` environment
    variable, else ``~/.cache/pyro_gen``.

    Example:
        >>> str(data_root("/data/here"))
        '/data/here'
    """
    if root is None:
        root = os.environ.get(DATA_ENV) or Path.home() / ".cache" / "pyro_gen"
    return Path(root).expanduser()


def dataset_dir(root: str | os.PathLike[str] | None, name: str) -> Path:
    """The cache folder of one dataset, e.g. ``<root>/mnist``.

    Example:
        >>> str(dataset_dir("/data", "mnist"))
        '/data/mnist'
    """
    return data_root(root) / name


def check_directory(directory: str | os.PathLike[str]) -> None:
    """Raise unless ``directory`` is a directory or could be created as one.

    Example:
        >>> import tempfile
        >>> f = tempfile.mkstemp()[1]
        >>> check_directory(f + "/mnist")
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DatasetError: ... is a file, not a directory, so the dataset ...
    """
    directory = Path(directory)
    for path in (directory, *directory.parents):
        if path.is_dir():
            return
        if os.path.lexists(path):
            raise DatasetError(
                f"{path} is a file, not a directory, so the dataset cache {directory} cannot "
                f"live there. Move {path} away, or pass root= another folder (or set "
                f"{DATA_ENV})."
            )


def check_file_or_absent(path: str | os.PathLike[str], what: str) -> bool:
    """Whether ``path`` is a regular file (True) or absent (False); raise for anything else.

    A directory, FIFO, socket or device where a cache file belongs would otherwise be
    skipped or, worse, block a read forever.

    Args:
        path: where the file belongs.
        what: what the file is, for the message (e.g. ``"the MNIST cache file"``).

    Example:
        >>> import tempfile
        >>> check_file_or_absent(tempfile.mkdtemp() + "/absent", "x")
        False
        >>> check_file_or_absent(tempfile.mkdtemp(), "the MNIST cache file")
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DatasetError: ... is a directory where the MNIST cache file ...
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False  # absent, or a dangling symlink that a write simply replaces
    except OSError as e:
        raise DatasetError(f"cannot inspect {path} ({e}); fix its permissions.") from e
    if stat.S_ISREG(mode):
        return True
    kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
    remove = "rm -r" if stat.S_ISDIR(mode) else "rm"
    raise DatasetError(
        f"{path} is {kind} where {what} should be; nothing was read from it. Move it away "
        f"(e.g. `{remove} '{path}'`, after checking it holds nothing you need) and load again."
    )


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either the old file, the complete new one, or none.

    ``write`` receives a binary file object for a locked temporary ``.part`` file in the
    same directory; only when it returns is the file flushed to disk and renamed over
    ``path`` (``os.replace`` is atomic within one file system). On any error, interruptions
    included, the temporary file is removed and ``path`` is left untouched. ``write`` must
    not let an ``OSError`` of its own escape (it would be reported as a disk error).

    Raises:
        DatasetError: the file could not be written (permissions, full disk, ...).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> atomic_write(d + "/hello.bin", lambda f: f.write(b"hi")).read_bytes()
        b'hi'
    """
    path = Path(path)
    tmp_name = None
    try:
        check_directory(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            _lock(f.fileno())
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp_name, 0o644)
            if fcntl is not None:  # rename while still locked: never seen unlocked and whole
                os.replace(tmp_name, path)
        if fcntl is None:  # Windows cannot rename an open file
            os.replace(tmp_name, path)
    except OSError as e:
        _discard(tmp_name)
        raise DatasetError(
            f"cannot write {path} ({e}). Check free space and permissions, or pass root= a "
            f"writable directory (or set {DATA_ENV})."
        ) from e
    except BaseException:
        _discard(tmp_name)
        raise
    return path


def _discard(tmp_name: str | None) -> None:
    if tmp_name is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)


def remove_stale_parts(
    directory: str | os.PathLike[str], names: Iterable[str], *, min_age: float = STALE_AFTER
) -> list[Path]:
    """Remove ``.part`` files of ``names`` in ``directory`` that no live writer holds.

    A file counts as abandoned when nobody holds its flock (the writer finished, failed
    without cleaning up, or was killed) and it has not changed for ``min_age`` seconds.

    Returns:
        The files removed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".a.gz.x1.part").write_bytes(b"half")
        >>> [p.name for p in remove_stale_parts(d, ["a.gz"], min_age=0)]
        ['.a.gz.x1.part']
    """
    directory = Path(directory)
    prefixes = tuple(f".{name}." for name in names)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed  # no folder yet (or unreadable: the read itself will say so)
    for entry in entries:
        if not (entry.name.startswith(prefixes) and entry.name.endswith(".part")):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if _is_abandoned(path, min_age):
                path.unlink()
                removed.append(path)
    return removed


def _is_abandoned(path: Path, min_age: float) -> bool:
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode) or time.time() - info.st_mtime < min_age:
        return False
    if fcntl is None:
        return True
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer holds it
    finally:
        os.close(fd)
    return True
