"""scikit-learn's bundled 8x8 handwritten digits (1,797 images), for fast tests.

The images ship inside scikit-learn, so no download is ever needed. Pixel values are
integers 0..16 as scikit-learn gives them (not rescaled): 17 levels, so binarize them with
``dynamic_binarize(x, num_bins=17)`` and dequantize with ``uniform_dequantize(x, 17)``
(or use ``x / 16`` as intensities in [0, 1]). scikit-learn has no official
split, so a fixed one is used: ``numpy.random.default_rng(0).permutation(1797)``, whose
first :data:`NUM_TRAIN` = 1,500 indices form ``train`` and the remaining 297 ``test``.
The split is therefore the same on every machine and never overlaps.

scikit-learn's file is parsed as CSV (never unpickled) and its contents are checked
against :data:`SHA256` every time they are read, so a damaged installation is refused by
name instead of giving wrong digits.

References:
    E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
    Learning Repository, 1998.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from pyro_gen.data.errors import DatasetError
from pyro_gen.data.idx_dataset import check_split

NUM_TRAIN = 1500
SPLIT_SEED = 0
#: sha256 of the 1,797 images (uint8, 8x8, file order) followed by the labels (uint8).
SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"
_REINSTALL = "pip install --force-reinstall scikit-learn"


def _checked(images: np.ndarray, labels: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels as uint8, after checking they are scikit-learn's digits."""
    shape_ok = images.shape == (1797, 8, 8) and labels.shape == (1797,)
    if shape_ok and images.min() >= 0 and images.max() <= 16 and labels.max() <= 9:
        images, labels = images.astype(np.uint8), labels.astype(np.uint8)
        digest = hashlib.sha256(images.tobytes())
        digest.update(labels.tobytes())
        if digest.hexdigest() == SHA256:
            return images, labels
    raise DatasetError(
        f"{origin} does not hold scikit-learn's 1,797 8x8 digits (damaged or altered); "
        f"nothing was loaded. Reinstall it with: {_REINSTALL}"
    )


def _read_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise DatasetError(
            "the digits dataset ships with scikit-learn, which is not installed. "
            "Install it with: pip install 'pyro-gen[digits]' (or pip install scikit-learn)"
        )
    # Importing sklearn takes seconds; its bundled CSV (what load_digits parses) does not.
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        try:
            table = np.loadtxt(csv, delimiter=",", dtype=np.float64, ndmin=2)
        # zlib.error: a damaged deflate stream, which gzip does not turn into an OSError
        except (OSError, EOFError, zlib.error, ValueError) as e:  # bad gzip, or not numbers
            raise DatasetError(
                f"{csv} is not a readable CSV of digits ({e}). Reinstall it with: {_REINSTALL}"
            ) from e
        if table.shape[1:] != (65,):
            raise DatasetError(
                f"{csv} has {table.shape[1]} columns, not 65 (64 pixels and a label). "
                f"Reinstall it with: {_REINSTALL}"
            )
        return _checked(table[:, :-1].reshape(-1, 8, 8), table[:, -1], str(csv))
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return _checked(bunch.images, bunch.target, "sklearn.datasets.load_digits()")


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = _read_sklearn_digits()
    labels = labels.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    return images[order], labels[order]


def load_digits(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load the 8x8 digits as uint8 images ``(N, 8, 8)`` in 0..16 and int64 labels.

    Args:
        split: ``"train"`` (1,500 images) or ``"test"`` (297 images).
        root: ignored (the data ship with scikit-learn); accepted for a uniform API.

    Example:
        >>> x, y = load_digits("test")
        >>> x.shape, x.dtype, int(x.max()), y.dtype
        (torch.Size([297, 8, 8]), torch.uint8, 16, torch.int64)
    """
    check_split(split)
    images, labels = _all_digits()
    part = slice(None, NUM_TRAIN) if split == "train" else slice(NUM_TRAIN, None)
    return torch.from_numpy(images[part].copy()), torch.from_numpy(labels[part].copy())
