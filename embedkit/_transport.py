"""A lean HTTP/1.1 client transport for httpx, built on anyio.

Why this exists
---------------
httpx's default stack (httpx -> httpcore -> h11) spends most of its CPU time in
generic machinery: an h11 state machine that turns every response into a stream of
events, several layers of locks, wrappers and per-request objects.  An embedding
client sends many small POSTs over a few keep-alive connections, so that overhead
dominates its CPU budget.  `FastTransport` implements the subset of HTTP/1.1 such a
client needs, on anyio primitives only, so it runs under asyncio and trio alike.
Measured on a 2-core box against a loopback keep-alive server, a small
`client.post()` costs ~0.4x the CPU it costs with httpx's default transport
(~245 µs instead of ~600 µs, most of what is left being httpx's client layer).

Design
------
* **I/O.**  Plain `http://` connections are non-blocking sockets driven directly
  with `anyio.wait_readable` / `anyio.wait_writable`: a request is one `send()`
  system call and usually one `recv()`, with none of the buffering layers of
  an anyio socket stream (which measured ~40 µs more per request on asyncio).
  `https://` connections use `anyio.connect_tcp(..., tls=True)` and its stream.
* **Pool.**  Connections are pooled per `(scheme, host, port)`; at most
  `max_connections` are open (or opening) at once.  Idle connections are reused
  most-recently-used first, dropped after `keepalive_expiry` seconds, and (for
  plain sockets) checked for a server-side close before reuse.  When the pool is
  full, an idle connection to another origin is evicted; otherwise the request
  waits in FIFO order for a release, bounded by the `pool` timeout.
* **One request per connection at a time** (no pipelining).  The request head
  and a body of up to 64 KiB are written with a single `send()`.
* **Eager bodies.**  The whole response body is read before
  `handle_async_request` returns (embedding responses are at most a few MB).  It
  is handed to httpx as an `httpx.ByteStream`, so httpx's own Content-Encoding
  decoders (gzip, deflate, br, zstd) run and the headers stay exactly as sent.
* **Framing.**  Content-Length, `Transfer-Encoding: chunked` (trailers are read
  and discarded) and close-delimited bodies; 1xx interim responses such as
  `100 Continue` are skipped; HEAD responses, 204 and 304 have no body.
* **Stale connections.**  If a connection taken from the idle pool fails while
  sending, or is closed or reset before the first response byte, the request is
  retried once on a new connection: the policy httpcore uses for keep-alive
  connections the server has already dropped.
* **Timeouts** come from `request.extensions["timeout"]` (httpx sets it):
  `connect` bounds connection setup, `write` each wait for socket buffer space,
  `read` each wait for response bytes, `pool` the wait for a connection.  They
  raise `httpx.ConnectTimeout`, `WriteTimeout`, `ReadTimeout`, `PoolTimeout`.
* **Cancellation safety.**  A connection whose request was interrupted (by
  cancellation, a timeout or an error) is closed, never returned to the pool,
  and its pool slot is released.

Limits
------
* HTTP/1.1 (and HTTP/1.0 servers) only: no HTTP/2, no proxies, no Unix sockets,
  no `Upgrade`/CONNECT tunnels, no streamed response bodies.  Users who need any
  of these pass their own `httpx.AsyncClient` (or transport) instead.
* Streamed request bodies are read into memory before sending.  If a server
  answers early and closes while a large body is still being sent, the send
  error (`httpx.WriteError`) is raised and that early response is lost.
* TLS uses `ssl.create_default_context()` (the system trust store; httpx itself
  uses certifi) unless `ssl_context` is given; `AsyncClient(verify=...)` does not
  reach a custom transport, so build the context from the same settings.
* Response heads are limited to 256 KiB and chunk-size lines to 4 KiB.
* Requires anyio >= 4.7 (`anyio.wait_readable` / `anyio.wait_writable`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import httpx

__all__ = ["FastTransport"]

_RECV_SIZE = 65536
_MAX_RECV_SIZE = 1 << 20
_MAX_HEAD_SIZE = 256 * 1024
_MAX_CHUNK_LINE = 4096
_SMALL_BODY = 64 * 1024
_PURGE_INTERVAL = 1.0
_HEXDIGITS = b"0123456789abcdefABCDEF"
_NO_BODY_STATUS = frozenset((204, 304))
_HTTP11 = b"HTTP/1.1"

# `_parse_head` framing codes (a value >= 0 is a Content-Length).
_CHUNKED = -1
_UNTIL_CLOSE = -2
_NO_BODY = -3

_PoolKey = tuple[str, str, int]
_Timeouts = dict[str, Any]
_Headers = list[tuple[bytes, bytes]]
_Result = tuple[int, bytes, bytes, _Headers, bytes, bool]

# Errors that mean "this connection is broken" (as opposed to a protocol error).
_IO_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


# --------------------------------------------------------------------------- I/O


class _SocketIO:
    """A plain TCP connection: a non-blocking socket driven by anyio's fd waits."""

    __slots__ = ("received", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = False  # has any response byte arrived for the current request?

    async def send(self, data: bytes, write_timeout: float | None) -> None:
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            await _wait(anyio.wait_writable, sock, write_timeout, httpx.WriteTimeout)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]

    async def recv(
        self, read_timeout: float | None, size: int = _RECV_SIZE, wait: bool = False
    ) -> bytes:
        """Next bytes from the server, ``b""`` at EOF.  ``wait`` skips the first try."""
        sock = self.sock
        if not wait:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                pass
            else:
                self.received = self.received or bool(data)
                return data
        while True:
            await _wait(anyio.wait_readable, sock, read_timeout, httpx.ReadTimeout)
            try:
                data = sock.recv(size)
            except BlockingIOError:  # spurious wake-up
                continue
            self.received = self.received or bool(data)
            return data

    def is_dead(self) -> bool:
        """Whether an idle connection was closed by the server (or sent junk)."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    def shutdown(self) -> None:
        """Wake up any task using the connection; it will then close it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    async def aclose(self) -> None:
        self.sock.close()


