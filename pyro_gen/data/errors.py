"""The exception types raised by :mod:`pyro_gen.data`; all derive from :class:`DatasetError`."""

from __future__ import annotations

from pathlib import Path


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


class CorruptCacheError(DatasetError):
    """A cached dataset file failed verification on read (checksum, size, shape or type).

    Attributes:
        path: the file that was refused.
        rebuild: the shell command that rebuilds the cache it belongs to.

    Example:
        >>> e = CorruptCacheError("/c/mnist/x is corrupt", "/c/mnist/x", "rebuild it")
        >>> isinstance(e, DatasetError), e.path.name, e.rebuild
        (True, 'x', 'rebuild it')
    """

    def __init__(self, message: str, path: str | Path, rebuild: str) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.rebuild = rebuild


class DownloadError(DatasetError):
    """A download failed: unreachable, too slow, too large, truncated or wrong.

    Attributes:
        url: what was being downloaded.
        mirror_dead: True when the mirror should not be tried again for other files
            during this load (it could not be reached, or stalled or trickled).

    Example:
        >>> e = DownloadError("http://m/x.gz timed out", "http://m/x.gz", mirror_dead=True)
        >>> isinstance(e, DatasetError), e.mirror_dead
        (True, True)
    """

    def __init__(self, message: str, url: str, *, mirror_dead: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.mirror_dead = mirror_dead
