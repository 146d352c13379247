"""A streaming HTTP(S) GET that cannot hang or grow without bound.

Three limits apply to every request: a connect timeout, a read timeout (the longest
silence tolerated while waiting for headers or for the next bytes of the body) and a
total deadline covering connection, redirects and the whole body, so a mirror that
trickles one byte a second fails when the deadline passes instead of never. Each socket
wait is bounded by the smaller of the read timeout and the time left before the deadline,
so the deadline is kept to within one system call; while headers are read, a timer
shuts the socket down at the deadline. A byte cap stops an endless or
oversized body as soon as it is exceeded, and a body shorter than its ``Content-Length``
is refused. Redirects (at most :data:`MAX_REDIRECTS`, http and https only) and the
``http_proxy``/``https_proxy``/``no_proxy`` environment variables are honoured, as
:mod:`urllib` would. Name resolution (DNS) is left to the system resolver's own
timeouts, which no socket option reaches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

from pyro_gen.data.errors import DownloadError

MAX_REDIRECTS = 5
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long and how much one download may take.

    Attributes:
        connect_timeout: seconds to establish a connection.
        read_timeout: longest silence, in seconds, while waiting for data.
        deadline: seconds for the whole transfer, redirects included.
        max_bytes: largest body accepted, or None for no cap.

    Example:
        >>> Limits(10, 30, 600, max_bytes=1 << 20).deadline
        600
    """

    connect_timeout: float
    read_timeout: float
    deadline: float
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "deadline"):
            value = getattr(self, name)
            if not value > 0:  # also refuses NaN
                raise ValueError(f"{name} must be a positive number of seconds; got {value!r}")
        if self.max_bytes is not None and self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None; got {self.max_bytes!r}")


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """An unconnected connection for ``url`` (through a proxy if configured) and the
    request target to send."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"cannot download {url}: only http:// and https:// URLs work.", url)
    selector = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and urllib.request.proxy_bypass(parts.hostname):
        proxy = None
    if proxy:
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.scheme == "http":  # plain HTTP proxies take the absolute URL
            return http.client.HTTPConnection(p.hostname, p.port, timeout=timeout), url
        conn = http.client.HTTPSConnection(
            p.hostname, p.port, timeout=timeout, context=ssl.create_default_context()
        )
        conn.set_tunnel(parts.hostname, parts.port)
        return conn, selector
    if parts.scheme == "https":
        context = ssl.create_default_context()
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context
        ), selector
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout), selector


class _Clock:
    def __init__(self, url: str, limits: Limits) -> None:
        self.url, self.limits = url, limits
        self.end = time.monotonic() + limits.deadline

    def wait(self, timeout: float) -> float:
        """The socket timeout for the next wait: ``timeout`` capped by the deadline."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.deadline_error()
        return min(timeout, left)

    def deadline_error(self, received: int | None = None) -> DownloadError:
        got = "" if received is None else f" after {received} bytes"
        return DownloadError(
            f"download of {self.url} exceeded its deadline of {self.limits.deadline:g} s{got} "
            f"(the mirror is too slow); nothing was kept. Try another mirror or raise deadline=.",
            self.url,
            mirror_dead=True,
        )

    def timed_out(self, what: str, received: int | None = None) -> DownloadError:
        if time.monotonic() >= self.end:
            return self.deadline_error(received)
        return DownloadError(
            f"download of {self.url} stalled: no {what} for {self.limits.read_timeout:g} s "
            f"(read timeout); nothing was kept. Try another mirror or raise timeout=.",
            self.url,
            mirror_dead=True,
        )


