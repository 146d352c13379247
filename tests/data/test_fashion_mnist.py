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
#: md5s of the published uncompressed files, independent of the sha256s the cache checks.
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
needs_system_copy = pytest.mark.skipif(
    not (SYSTEM / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@needs_system_copy
def test_loads_from_system_folder_and_caches(tmp_path: Path) -> None:
    x, y = load("fashion_mnist", "test", tmp_path)
    assert x.shape == (10_000, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and torch.bincount(y).tolist() == [1000] * 10
    for name, md5 in PUBLISHED_MD5.items():
        raw = (tmp_path / "fashion_mnist" / name).read_bytes()
        assert hashlib.md5(raw).hexdigest() == md5
        assert hashlib.sha256(raw).hexdigest() == FASHION_MNIST.raw_sha256[name]
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
    assert str(labels) in str(info.value) and "sha256" in str(info.value)
    assert not (tmp_path / "root" / "fashion_mnist" / "t10k-labels-idx1-ubyte").exists()


def test_nothing_available_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load("fashion_mnist", "train", tmp_path, system_dirs=[str(tmp_path / "none")])
    message = str(info.value)
    assert "apt install dataset-fashion-mnist" in message
    assert str(tmp_path / "none" / "train-images-idx3-ubyte.gz") in message
    assert "PYRO_GEN_OFFLINE" in message