class _StreamIO:
    """A TLS connection: an anyio byte stream."""

    __slots__ = ("received", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.received = False

    async def send(self, data: bytes, write_timeout: float | None) -> None:
        if write_timeout is None:
            await self.stream.send(data)
            return
        with anyio.move_on_after(write_timeout) as scope:
            await self.stream.send(data)
        if scope.cancelled_caught:
            raise httpx.WriteTimeout("Timed out while sending the request")

    async def recv(
        self, read_timeout: float | None, size: int = _RECV_SIZE, wait: bool = False
    ) -> bytes:
        """Next bytes from the server, ``b""`` at EOF."""
        data = b""
        try:
            if read_timeout is None:
                data = await self.stream.receive(size)
            else:
                with anyio.move_on_after(read_timeout) as scope:
                    data = await self.stream.receive(size)
                if scope.cancelled_caught:
                    raise httpx.ReadTimeout("Timed out while reading the response")
        except anyio.EndOfStream:
            return b""
        self.received = True
        return data

    def is_dead(self) -> bool:
        return False  # a TLS socket may hold unread records; rely on the retry instead

    def shutdown(self) -> None:
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def aclose(self) -> None:
        # Closing an already broken connection may complain; it is gone either way.
        with anyio.CancelScope(shield=True), contextlib.suppress(*_IO_ERRORS):
            await self.stream.aclose()


_IO = _SocketIO | _StreamIO


async def _wait(
    waiter: Callable[[socket.socket], Awaitable[None]],
    sock: socket.socket,
    limit: float | None,
    error: type[httpx.TimeoutException],
) -> None:
    """Wait for ``sock`` readiness; raise ``error`` after ``limit`` seconds."""
    if limit is None:
        await waiter(sock)
        return
    with anyio.CancelScope(deadline=anyio.current_time() + limit) as scope:
        await waiter(sock)
    if scope.cancelled_caught:
        raise error(f"Timed out after {limit} s waiting for the server")


async def _open_socket(host: str, port: int) -> socket.socket:
    """Connect a non-blocking TCP socket, trying each resolved address in turn."""
    addresses: list[tuple[socket.AddressFamily, Any]]
    try:
        ip = ipaddress.ip_address(host) if "%" not in host else None
    except ValueError:
        ip = None
    if ip is not None:
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        addresses = [(family, (host, port))]
    else:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = [(info[0], info[4]) for info in infos]
    error: OSError = OSError(f"could not resolve {host!r}")
    for family, address in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code)) from None
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


