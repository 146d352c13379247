"""IDX reading/writing: exact bytes, round trips, and clear errors for damaged files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from pyro_gen.data import DatasetError
from pyro_gen.data.idx import idx_header, idx_sha256, read_idx, write_idx
from pyro_gen.data.paths import atomic_write


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    back = read_idx(write_idx(tmp_path / "a", array))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_bytes_follow_the_idx_format(tmp_path: Path) -> None:
    array = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    raw = write_idx(tmp_path / "a", array).read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:16] == (1).to_bytes(4, "big")  # big-endian body
    assert idx_header(array) == raw[:12]
    import hashlib

    assert idx_sha256(array) == hashlib.sha256(raw).hexdigest()


def test_reads_gzip(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    raw = write_idx(tmp_path / "a", array).read_bytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)


def _damaged(tmp_path: Path, kind: str) -> Path:
    raw = write_idx(tmp_path / "x-idx3-ubyte", np.ones((5, 4, 4), dtype=np.uint8)).read_bytes()
    path = tmp_path / "x-idx3-ubyte"
    if kind == "truncated":
        path.write_bytes(raw[:-7])
    elif kind == "padded":
        path.write_bytes(raw + b"\0")
    elif kind == "bad_magic":
        path.write_bytes(b"\x1f\x8b" + raw[2:])
    elif kind == "short_header":
        path.write_bytes(raw[:9])
    elif kind == "truncated_gz":
        path = tmp_path / "x-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(raw)[:-20])
    elif kind == "corrupt_gz":
        path = tmp_path / "x-idx3-ubyte.gz"
        data = bytearray(gzip.compress(raw))
        data[15:25] = b"garbage!!!"
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "kind", ["truncated", "padded", "bad_magic", "short_header", "truncated_gz", "corrupt_gz"]
)
def test_damaged_file_is_one_clear_error(tmp_path: Path, kind: str) -> None:
    path = _damaged(tmp_path, kind)
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert "Delete it and call load again" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_atomic_write_leaves_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def fail(f) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
