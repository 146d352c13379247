"""Fault injection for downloads: a loopback HTTP server that stalls, trickles, truncates,
streams forever, lies about sizes and redirects in circles, a download killed with -9, and
one stopped half way through its body by Ctrl-C or a disk that fills.

Every case asserts one clear line naming the URL, a bounded time (the limits are tiny
here, so each case takes well under a second) and that no file, partial or whole, is left
behind. To add a fault: add a handler method ``fault_<name>`` to :class:`_FaultHandler`
and a row to ``FAULTS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyro_gen.data.download as download
from pyro_gen.data import DatasetError
from pyro_gen.data.download import download_file, gzip_cap
from pyro_gen.data.errors import DownloadError
from pyro_gen.data.http_get import Limits, iter_body
from pyro_gen.data.idx_dataset import download_source, load_idx_dataset
from pyro_gen.data.paths import remove_stale_parts
from tests.data.tiny_idx import TINY, TINY_GZ

BODY = bytes(range(256)) * 64  # 16 KiB
BODY_MD5 = hashlib.md5(BODY).hexdigest()
# connect, read, deadline: tiny, so that every fault resolves in well under a second.
CONNECT, READ, DEADLINE = 0.3, 0.3, 0.8


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYRO_GEN_DATA", str(tmp_path / "default_root"))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    """``GET /<fault>/<anything>`` misbehaves as ``fault_<fault>`` says."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.server.requests.append(self.path)
        fault = urllib.parse.urlsplit(self.path).path.split("/")[1]  # proxies get full URLs
        with contextlib.suppress(OSError):  # the client hanging up is the point of most cases
            getattr(self, f"fault_{fault}", self.fault_missing)()

    def _headers(self, length: int | None) -> None:
        self.send_response(200)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()

    def _wait(self, seconds: float) -> bool:
        return not self.server.closing.wait(seconds)

    def fault_ok(self) -> None:
        self._headers(len(BODY))
        self.wfile.write(BODY)

    def fault_missing(self) -> None:
        self.send_error(404)

    def fault_tiny(self) -> None:  # a good mirror of the tiny IDX dataset
        body = TINY_GZ.get(self.path.split("/")[-1])
        if body is None:
            self.send_error(404)
            return
        self._headers(len(body))
        self.wfile.write(body)

    def fault_stall(self) -> None:  # reads the request, never answers
        while self._wait(0.05):
            pass

    def fault_stall_body(self) -> None:  # headers and half the body, then silence
        self._headers(len(BODY))
        self.wfile.write(BODY[: len(BODY) // 2])
        self.wfile.flush()
        while self._wait(0.05):
            pass

    def fault_trickle(self) -> None:  # one byte per 50 ms: never silent long enough to time out
        self._headers(len(BODY))
        for i in range(len(BODY)):
            if not self._wait(0.05):
                return
            self.wfile.write(BODY[i : i + 1])
            self.wfile.flush()

    def fault_trickle_headers(self) -> None:  # an endless header, one byte per 50 ms
        self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        while self._wait(0.05):
            self.wfile.write(b"z")
            self.wfile.flush()

    def fault_truncate(self) -> None:  # promises the body, sends half and hangs up
        self._headers(len(BODY))
        self.wfile.write(BODY[: len(BODY) // 2])

    def fault_endless(self) -> None:  # no Content-Length, bytes until the client gives up
        self._headers(None)
        block = b"\0" * 65536
        while not self.server.closing.is_set():
            self.wfile.write(block)
            self.server.sent += len(block)

    def fault_huge(self) -> None:  # announces 5 GB
        self._headers(5 << 30)
        self.wfile.write(BODY)

    def fault_loop(self) -> None:  # redirects to itself forever
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def fault_redirect(self) -> None:  # one hop to a good file
        self.send_response(301)
        self.send_header("Location", "/ok/file")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class FaultServer:
    """A real HTTP server on 127.0.0.1 (port 0) whose handler threads stop on close."""

    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FaultHandler)
        self.httpd.block_on_close = False  # stalled handlers must not hold up the test
        self.httpd.closing = threading.Event()
        self.httpd.requests, self.httpd.sent = [], 0
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self) -> None:
        self.httpd.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    s = FaultServer()
    yield s
    s.close()


# fault, words the message must contain, whether the mirror is then skipped for other files
FAULTS = [
    ("stall", "no response for 0.3 s", True),
    ("stall_body", "no data for 0.3 s", True),
    ("trickle", "exceeded its deadline of 0.8 s", True),
    ("trickle_headers", "exceeded its deadline of 0.8 s", True),
    ("truncate", "truncated", False),
    ("endless", f"more than {len(BODY)} bytes", False),
    ("huge", f"announces {5 << 30} bytes", False),
    ("loop", "more than 5 redirects", False),
    ("missing", "HTTP 404", False),
]


@pytest.mark.parametrize(("fault", "words", "dead"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_is_one_clear_line_in_bounded_time_leaving_nothing(
    server: FaultServer, tmp_path: Path, fault: str, words: str, dead: bool
) -> None:
    url = f"{server.url}/{fault}/file.gz"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_file(
            url,
            tmp_path / "file.gz",
            BODY_MD5,
            timeout=(CONNECT, READ),
            deadline=DEADLINE,
            max_bytes=len(BODY),
        )
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert words in message and url.split("/")[-2] in message and "\n" not in message
    assert info.value.mirror_dead is dead
    # Generous for a loaded machine, yet far below what the faults cost unbounded (the
    # trickle alone would take 819 s, the stalls forever).
    assert elapsed < DEADLINE + 1.0, f"{fault} took {elapsed:.2f} s"
    assert list(tmp_path.iterdir()) == []


def test_deadline_is_kept_within_one_system_call(server: FaultServer) -> None:
    """The trickle never stops; the deadline (not the read timeout) ends it, on time."""
    start = time.monotonic()
    with pytest.raises(DownloadError, match="deadline"):
        for _ in iter_body(f"{server.url}/trickle/x", Limits(CONNECT, 5.0, 0.5)):
            pass
    assert 0.45 < time.monotonic() - start < 1.5  # the read timeout (5 s) never fires


def test_endless_stream_stops_at_the_cap(server: FaultServer) -> None:
    cap = 3 << 20
    received = 0
    with pytest.raises(DownloadError, match=f"more than {cap} bytes"):
        for chunk in iter_body(f"{server.url}/endless/x", Limits(CONNECT, READ, 10.0, cap)):
            received += len(chunk)
    assert received <= cap  # nothing past the cap reached the caller (or the disk)


def test_connect_timeout(tmp_path: Path) -> None:
    """A listener whose accept queue is full drops new SYNs, so connect() hangs."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.gz"
        start = time.monotonic()
        with pytest.raises(DownloadError, match="within 0.3 s \\(connect timeout\\)") as info:
            download_file(url, tmp_path / "x.gz", BODY_MD5, timeout=(CONNECT, 5.0))
        assert time.monotonic() - start < 2.0 and info.value.mirror_dead
    assert list(tmp_path.iterdir()) == []


def test_good_and_redirected_downloads_succeed(server: FaultServer, tmp_path: Path) -> None:
    for fault in ("ok", "redirect"):
        dest = download_file(
            f"{server.url}/{fault}/file",
            tmp_path / f"{fault}.gz",
            BODY_MD5,
            timeout=(CONNECT, READ),
            deadline=DEADLINE,
            max_bytes=len(BODY),
        )
        assert dest.read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.gz", "redirect.gz"]


def test_http_proxy_from_environment(
    server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", server.url)
    url = "http://mirror.invalid/ok/file"  # unresolvable: only the proxy can answer it
    download_file(url, tmp_path / "f.gz", BODY_MD5, timeout=(CONNECT, READ), deadline=DEADLINE)
    assert server.httpd.requests == [url]


def test_stalled_mirror_costs_one_timeout_per_load(server: FaultServer, tmp_path: Path) -> None:
    source = download_source(
        TINY,
        [f"{server.url}/stall/", f"{server.url}/tiny/"],
        download=True,
        timeout=(CONNECT, READ),
        deadline=DEADLINE,
    )
    start = time.monotonic()
    x, _ = load_idx_dataset(TINY, "train", tmp_path, [("download", source)], "serve them.")
    assert x.shape == (6, 4, 4) and time.monotonic() - start < READ + 1.5
    assert [r.split("/")[1] for r in server.httpd.requests] == ["stall", "tiny", "tiny"]


def test_dataset_cap_is_derived_from_the_expected_size(server: FaultServer, tmp_path: Path) -> None:
    cap = gzip_cap(TINY.raw_size("train", labels=False))
    source = download_source(TINY, [f"{server.url}/endless/"], download=True, deadline=5.0)
    with pytest.raises(DatasetError, match=f"more than {cap} bytes"):
        load_idx_dataset(TINY, "train", tmp_path, [("download", source)], "serve the files.")
    assert list((tmp_path / "tiny").iterdir()) == []


# The child skips pyro_gen.data's __init__ (which imports torch) so it starts in ~0.1 s.
_CHILD = """
import sys, types
pkg = types.ModuleType("pyro_gen.data"); pkg.__path__ = [sys.argv[1]]
sys.modules["pyro_gen.data"] = pkg
from pyro_gen.data.download import download_file
download_file(sys.argv[2], sys.argv[3], "0" * 32, deadline=60)
"""


def test_part_file_of_a_killed_download_is_removed_by_the_next_load(
    server: FaultServer, tmp_path: Path
) -> None:
    directory = tmp_path / "tiny"
    directory.mkdir()
    dest = directory / "train-images-idx3-ubyte.gz"
    package = Path(__file__).parents[2] / "pyro_gen" / "data"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(package), f"{server.url}/trickle/x", str(dest)],
        cwd=Path(__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 20
        while not any(directory.glob(".*.part")):
            assert child.poll() is None and time.monotonic() < deadline, "child never wrote"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (part,) = directory.glob(".*.part")  # kill -9 ran no clean-up
    old = time.time() - 60  # the next load comes later
    os.utime(part, (old, old))
    source = download_source(TINY, [f"{server.url}/tiny/"], download=True, deadline=5.0)
    load_idx_dataset(TINY, "train", tmp_path, [("download", source)], "serve the files.")
    assert not part.exists()
    assert sorted(p.name for p in directory.iterdir()) == list(TINY.files["train"])


def test_part_file_of_a_live_writer_is_kept(tmp_path: Path) -> None:
    part = tmp_path / ".train-images-idx3-ubyte.gz.abc123.part"
    other = tmp_path / ".notes.txt.part"  # not one of the dataset's files: never touched
    for p in (part, other):
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 60,) * 2)
    names = ["train-images-idx3-ubyte.gz"]
    with open(part, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # as atomic_write holds it while writing
        assert remove_stale_parts(tmp_path, names) == []
    assert part.exists()
    fresh = tmp_path / ".train-images-idx3-ubyte.gz.new.part"
    fresh.write_bytes(b"just created, not yet locked")
    assert remove_stale_parts(tmp_path, names) == [part]
    assert fresh.exists() and other.exists()


# A download stopped by Ctrl-C, or by a disk that fills, half way through its body: the
# target is not created, no .part file stays, and a full disk is one line naming the file.
# (One killed outright leaves its .part file to the next load: the tests above.)
CHUNK = b"x" * 4096


def stand_in_body(chunks: int, then: BaseException | None = None) -> object:
    """A stand-in for the network: ``chunks`` chunks, then ``then`` raised (if given)."""

    def iter_body(url: str, limits: object) -> Iterator[bytes]:
        for _ in range(chunks):
            yield CHUNK
        if then is not None:
            raise then

    return iter_body


def test_ctrl_c_mid_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "iter_body", stand_in_body(5, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        download_file("http://mirror/a.gz", tmp_path / "a.gz", "0" * 32)
    assert os.listdir(tmp_path) == []


def test_a_disk_filling_mid_download_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    resource = pytest.importorskip("resource")  # file size limits: POSIX only
    monkeypatch.setattr(download, "iter_body", stand_in_body(16))
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, saved[1]))  # a full disk at 10 kB
    try:
        with pytest.raises(DatasetError) as info:
            download_file("http://mirror/a.gz", tmp_path / "a.gz", "0" * 32)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    message = str(info.value)
    assert "\n" not in message and f"cannot write {tmp_path / 'a.gz'}" in message, message
    assert "free space" in message, message
    assert os.listdir(tmp_path) == []


def test_the_download_is_kept_when_whole(tmp_path, monkeypatch):
    """The stand-in network works: the same body, whole and with its md5, is kept."""
    monkeypatch.setattr(download, "iter_body", stand_in_body(16))
    md5 = hashlib.md5(CHUNK * 16, usedforsecurity=False).hexdigest()
    path = download_file("http://mirror/a.gz", tmp_path / "a.gz", md5)
    assert Path(path).read_bytes() == CHUNK * 16 and os.listdir(tmp_path) == ["a.gz"]