# ------------------------------------------------------------------------ parsing


def _find_head_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """Locate the blank line ending a response head: ``(index, separator length)``."""
    end = data.find(b"\r\n\r\n", start)
    # Tolerate bare-LF heads ("\n\n"), but only before any CRLF terminator.
    lf = data.find(b"\n\n", start, end if end >= 0 else len(data))
    if lf >= 0:
        return lf, 2
    return end, 4


def _parse_head(
    head: bytes, head_request: bool, force_close: bool
) -> tuple[int, bytes, bytes, _Headers, int, bool]:
    """Parse a response head (without its final blank line).

    Returns ``(status, reason, version, headers, framing, keep_alive)``; ``framing``
    is the Content-Length, or `_CHUNKED`, `_UNTIL_CLOSE` or `_NO_BODY`.
    """
    lines = head.split(b"\r\n")
    if head.count(b"\n") != len(lines) - 1:
        # Tolerate bare LF line endings, as most HTTP clients do.
        lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
    line = lines[0]
    version = line[:8]
    if (
        len(line) < 12
        or not version.startswith(b"HTTP/1.")
        or line[8] != 32  # b" "
        or not line[9:12].isdigit()
        or (len(line) > 12 and line[12] != 32)
    ):
        raise httpx.RemoteProtocolError(f"Malformed response status line: {line[:100]!r}")
    status = int(line[9:12])
    reason = line[13:]

    headers: _Headers = []
    content_length = -1
    transfer_encoding: bytes | None = None
    close = False
    keep_alive_token = False
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:
            # Obsolete line folding: continues the previous header's value.
            prev_name, prev_value = headers[-1]
            headers[-1] = (prev_name, prev_value + b" " + line.strip(b" \t"))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or b" " in name or b"\t" in name:
            raise httpx.RemoteProtocolError(f"Malformed response header line: {line[:100]!r}")
        value = value.strip(b" \t")
        headers.append((name, value))
        size = len(name)
        if size == 14 or size == 17 or size == 10:
            lname = name.lower()
            if lname == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    raise httpx.RemoteProtocolError(f"Invalid Content-Length: {value[:40]!r}")
                length = int(value)
                if content_length not in (-1, length):
                    raise httpx.RemoteProtocolError("Conflicting Content-Length headers")
                content_length = length
            elif lname == b"transfer-encoding":
                transfer_encoding = value.lower()
            elif lname == b"connection":
                for token in value.lower().split(b","):
                    token = token.strip()
                    if token == b"close":
                        close = True
                    elif token == b"keep-alive":
                        keep_alive_token = True

    keep_alive = not force_close and not close and (version == _HTTP11 or keep_alive_token)
    if head_request or status < 200 or status in _NO_BODY_STATUS:
        framing = _NO_BODY
    elif transfer_encoding is not None:
        if transfer_encoding.rsplit(b",", 1)[-1].strip() == b"chunked":
            framing = _CHUNKED
        else:
            framing, keep_alive = _UNTIL_CLOSE, False
    elif content_length >= 0:
        framing = content_length
    else:
        framing, keep_alive = _UNTIL_CLOSE, False
    return status, reason, version, headers, framing, keep_alive


