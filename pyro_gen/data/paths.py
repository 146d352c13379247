"""Where datasets are cached, and how files get there without ever being half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pyro_gen.data.errors import DatasetError

#: Environment variable naming the data root when ``root=`` is not given.
DATA_ENV = "PYRO_GEN_DATA"


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either the old file, the complete new one, or none.

    ``write`` receives a binary file object for a temporary file in the same directory;
    only when it returns is the file flushed to disk and renamed over ``path``
    (``os.replace`` is atomic within one file system). On any error, interruptions
    included, the temporary file is removed and ``path`` is left untouched.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> atomic_write(d + "/hello.bin", lambda f: f.write(b"hi")).read_bytes()
        b'hi'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise DatasetError(
            f"cannot write {path}: {e}. Pass root= a writable directory or set {DATA_ENV}."
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    return path
