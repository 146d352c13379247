"""The one exception type raised by :mod:`pyro_gen.data`."""

from __future__ import annotations


class DatasetError(RuntimeError):
    """A dataset could not be found, fetched, verified or read.

    Every message names the file or directory involved and says what to do about it,
    so that the error alone is enough to fix the problem.

    Example:
        >>> try:
        ...     raise DatasetError("/tmp/x.idx is truncated; delete it and load again")
        ... except RuntimeError as e:
        ...     print(e)
        /tmp/x.idx is truncated; delete it and load again
    """