def _mid_body(received: int, expected: int | None = None) -> httpx.RemoteProtocolError:
    if expected is None:
        detail = f"received {received} bytes of a chunked body"
    else:
        detail = f"received {received} of {expected} bytes"
    return httpx.RemoteProtocolError(f"peer closed connection mid-body ({detail})")


async def _read_chunked(io: _IO, first: bytes, read_timeout: float | None) -> tuple[bytes, bool]:
    """Decode a chunked body.  Returns ``(body, nothing_left_over)``."""
    data = bytearray(first)
    pos = 0
    parts: list[bytes] = []
    received = 0

    async def fill() -> None:
        nonlocal pos
        if pos:
            del data[:pos]  # cheap: bytearray drops a prefix in O(1)
            pos = 0
        more = await io.recv(read_timeout)
        if not more:
            raise _mid_body(received)
        data.extend(more)

    while True:
        eol = data.find(b"\r\n", pos)
        while eol < 0:
            if len(data) - pos > _MAX_CHUNK_LINE:
                raise httpx.RemoteProtocolError("Chunk size line too long")
            await fill()
            eol = data.find(b"\r\n", pos)
        size_field = bytes(data[pos:eol]).split(b";", 1)[0].strip(b" \t")
        if not size_field or len(size_field) > 16 or size_field.translate(None, _HEXDIGITS):
            raise httpx.RemoteProtocolError(f"Invalid chunk size: {size_field[:40]!r}")
        size = int(size_field, 16)
        pos = eol + 2
        if size == 0:
            break
        while len(data) - pos < size + 2:
            await fill()
        end = pos + size
        if data[end : end + 2] != b"\r\n":
            raise httpx.RemoteProtocolError("Missing CRLF after chunk data")
        parts.append(bytes(data[pos:end]))
        received += size
        pos = end + 2

    # Trailer section: header lines up to an empty line; discarded.
    while True:
        eol = data.find(b"\r\n", pos)
        while eol < 0:
            if len(data) - pos > _MAX_HEAD_SIZE:
                raise httpx.RemoteProtocolError("Chunked trailer section too long")
            await fill()
            eol = data.find(b"\r\n", pos)
        if eol == pos:
            pos += 2
            break
        pos = eol + 2
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return body, len(data) == pos


async def _read_response(
    io: _IO, read_timeout: float | None, head_request: bool, force_close: bool
) -> _Result:
    """Read one complete response from ``io``."""
    data = await io.recv(read_timeout, wait=True)
    if not data:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
    while True:
        end, sep = _find_head_end(data, 0)
        if end < 0:
            buffer = bytearray(data)
            while end < 0:
                if len(buffer) > _MAX_HEAD_SIZE:
                    raise httpx.RemoteProtocolError("Response head too large")
                more = await io.recv(read_timeout)
                if not more:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected while sending the response head."
                    )
                start = max(len(buffer) - 3, 0)
                buffer += more
                end, sep = _find_head_end(buffer, start)
            data = bytes(buffer)
        status, reason, version, headers, framing, keep_alive = _parse_head(
            data[:end], head_request, force_close
        )
        start = end + sep  # where the body begins in `data`
        if status >= 200 or status == 101:
            break
        # An interim response (100 Continue, 103 Early Hints, ...): skip it.
        data = data[start:]
        if not data:
            data = await io.recv(read_timeout)
            if not data:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    have = len(data) - start
    if framing >= 0:
        if have < framing:
            parts: list[bytes | memoryview] = [memoryview(data)[start:]]  # joined below: no copy
            while have < framing:
                more = await io.recv(read_timeout, min(framing - have, _MAX_RECV_SIZE))
                if not more:
                    raise _mid_body(have, framing)
                parts.append(more)
                have += len(more)
            data, start = b"".join(parts), 0
        if have > framing:  # bytes after the body: the connection is out of sync
            keep_alive = False
        return status, reason, version, headers, data[start : start + framing], keep_alive
    if framing == _CHUNKED:
        body, clean = await _read_chunked(io, data[start:], read_timeout)
        return status, reason, version, headers, body, keep_alive and clean
    if framing == _UNTIL_CLOSE:
        parts = [memoryview(data)[start:]]
        while more := await io.recv(read_timeout):
            parts.append(more)
        return status, reason, version, headers, b"".join(parts), False
    # No body: HEAD, 101, 204, 304.
    return status, reason, version, headers, b"", keep_alive and not have and status != 101


