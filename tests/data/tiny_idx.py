"""A tiny IDX dataset (6 train, 4 test 4x4 images, 3 classes) for the download tests."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np

from pyro_gen.data.idx import idx_header
from pyro_gen.data.idx_dataset import IdxDatasetSpec

TINY_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TINY_SIZES = {"train": 6, "test": 4}


def _tiny_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, (images, labels) in TINY_FILES.items():
        n = TINY_SIZES[split]
        arrays[images] = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        arrays[labels] = rng.integers(0, 3, size=n, dtype=np.uint8)
    return arrays


TINY_ARRAYS = _tiny_arrays()
TINY_RAW = {name: idx_header(a) + a.tobytes() for name, a in TINY_ARRAYS.items()}
TINY_GZ = {f"{name}.gz": gzip.compress(raw, mtime=0) for name, raw in TINY_RAW.items()}
TINY = IdxDatasetSpec(
    title="Tiny",
    folder="tiny",
    files=TINY_FILES,
    md5={name: hashlib.md5(data).hexdigest() for name, data in TINY_GZ.items()},
    mirrors=(),
    sizes=TINY_SIZES,
    image_shape=(4, 4),
    num_classes=3,
    raw_sha256={name: hashlib.sha256(raw).hexdigest() for name, raw in TINY_RAW.items()},
)
