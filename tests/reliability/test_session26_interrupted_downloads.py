"""A download stopped by Ctrl-C, or by a disk that fills, half way through its body: the
target is not created, no ``.part`` file stays, and a full disk is one line naming the
file. (A download killed outright leaves its ``.part`` file to the next load, which
``test_downloads`` covers.)"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyro_gen.data.download as download
from pyro_gen.data.errors import DatasetError

resource = pytest.importorskip("resource")  # file size limits: POSIX only

CHUNK = b"x" * 4096


def body(chunks: int, then: BaseException | None = None) -> object:
    """A stand-in for the network: ``chunks`` chunks, then ``then`` raised (if given)."""

    def iter_body(url: str, limits: object) -> Iterator[bytes]:
        for _ in range(chunks):
            yield CHUNK
        if then is not None:
            raise then

    return iter_body


def test_ctrl_c_mid_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "iter_body", body(5, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        download.download_file("http://mirror/a.gz", tmp_path / "a.gz", "0" * 32)
    assert os.listdir(tmp_path) == []


def test_a_disk_filling_mid_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "iter_body", body(16))
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, saved[1]))  # a full disk at 10 kB
    try:
        with pytest.raises(DatasetError) as info:
            download.download_file("http://mirror/a.gz", tmp_path / "a.gz", "0" * 32)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    message = str(info.value)
    assert "\n" not in message and f"cannot write {tmp_path / 'a.gz'}" in message, message
    assert "free space" in message, message
    assert os.listdir(tmp_path) == []


def test_the_download_is_kept_when_whole(tmp_path, monkeypatch):
    """The stand-in network works: the same body, whole and with its md5, is kept."""
    import hashlib

    monkeypatch.setattr(download, "iter_body", body(16))
    md5 = hashlib.md5(CHUNK * 16, usedforsecurity=False).hexdigest()
    path = download.download_file("http://mirror/a.gz", tmp_path / "a.gz", md5)
    assert Path(path).read_bytes() == CHUNK * 16 and os.listdir(tmp_path) == ["a.gz"]
