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
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pyro_gen.data.errors import DatasetError
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


def idx_md5(array: np.ndarray) -> str:
    """The md5 of ``array`` written as an uncompressed IDX file (header included).

    Example:
        >>> idx_md5(np.zeros(0, dtype=np.uint8))
        '...'
    """
    digest = hashlib.md5(idx_header(array), usedforsecurity=False)
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


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (plain or ``.gz``) into a native-byte-order numpy array.

    Raises:
        DatasetError: the file is missing, is not IDX, or its size disagrees with its
            header (truncated or corrupt); the message names the file and the remedy.

    Example:
        >>> import tempfile
        >>> p = write_idx(tempfile.mkdtemp() + "/b", np.arange(3, dtype=np.int32))
        >>> read_idx(p)
        array([0, 1, 2], dtype=int32)
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = bytearray(f.read())
        else:
            data = bytearray(path.stat().st_size)
            with open(path, "rb") as f:
                f.readinto(data)
    except FileNotFoundError as e:
        raise DatasetError(f"{path} does not exist.") from e
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path} is not a readable gzip/IDX file ({e}). {_REMEDY}") from e
    return _parse(path, data)


def _parse(path: Path, data: bytearray) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPE_TO_DTYPE:
        raise DatasetError(f"{path} is not an IDX file (bad magic number). {_REMEDY}")
    dtype, ndim = _TYPE_TO_DTYPE[data[2]], data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DatasetError(f"{path} is truncated inside its IDX header. {_REMEDY}")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {what}: its IDX header promises {expected} bytes, the file has "
            f"{len(data)}. {_REMEDY}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return array if dtype.byteorder in "=|" else array.astype(dtype.newbyteorder("="))
