"""Reading and writing IDX files, the format of the MNIST family of datasets.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, ``ndim`` big-endian
uint32 sizes, then the array in C order, big-endian. Files ending in ``.gz`` are read
through gzip. Reading checks the header against the file size, so a truncated or padded
file raises :class:`~pyro_gen.data.errors.DatasetError` instead of returning garbage.

References:
    Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits"
    (file format section), http://yann.lecun.com/exdb/mnist/
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pyro_gen.data.errors import CorruptCacheError, DatasetError
from pyro_gen.data.paths import atomic_write

_TYPE_TO_DTYPE = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_TYPE = {(dt.kind, dt.itemsize): code for code, dt in _TYPE_TO_DTYPE.items()}

_REMEDY = "Delete it and call load again to fetch a fresh copy."


def idx_header(array: np.ndarray) -> bytes:
    """The IDX header (magic number and sizes) for ``array``.

    Example:
        >>> idx_header(np.zeros((2, 3), dtype=np.uint8)).hex()
        '000008020000000200000003'
    """
    dtype = np.dtype(array.dtype)
    code = _KIND_TO_TYPE.get((dtype.kind, dtype.itemsize))
    if code is None or array.ndim > 255:
        raise ValueError(f"IDX cannot store dtype {dtype} with {array.ndim} dimensions")
    return struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)


def _body(array: np.ndarray) -> np.ndarray:
    dtype = np.dtype(array.dtype)
    return np.ascontiguousarray(array, dtype=dtype.newbyteorder(">"))


def idx_sha256(array: np.ndarray) -> str:
    """The sha256 of ``array`` written as an uncompressed IDX file (header included).

    For an array read by :func:`read_idx` from a plain IDX file this is the sha256 of the
    file, computed without copying the data.

    Example:
        >>> import tempfile
        >>> a = np.arange(6, dtype=np.uint8).reshape(2, 3)
        >>> p = write_idx(tempfile.mkdtemp() + "/a", a)
        >>> idx_sha256(a) == hashlib.sha256(p.read_bytes()).hexdigest()
        True
    """
    digest = hashlib.sha256(idx_header(array))
    digest.update(memoryview(_body(array)).cast("B"))
    return digest.hexdigest()


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an uncompressed IDX file, atomically.

    Example:
        >>> import tempfile
        >>> p = write_idx(tempfile.mkdtemp() + "/a-idx2-ubyte", np.eye(2, dtype=np.uint8))
        >>> read_idx(p)
        array([[1, 0],
               [0, 1]], dtype=uint8)
    """
    header, body = idx_header(array), _body(array)

    def write(f: BinaryIO) -> None:
        f.write(header)
        f.write(memoryview(body).cast("B"))

    return atomic_write(path, write)


def read_idx(
    path: str | os.PathLike[str], *, max_bytes: int | None = None, rebuild: str | None = None
) -> np.ndarray:
    """Read an IDX file (plain or ``.gz``) into a native-byte-order numpy array.

    Only the IDX layout is parsed: nothing in the file can make the reader execute code.

    Args:
        path: the file.
        max_bytes: refuse a file (or a ``.gz`` whose contents) exceeding this many bytes
            before reading it all, so a wrong file cannot exhaust memory.
        rebuild: the command that rebuilds the file when it is a cache file; damage is
            then reported as :class:`~pyro_gen.data.errors.CorruptCacheError` with it.

    Raises:
        DatasetError: the file is missing, unreadable, not IDX, or its size disagrees with
            its header (truncated or corrupt); the message names the file and the remedy.

    Example:
        >>> import tempfile
        >>> p = write_idx(tempfile.mkdtemp() + "/b", np.arange(3, dtype=np.int32))
        >>> read_idx(p)
        array([0, 1, 2], dtype=int32)
    """
    path = Path(path)

    def damaged(what: str) -> DatasetError:
        if rebuild is None:
            return DatasetError(f"{path} {what}. {_REMEDY}")
        return CorruptCacheError(f"{path} {what}. Rebuild it with: {rebuild}", path, rebuild)

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = bytearray(f.read(-1 if max_bytes is None else max_bytes + 1))
        else:
            size = path.stat().st_size
            if max_bytes is not None and size > max_bytes:
                raise damaged(f"has {size} bytes, more than the {max_bytes} expected")
            data = bytearray(size)
            with open(path, "rb") as f:
                f.readinto(data)
    except FileNotFoundError as e:
        raise DatasetError(f"{path} does not exist.") from e
    except PermissionError as e:
        raise DatasetError(f"cannot read {path} ({e.strerror}); fix its permissions.") from e
    except (OSError, EOFError, zlib.error) as e:
        raise damaged(f"is not a readable gzip/IDX file ({e})") from e
    if max_bytes is not None and len(data) > max_bytes:
        raise damaged(f"decompresses to more than the {max_bytes} bytes expected")
    return _parse(data, damaged)


def _parse(data: bytearray, damaged: Callable[[str], DatasetError]) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPE_TO_DTYPE:
        raise damaged("is not an IDX file (bad magic number)")
    dtype, ndim = _TYPE_TO_DTYPE[data[2]], data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise damaged("is truncated inside its IDX header")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise damaged(
            f"is {what}: its IDX header promises {expected} bytes, the file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return array if dtype.byteorder in "=|" else array.astype(dtype.newbyteorder("="))
