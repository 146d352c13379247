"""Datasets, preprocessing and on-device batching.

``load(name, split, root)`` gives MNIST, Fashion-MNIST, scikit-learn's 8x8 digits and
2D toy densities as tensors (:func:`toy_log_prob` gives the exact density of those
that have one); :mod:`pyro_gen.data.preprocessing` turns uint8 images into
binary, dequantized or logit-space data. Every failure to find or read data raises
:class:`DatasetError` with a message naming the file and the remedy; its subclasses
:class:`CorruptCacheError` (a cached file failed verification on read; it carries the
``python -m pyro_gen.data rebuild ...`` command) and :class:`DownloadError` (a mirror was
unreachable, too slow, too large or truncated) say which. Files are parsed, never
unpickled, so nothing on disk can run code.
"""

from __future__ import annotations

from pyro_gen.data.batching import DeviceBatches
from pyro_gen.data.errors import CorruptCacheError, DatasetError, DownloadError
from pyro_gen.data.load import DATASETS, load
from pyro_gen.data.preprocessing import (
    bits_per_dim,
    dynamic_binarize,
    inverse_logit_transform,
    logit_transform,
    static_binarize,
    uniform_dequantize,
)
from pyro_gen.data.toys import TOYS, toy_log_prob

__all__ = [
    "DATASETS",
    "TOYS",
    "CorruptCacheError",
    "DatasetError",
    "DeviceBatches",
    "DownloadError",
    "bits_per_dim",
    "dynamic_binarize",
    "inverse_logit_transform",
    "load",
    "logit_transform",
    "static_binarize",
    "toy_log_prob",
    "uniform_dequantize",
]
