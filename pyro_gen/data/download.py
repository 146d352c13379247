"""md5-checked downloads that never hang, never grow unbounded and never leave a file behind.

Downloads are attempted only when allowed: ``download=False`` or the environment
variable ``PYRO_GEN_OFFLINE=1`` turns them off, so offline machines go straight to their
local sources. Each file is bounded by a connect timeout, a read timeout and a total
deadline (:data:`DEFAULT_TIMEOUT`, :data:`DEFAULT_DEADLINE`), and by a byte cap that the
caller derives from the size it expects (:func:`gzip_cap`); see
:mod:`pyro_gen.data.http_get`. The body goes to a locked ``.part`` file that is renamed
into place only when complete and verified, and removed on any failure; ``.part`` files
left by a killed process are removed by the next load (:mod:`pyro_gen.data.paths`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pyro_gen.data.errors import DatasetError, DownloadError
from pyro_gen.data.http_get import Limits, iter_body
from pyro_gen.data.paths import atomic_write

#: Set to 1 to never touch the network.
OFFLINE_ENV = "PYRO_GEN_OFFLINE"
#: Seconds to establish a connection, and the longest silence while receiving.
DEFAULT_TIMEOUT = (10.0, 30.0)
#: Seconds for one file, whatever the mirror does: 26 MB (Fashion-MNIST's largest file)
#: needs about 45 kB/s to make it.
DEFAULT_DEADLINE = 600.0

#: ``timeout=``: one number for both timeouts, or ``(connect, read)`` as in requests.
Timeout = float | tuple[float, float]
_CHUNK = 1 << 20


def downloads_allowed(download: bool | None = None) -> bool:
    """Whether to use the network: ``download`` if given, else not ``PYRO_GEN_OFFLINE``.

    Example:
        >>> downloads_allowed(False)
        False
    """
    if download is not None:
        return bool(download)
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("", "0", "false", "no")


def limits(timeout: Timeout, deadline: float, max_bytes: int | None = None) -> Limits:
    """The :class:`~pyro_gen.data.http_get.Limits` for ``timeout=`` and ``deadline=``.

    Example:
        >>> limits((2, 5), 60).read_timeout, limits(3, 60).connect_timeout
        (5, 3)
    """
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    return Limits(connect, read, deadline, max_bytes)


def gzip_cap(raw_size: int) -> int:
    """The most bytes a gzip file of ``raw_size`` uncompressed bytes can take.

    Incompressible data is stored in blocks of at most 65,535 bytes with 5 bytes of
    framing each; 1 KiB more covers the gzip header (file name included) and trailer.

    Example:
        >>> gzip_cap(47_040_016)  # MNIST's training images: the real file has 9,912,422
        47044630
        >>> import gzip, os
        >>> noise = os.urandom(200_000)
        >>> len(gzip.compress(noise, compresslevel=0)) <= gzip_cap(200_000)
        True
    """
    return raw_size + 5 * (raw_size // 65_535 + 1) + 1024


def file_md5(path: str | os.PathLike[str]) -> str:
    """The hex md5 of a file, read in chunks.

    Example:
        >>> import tempfile
        >>> p = tempfile.mkdtemp() + "/empty"
        >>> _ = open(p, "wb").close()
        >>> file_md5(p)
        'd41d8cd98f00b204e9800998ecf8427e'
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    md5: str,
    *,
    timeout: Timeout = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` to ``dest``, keeping it only if complete and its md5 matches.

    Args:
        url: what to fetch (http or https).
        dest: where the verified file goes.
        md5: its expected hex md5.
        timeout: seconds to connect and longest silence while receiving: one number
            for both, or ``(connect, read)``.
        deadline: seconds for the whole transfer.
        max_bytes: stop and fail once the body exceeds this many bytes.

    Raises:
        DownloadError: one line naming the URL, what went wrong and what to do.
        DatasetError: ``dest`` could not be written.

    Example:
        >>> download_file("http://127.0.0.1:9/x.gz", "/tmp/x.gz", "0" * 32, timeout=1)
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DownloadError: could not connect to http://127.0.0.1:9/x.gz ...
    """
    dest = Path(dest)
    bounds = limits(timeout, deadline, max_bytes)

    def write(f: BinaryIO) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with contextlib.closing(iter_body(url, bounds)) as body:
            for chunk in body:
                f.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != md5.lower():
            raise DownloadError(
                f"{dest.name} downloaded from {url} has md5 {digest.hexdigest()}, expected "
                f"{md5}; it was discarded and nothing was written to {dest}. The mirror "
                f"serves a different file: try another mirror, or place verified files in "
                f"{dest.parent}.",
                url,
            )

    return atomic_write(dest, write)


def download_from_mirrors(
    filename: str,
    md5: str,
    mirrors: Sequence[str],
    dest_dir: str | os.PathLike[str],
    *,
    timeout: Timeout = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    max_bytes: int | None = None,
    dead: set[str] | None = None,
) -> Path:
    """Try each mirror (a base URL) in turn until ``filename`` downloads with its md5.

    Mirrors that cannot be reached, stall or trickle are added to ``dead`` and skipped by
    later calls sharing that set, so an offline machine or a slow mirror costs one
    timeout per mirror, not one per file. ``timeout``, ``deadline`` and ``max_bytes`` are
    as in :func:`download_file`.

    Raises:
        DatasetError: listing what went wrong with every mirror (one line when there was
            one mirror to try).

    Example:
        >>> download_from_mirrors("a.gz", "0" * 32, [], "/tmp")
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DatasetError: could not download a.gz: no mirrors configured
    """
    dead = set() if dead is None else dead
    errors = []
    for base in mirrors:
        if base in dead:
            continue
        url = base.rstrip("/") + "/" + filename
        try:
            return download_file(
                url,
                Path(dest_dir) / filename,
                md5,
                timeout=timeout,
                deadline=deadline,
                max_bytes=max_bytes,
            )
        except DownloadError as e:
            if e.mirror_dead:
                dead.add(base)
            errors.append(str(e))
    if len(errors) == 1:
        details = errors[0]
    elif errors:
        details = "\n  " + "\n  ".join(errors)
    elif mirrors:
        details = "no mirror left to try (all were unreachable or too slow earlier)"
    else:
        details = "no mirrors configured"
    raise DatasetError(f"could not download {filename}: {details}")
