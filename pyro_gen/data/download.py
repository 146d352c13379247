"""md5-checked downloads that never leave a partial or unverified file behind.

Downloads are attempted only when allowed: ``download=False`` or the environment
variable ``PYRO_GEN_OFFLINE=1`` turns them off, so offline machines go straight to their
local sources. A short timeout keeps an unreachable mirror from stalling a load.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from pyro_gen.data.errors import DatasetError
from pyro_gen.data.paths import atomic_write

#: Set to 1 to never touch the network.
OFFLINE_ENV = "PYRO_GEN_OFFLINE"
#: Seconds to wait for a connection or for the next chunk of data.
DEFAULT_TIMEOUT = 10.0
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
    url: str, dest: str | os.PathLike[str], md5: str, *, timeout: float = DEFAULT_TIMEOUT
) -> Path:
    """Download ``url`` to ``dest``, keeping it only if complete and its md5 matches.

    The body is streamed into a temporary file next to ``dest`` and renamed over it
    only after the byte count (against ``Content-Length``) and the md5 both check out,
    so a failed, interrupted or tampered transfer leaves nothing at ``dest``.

    Raises:
        DatasetError: naming the URL, the file and what to do.

    Example:
        >>> download_file("http://127.0.0.1:9/x.gz", "/tmp/x.gz", "0" * 32, timeout=1)
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DatasetError: could not download http://127.0.0.1:9/x.gz ...
    """
    dest = Path(dest)
    received = 0
    digest = hashlib.md5(usedforsecurity=False)

    def write(f: BinaryIO) -> None:
        nonlocal received
        request = urllib.request.Request(url, headers={"User-Agent": "pyro_gen"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if length is not None and received != int(length):
            raise DatasetError(
                f"download of {url} was interrupted after {received} of {length} bytes; "
                f"nothing was written to {dest}. Check the connection and call load again."
            )
        if digest.hexdigest() != md5.lower():
            raise DatasetError(
                f"{dest.name} downloaded from {url} has md5 {digest.hexdigest()}, expected "
                f"{md5}; it was discarded and nothing was written to {dest}. The mirror "
                f"serves a different file: try another mirror, or place verified files in "
                f"{dest.parent}."
            )

    try:
        return atomic_write(dest, write)
    except urllib.error.HTTPError as e:
        raise DatasetError(
            f"could not download {url}: HTTP {e.code} {e.reason}. Try another mirror."
        ) from e
    except (TimeoutError, urllib.error.URLError, ConnectionRefusedError) as e:
        reason = getattr(e, "reason", e)
        error = DatasetError(
            f"could not download {url} ({reason}). Check the network, or set "
            f"{OFFLINE_ENV}=1 to use offline sources only."
        )
        error.unreachable = True  # lets download_from_mirrors skip this mirror from now on
        raise error from e
    except (http.client.HTTPException, OSError) as e:
        raise DatasetError(
            f"download of {url} failed after {received} bytes ({e!r}); nothing was written "
            f"to {dest}. Check the connection and call load again."
        ) from e


def download_from_mirrors(
    filename: str,
    md5: str,
    mirrors: Sequence[str],
    dest_dir: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    dead: set[str] | None = None,
) -> Path:
    """Try each mirror (a base URL) in turn until ``filename`` downloads with its md5.

    Mirrors that cannot be reached at all are added to ``dead`` and skipped by later
    calls sharing that set, so an offline machine pays for one failed connection per
    mirror, not one per file.

    Raises:
        DatasetError: listing what went wrong with every mirror.

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
            return download_file(url, Path(dest_dir) / filename, md5, timeout=timeout)
        except DatasetError as e:
            if getattr(e, "unreachable", False):
                dead.add(base)
            errors.append(str(e))
    if errors:
        details = "\n  ".join(errors)
    elif mirrors:
        details = "no mirror left to try (all were unreachable earlier)"
    else:
        details = "no mirrors configured"
    raise DatasetError(f"could not download {filename}: {details}")