def _serialize(request: httpx.Request, body: bytes) -> tuple[bytes, bytes, bool]:
    """Encode the request: ``(first write, second write, request asked to close)``."""
    url = request.url
    parts = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    has_host = chunked = close = False
    raw_headers = request.headers.raw
    for name, value in raw_headers:
        size = len(name)
        if size == 4 or size == 17 or size == 10:
            lname = name.lower()
            if lname == b"host":
                has_host = True
            elif lname == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lname == b"connection":
                close = b"close" in value.lower()
        parts += (name, b": ", value, b"\r\n")
    line_count = len(raw_headers) + 2
    if not has_host:
        parts += (b"Host: ", url.netloc, b"\r\n")
        line_count += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # Every CR and LF must be one of ours: refuse header/request-line injection.
    if head.count(b"\n") != line_count or head.count(b"\r") != line_count:
        raise httpx.LocalProtocolError(
            "Request line or header contains CR or LF characters", request=request
        )
    if chunked:
        # A streamed body already read into memory: send it as a single chunk.
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    if len(body) <= _SMALL_BODY:
        return head + body, b"", close
    return head, body, close


# --------------------------------------------------------------------------- pool


class _Conn:
    """A pool slot: a (possibly not yet opened) connection to one origin."""

    __slots__ = ("idle_since", "io", "key", "reused")

    def __init__(self, key: _PoolKey) -> None:
        self.key = key
        self.io: _IO | None = None
        self.idle_since = 0.0
        self.reused = False  # came from the idle pool (so it may be stale)


