"""Fashion-MNIST from the Debian package folder, checked against the published contents."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from pyro_gen.data import DatasetError, load
from pyro_gen.data.fashion_mnist import FASHION_MNIST, SYSTEM_DIRS

SYSTEM = Path(SYSTEM_DIRS[0])
needs_system_copy = pytest.mark.skipif(
    not (SYSTEM / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@needs_system_copy
def test_loads_from_system_folder_and_caches(tmp_path: Path) -> None:
    x, y = load("fashion_mnist", "test", tmp_path)
    assert x.shape == (10_000, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and torch.bincount(y).tolist() == [1000] * 10
    for name, md5 in FASHION_MNIST.raw_md5.items():
        path = tmp_path / "fashion_mnist" / name
        assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    # Later loads use only the cache.
    x2, _ = load("fashion_mnist", "test", tmp_path, system_dirs=[])
    assert x2.equal(x)


@needs_system_copy
def test_tampered_system_file_is_rejected(tmp_path: Path) -> None:
    fake = tmp_path / "system"
    shutil.copytree(SYSTEM, fake)
    labels = fake / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = (raw[-1] + 1) % 10  # still a valid file, but not the published one
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError) as info:
        load("fashion_mnist", "test", tmp_path / "root", system_dirs=[str(fake)])
    assert str(labels) in str(info.value) and "md5" in str(info.value)
    assert not (tmp_path / "root" / "fashion_mnist" / "t10k-labels-idx1-ubyte").exists()


def test_nothing_available_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load("fashion_mnist", "train", tmp_path, system_dirs=[str(tmp_path / "none")])
    message = str(info.value)
    assert "apt install dataset-fashion-mnist" in message
    assert str(tmp_path / "none" / "train-images-idx3-ubyte.gz") in message
    assert "PYRO_GEN_OFFLINE" in message
