"""Fashion-MNIST: 60,000 training and 10,000 test 28x28 grey-scale images of clothing.

Sources, in order: the cache folder ``<root>/fashion_mnist``; the Debian/Ubuntu package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``, :data:`SYSTEM_DIRS`);
the standard download of the four ``.gz`` files with their published md5s. The Debian
files are recompressed (their ``.gz`` md5s differ from the published ones), so their
uncompressed contents are checked against the md5s of the published uncompressed files.
Whatever is read is cached as plain IDX files.

References:
    H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
    Benchmarking Machine Learning Algorithms", arXiv:1708.07747.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from pyro_gen.data.download import DEFAULT_DEADLINE, DEFAULT_TIMEOUT, Timeout
from pyro_gen.data.idx_dataset import (
    IdxDatasetSpec,
    directory_source,
    download_source,
    load_idx_dataset,
)

#: Base URLs serving the four ``.gz`` files, tried in order.
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
#: Folders where system packages put the files.
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)

FASHION_MNIST = IdxDatasetSpec(
    title="Fashion-MNIST",
    folder="fashion_mnist",
    files={
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    },
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    mirrors=MIRRORS,
    sizes={"train": 60_000, "test": 10_000},
    image_shape=(28, 28),
    num_classes=10,
    raw_sha256={
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
)

#: Class names, indexed by label.
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def load_fashion_mnist(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    mirrors: Sequence[str] | None = None,
    system_dirs: Sequence[str] | None = None,
    timeout: Timeout = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load Fashion-MNIST as uint8 images ``(N, 28, 28)`` and int64 labels ``(N,)``.

    Args:
        split: ``"train"`` (60,000) or ``"test"`` (10,000).
        root: data root; the files live in ``<root>/fashion_mnist``.
        download: allow the network (default: unless ``PYRO_GEN_OFFLINE=1``).
        mirrors: base URLs to download from instead of :data:`MIRRORS`.
        system_dirs: folders to copy from instead of :data:`SYSTEM_DIRS`.
        timeout: seconds to connect to a mirror and the longest silence tolerated while
            receiving: one number for both, or ``(connect, read)``.
        deadline: seconds allowed for each downloaded file.

    Raises:
        DatasetError: no source could provide the data, or a cached file is corrupt.
    """
    hint = "install the Debian package dataset-fashion-mnist"
    dirs = SYSTEM_DIRS if system_dirs is None else system_dirs
    sources = [(f"system folder {d}", directory_source(FASHION_MNIST, d, hint)) for d in dirs]
    sources.append(
        (
            "download",
            download_source(
                FASHION_MNIST, mirrors, download=download, timeout=timeout, deadline=deadline
            ),
        )
    )
    remedy = "run `apt install dataset-fashion-mnist`, or allow downloads."
    return load_idx_dataset(FASHION_MNIST, split, root, sources, remedy)