class _Retry(Exception):
    """A reused connection died before any response byte: retry on a new one."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class FastTransport(httpx.AsyncBaseTransport):
    """A small, fast HTTP/1.1 keep-alive transport for `httpx.AsyncClient`.

    Use it as ``httpx.AsyncClient(transport=FastTransport())``.  It works under
    asyncio and trio.  See the module docstring for what it supports; for
    proxies or HTTP/2, use httpx's own transport.

    Args:
        max_connections: Most connections open at once, over all origins.
        keepalive_expiry: Seconds an idle connection is kept for reuse; ``None``
            keeps idle connections until the server closes them.
        ssl_context: TLS settings for ``https://`` URLs.  Defaults to
            `ssl.create_default_context()` (certificates and host names verified).
        connect_timeout_default: Connect timeout for requests that carry no
            ``timeout`` extension, i.e. when the transport is used without
            `httpx.AsyncClient`.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float | None = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_default: float | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._default_timeouts: _Timeouts = {"connect": connect_timeout_default}
        self._conns: set[_Conn] = set()
        self._idle: dict[_PoolKey, list[_Conn]] = {}
        self._waiters: deque[anyio.Event] = deque()
        self._next_purge = 0.0
        self._closed = False

    @property
    def num_connections(self) -> int:
        """Connections currently open or opening, idle or in use."""
        return len(self._conns)

    @property
    def num_idle_connections(self) -> int:
        """Idle keep-alive connections waiting in the pool."""
        return sum(len(idle) for idle in self._idle.values())

    # -------------------------------------------------------------- requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response, with the body already read."""
        if self._closed:
            raise RuntimeError("Cannot send a request: the FastTransport has been closed.")
        url = request.url
        scheme = url.scheme
        if scheme == "http":
            port = url.port or 80
        elif scheme == "https":
            port = url.port or 443
        else:
            raise httpx.UnsupportedProtocol(
                f"FastTransport supports only http:// and https:// URLs, not {url}",
                request=request,
            )
        key: _PoolKey = (scheme, url.host, port)
        timeouts: _Timeouts = request.extensions.get("timeout") or self._default_timeouts
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        first, second, close = _serialize(request, body)

        doomed: list[_Conn] = []
        conn = self._try_acquire(key, doomed, queued=False)
        if conn is None or doomed:
            conn = await self._acquire(key, conn, doomed, timeouts.get("pool"), request)
        try:
            try:
                if conn.io is None:
                    await self._connect(conn, request, timeouts)
                result = await self._exchange(conn, request, first, second, close, timeouts)
            except _Retry as retry:
                # The server dropped this keep-alive connection: one fresh attempt,
                # keeping our pool slot.
                if conn.io is not None:
                    await conn.io.aclose()
                    conn.io = None
                if self._closed:
                    raise retry.error from retry.__cause__
                await self._connect(conn, request, timeouts)
                result = await self._exchange(conn, request, first, second, close, timeouts)
        except BaseException:
            await self._discard(conn)
            raise

        status, reason, version, headers, content, keep_alive = result
        if keep_alive and not self._closed:
            self._release(conn)
        else:
            await self._discard(conn)
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"http_version": version, "reason_phrase": reason},
        )

    async def _exchange(
        self,
        conn: _Conn,
        request: httpx.Request,
        first: bytes,
        second: bytes,
        close: bool,
        timeouts: _Timeouts,
    ) -> _Result:
        """Write the request on ``conn`` and read its complete response."""
        io = conn.io
        assert io is not None
        io.received = False
        retryable = conn.reused
        writing = True
        try:
            write_timeout = timeouts.get("write")
            await io.send(first, write_timeout)
            if second:
                await io.send(second, write_timeout)
            writing = False
            return await _read_response(io, timeouts.get("read"), request.method == "HEAD", close)
        except _IO_ERRORS as exc:
            if writing:
                error: httpx.TransportError = httpx.WriteError(
                    f"Failed to send the request: {exc!r}", request=request
                )
            else:
                error = httpx.ReadError(f"Failed to read the response: {exc!r}", request=request)
            if retryable and not io.received:
                raise _Retry(error) from exc
            raise error from exc
        except (httpx.RemoteProtocolError, httpx.TimeoutException) as exc:
            exc.request = request
            if retryable and not io.received and isinstance(exc, httpx.RemoteProtocolError):
                raise _Retry(exc) from exc
            raise

    async def _connect(self, conn: _Conn, request: httpx.Request, timeouts: _Timeouts) -> None:
        scheme, host, port = conn.key
        conn.reused = False
        try:
            with anyio.fail_after(timeouts.get("connect")):
                if scheme == "http":
                    conn.io = _SocketIO(await _open_socket(host, port))
                    return
                context = self._ssl_context
                if context is None:
                    context = self._ssl_context = ssl.create_default_context()
                sni = request.extensions.get("sni_hostname") or host
                if isinstance(sni, bytes):
                    sni = sni.decode("ascii")
                stream = await anyio.connect_tcp(
                    host, port, ssl_context=context, tls_hostname=sni, tls_standard_compatible=False
                )
                conn.io = _StreamIO(stream)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"Timed out connecting to {host}:{port}", request=request
            ) from exc
        except (*_IO_ERRORS, anyio.EndOfStream) as exc:
            raise httpx.ConnectError(
                f"Failed to connect to {host}:{port}: {exc}", request=request
            ) from exc

    async def _acquire(
        self,
        key: _PoolKey,
        conn: _Conn | None,
        doomed: list[_Conn],
        pool_timeout: float | None,
        request: httpx.Request,
    ) -> _Conn:
        """The slow path of taking a connection: wait for one, close dropped ones."""
        if conn is None:
            with anyio.move_on_after(pool_timeout):
                first = True
                while conn is None:
                    event = anyio.Event()
                    if first:
                        self._waiters.append(event)
                        first = False
                    else:
                        self._waiters.appendleft(event)  # keep our place in the queue
                    try:
                        await event.wait()
                    except BaseException:
                        if event.is_set():
                            self._wake_one()  # hand our wake-up to the next in line
                        else:
                            self._waiters.remove(event)
                        raise
                    if self._closed:
                        raise RuntimeError("The FastTransport was closed.")
                    conn = self._try_acquire(key, doomed, queued=True)
        for victim in doomed:
            if victim.io is not None:
                await victim.io.aclose()
        if conn is None:
            raise httpx.PoolTimeout("Timed out waiting for a free connection", request=request)
        return conn

    def _try_acquire(self, key: _PoolKey, doomed: list[_Conn], queued: bool) -> _Conn | None:
        """Take an idle connection to ``key`` or reserve a slot for a new one, if possible.

        Connections found expired or dead on the way are moved to ``doomed``.
        """
        now = time.monotonic()
        if now >= self._next_purge:
            self._purge_expired(now, doomed)
        idle = self._idle.get(key)
        expiry = self._keepalive_expiry
        while idle:
            conn = idle.pop()
            assert conn.io is not None
            if (expiry is not None and now - conn.idle_since >= expiry) or conn.io.is_dead():
                self._conns.discard(conn)
                doomed.append(conn)
                continue
            return conn
        if len(self._conns) >= self._max_connections:
            if self._waiters and not queued:
                return None  # others are already waiting; join the queue
            # Make room by evicting the longest-idle connection to another origin.
            victim: _Conn | None = None
            for conns in self._idle.values():
                if conns and (victim is None or conns[0].idle_since < victim.idle_since):
                    victim = conns[0]
            if victim is None:
                return None
            self._remove_idle(victim)
            self._conns.discard(victim)
            doomed.append(victim)
        conn = _Conn(key)
        self._conns.add(conn)
        return conn

    def _purge_expired(self, now: float, doomed: list[_Conn]) -> None:
        """Drop idle connections (to any origin) older than ``keepalive_expiry``."""
        expiry = self._keepalive_expiry
        if expiry is None:
            self._next_purge = math.inf
            return
        self._next_purge = now + min(expiry, _PURGE_INTERVAL)
        for conns in self._idle.values():
            expired = [c for c in conns if now - c.idle_since >= expiry]
            if expired:
                for c in expired:
                    conns.remove(c)
                    self._conns.discard(c)
                doomed.extend(expired)

    def _remove_idle(self, conn: _Conn) -> None:
        self._idle[conn.key].remove(conn)

    def _release(self, conn: _Conn) -> None:
        """Put a connection that finished a response cleanly back in the pool."""
        conn.reused = True
        conn.idle_since = time.monotonic()
        idle = self._idle.get(conn.key)
        if idle is None:
            self._idle[conn.key] = [conn]
        else:
            idle.append(conn)
        if self._waiters:
            self._wake_one()

    async def _discard(self, conn: _Conn) -> None:
        """Close ``conn`` and free its slot; safe to call while being cancelled."""
        self._conns.discard(conn)
        if self._waiters:
            self._wake_one()
        io = conn.io
        conn.io = None
        if io is not None:
            await io.aclose()

    def _wake_one(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()

    # ------------------------------------------------------------------ close

    async def aclose(self) -> None:
        """Close all connections.  The transport cannot be used afterwards.

        Requests still in flight fail promptly with a transport error.
        """
        if self._closed:
            return
        self._closed = True
        idle = [c for conns in self._idle.values() for c in conns]
        self._idle.clear()
        for conn in idle:
            self._conns.discard(conn)
        for conn in self._conns:
            if conn.io is not None:
                conn.io.shutdown()  # its request task will see EOF and close it
        while self._waiters:
            self._waiters.popleft().set()
        for conn in idle:
            if conn.io is not None:
                await conn.io.aclose()
                conn.io = None