def _abort(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv on it


def _open(
    url: str, limits: Limits, clock: _Clock
) -> tuple[http.client.HTTPResponse, socket.socket]:
    """Connect, follow redirects, and return the 200 response with its socket."""
    for _ in range(MAX_REDIRECTS + 1):
        conn, selector = _connection(url, clock.wait(limits.connect_timeout))
        try:
            conn.connect()
        except TimeoutError as e:  # socket.timeout is an alias
            conn.close()
            if time.monotonic() >= clock.end:  # the deadline, not the connect timeout, ran out
                raise clock.deadline_error() from e
            raise DownloadError(
                f"could not connect to {url} within {limits.connect_timeout:g} s (connect "
                f"timeout). Check the network, or set PYRO_GEN_OFFLINE=1 to use offline "
                f"sources only.",
                url,
                mirror_dead=True,
            ) from e
        except OSError as e:
            conn.close()
            raise DownloadError(
                f"could not connect to {url} ({e.strerror or e}). Check the network, or set "
                f"PYRO_GEN_OFFLINE=1 to use offline sources only.",
                url,
                mirror_dead=True,
            ) from e
        sock = conn.sock  # kept: the connection drops its reference once the response owns it
        # Headers arrive through many small reads inside http.client, so a per-read timeout
        # cannot keep the deadline there; a timer shuts the socket down when it passes.
        watchdog = threading.Timer(max(clock.end - time.monotonic(), 0.0), _abort, (sock,))
        watchdog.daemon = True
        watchdog.start()
        try:
            sock.settimeout(clock.wait(limits.read_timeout))
            conn.request("GET", selector, headers={"User-Agent": "pyro_gen"})
            response = conn.getresponse()
        except TimeoutError as e:  # socket.timeout is an alias
            conn.close()
            raise clock.timed_out("response") from e
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if time.monotonic() >= clock.end:
                raise clock.deadline_error() from e
            raise DownloadError(
                f"{url} sent no valid HTTP response ({e!r}); nothing was kept. Try another mirror.",
                url,
            ) from e
        finally:
            watchdog.cancel()
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("Location")
            conn.close()
            if not location:
                raise DownloadError(f"{url} redirected without a Location header.", url)
            url = urllib.parse.urljoin(url, location)
            clock.url = url
            continue
        if response.status != 200:
            conn.close()
            raise DownloadError(
                f"could not download {url}: HTTP {response.status} {response.reason}. Try "
                f"another mirror.",
                url,
            )
        return response, sock
    raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects; try another mirror.", url)


def iter_body(url: str, limits: Limits) -> Iterator[bytes]:
    """Yield the body of ``url`` in chunks, enforcing ``limits``.

    Every failure is a :class:`~pyro_gen.data.errors.DownloadError` with a one-line
    message; no ``OSError`` escapes, so a caller can tell network faults from its own
    disk errors.

    Example:
        >>> next(iter_body("http://127.0.0.1:9/x.gz", Limits(1, 1, 1)))
        Traceback (most recent call last):
        ...
        pyro_gen.data.errors.DownloadError: could not connect to http://127.0.0.1:9/x.gz ...
    """
    clock = _Clock(url, limits)
    response, sock = _open(url, limits, clock)
    url = clock.url
    received = 0
    try:
        length = _content_length(response, url, limits)
        while True:
            sock.settimeout(clock.wait(limits.read_timeout))
            try:
                chunk = response.read1(_CHUNK)
            except TimeoutError as e:  # socket.timeout is an alias
                raise clock.timed_out("data", received) from e
            except http.client.IncompleteRead as e:
                raise _truncated(url, received + len(e.partial), length) from e
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(
                    f"download of {url} failed after {received} bytes ({e!r}); nothing was "
                    f"kept. Check the connection and load again.",
                    url,
                ) from e
            if not chunk:
                break
            received += len(chunk)
            if limits.max_bytes is not None and received > limits.max_bytes:
                raise DownloadError(
                    f"{url} sent more than {limits.max_bytes} bytes, the most the expected "
                    f"file can take; the transfer was stopped and nothing was kept. The "
                    f"mirror serves something else: try another mirror.",
                    url,
                )
            yield chunk
        if length is not None and received != length:
            raise _truncated(url, received, length)
    finally:
        response.close()
        sock.close()


def _content_length(response: http.client.HTTPResponse, url: str, limits: Limits) -> int | None:
    header = response.getheader("Content-Length")
    if header is None:
        return None
    try:
        length = int(header)
    except ValueError:
        raise DownloadError(f"{url} sent an invalid Content-Length {header!r}.", url) from None
    if limits.max_bytes is not None and length > limits.max_bytes:
        raise DownloadError(
            f"{url} announces {length} bytes, more than the {limits.max_bytes} the expected "
            f"file can take; nothing was downloaded. The mirror serves something else: try "
            f"another mirror.",
            url,
        )
    return length


def _truncated(url: str, received: int, length: int | None) -> DownloadError:
    of = f" of {length}" if length is not None else ""
    return DownloadError(
        f"download of {url} was truncated: the connection closed after {received}{of} bytes; "
        f"nothing was kept. Check the connection and load again.",
        url,
    )
