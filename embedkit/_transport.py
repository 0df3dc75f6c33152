"""A lean HTTP/1.1 client transport for :mod:`httpx`, built on :mod:`anyio`.

Why this exists
---------------
httpx's default stack (``httpx`` -> ``httpcore`` -> ``h11``) spends most of its CPU
time in generic machinery: per-request event objects, an h11 state machine that
parses responses byte-event by byte-event, and several layers of locks and
wrappers.  For an embedding client that sends thousands of small POSTs over a
handful of keep-alive connections that overhead dominates.  :class:`FastTransport`
implements just the subset of HTTP/1.1 such a client needs, directly on anyio
byte streams, so it works unchanged under asyncio and trio.

Design
------
* **Pool.**  Connections are pooled per ``(scheme, host, port)``.  At most
  ``max_connections`` sockets are open (or being opened) at any time.  Idle
  connections are reused most-recently-used first and are discarded once they
  have been idle for longer than ``keepalive_expiry``.  When the pool is full,
  an idle connection to *another* origin is evicted; otherwise the request waits
  (FIFO) for a connection to be released, bounded by the ``pool`` timeout.
* **One request per connection at a time**, no pipelining.  The request head
  and a small body are written with a single ``send``.
* **Eager bodies.**  The response body is read completely before
  :meth:`FastTransport.handle_async_request` returns (embedding responses are at
  most a few MB).  The body is handed to httpx as a :class:`httpx.ByteStream`, so
  httpx's own ``Content-Encoding`` decoders (gzip, deflate, brotli, zstd) run and
  the headers are passed through exactly as the server sent them.
* **Framing.**  ``Content-Length``, ``Transfer-Encoding: chunked`` (trailers are
  read and discarded) and close-delimited bodies are supported.  ``1xx``
  interim responses (e.g. ``100 Continue``) are skipped; ``HEAD`` responses and
  ``204``/``304`` have no body.
* **Stale connections.**  If a connection taken from the idle pool fails while
  sending, or is closed/reset before a single response byte arrived, the request
  is retried once on a freshly opened connection (the same policy httpcore uses
  for keep-alive connections the server has already dropped).
* **Timeouts** come from ``request.extensions["timeout"]`` (set by
  ``httpx.AsyncClient``): ``connect`` bounds connection setup, ``write`` the
  request write, ``read`` every individual socket receive, and ``pool`` the wait
  for a free connection.  They raise the matching :mod:`httpx` exceptions.
* **Cancellation safety.**  A connection whose request was interrupted (by
  cancellation, a timeout or any error) is always closed and never returned to
  the pool, and its pool slot is released.

Limits
------
* HTTP/1.1 (and 1.0 servers) only: no HTTP/2, no proxies, no Unix sockets, no
  ``Upgrade``/``CONNECT`` tunnels, no streaming of response bodies.  Users who
  need any of these should pass their own ``httpx.AsyncClient`` (or transport)
  instead of relying on this default.
* Response heads larger than 256 KiB are rejected as a protocol error.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import time
from collections import deque
from typing import Literal

import anyio
import anyio.abc
import httpx

__all__ = ["FastTransport"]

_RECV_SIZE = 65536
_MAX_HEAD_SIZE = 256 * 1024
_MAX_CHUNK_LINE = 4096
_LARGE_BODY = 64 * 1024
_PURGE_INTERVAL = 1.0
_HEXDIGITS = b"0123456789abcdefABCDEF"
_NO_BODY_STATUS = frozenset((204, 304))
_HTTP11 = b"HTTP/1.1"
_HTTP10 = b"HTTP/1.0"

_PoolKey = tuple[str, str, int]
_Timeouts = dict[str, float | None]
_Headers = list[tuple[bytes, bytes]]


class _Conn:
    """One pool slot: a (possibly not yet opened) connection to one origin."""

    __slots__ = ("idle_since", "key", "reused", "stream")

    def __init__(self, key: _PoolKey) -> None:
        self.key = key
        self.stream: anyio.abc.ByteStream | None = None
        self.idle_since = 0.0
        self.reused = False


class _Retry(Exception):
    """Internal: a reused connection turned out to be dead before any response byte."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class _Reader:
    """Receives from a stream, re-arming the per-receive read timeout each time."""

    __slots__ = ("received", "scope", "stream", "timeout")

    def __init__(
        self, stream: anyio.abc.ByteStream, scope: anyio.CancelScope | None, timeout: float | None
    ) -> None:
        self.stream = stream
        self.scope = scope
        self.timeout = timeout
        self.received = False

    async def recv(self) -> bytes:
        """Return the next chunk of data, or ``b""`` once the peer has closed."""
        scope = self.scope
        if scope is not None:
            timeout = self.timeout
            scope.deadline = math.inf if timeout is None else anyio.current_time() + timeout
        try:
            data = await self.stream.receive(_RECV_SIZE)
        except anyio.EndOfStream:
            return b""
        self.received = True
        return data


def _find_head_end(data: bytes, start: int) -> tuple[int, int]:
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
    """Parse a response head (without the final blank line).

    Returns ``(status, reason, version, headers, framing, keep_alive)`` where
    ``framing`` is the Content-Length (``>= 0``), ``-1`` for chunked, ``-2`` for a
    close-delimited body and ``-3`` for "no body".
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
    chunked = False
    has_te = False
    connection_close = False
    connection_keep_alive = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name[-1] in (32, 9) or name[0] in (32, 9):
            if line[:1] in (b" ", b"\t") and headers and sep == b"":
                # Obsolete line folding: continuation of the previous header value.
                prev_name, prev_value = headers[-1]
                headers[-1] = (prev_name, prev_value + b" " + line.strip(b" \t"))
                continue
            raise httpx.RemoteProtocolError(f"Malformed response header line: {line[:100]!r}")
        value = value.strip(b" \t")
        headers.append((name, value))
        n = len(name)
        if n == 14 or n == 17 or n == 10:
            lname = name.lower()
            if lname == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    raise httpx.RemoteProtocolError(f"Invalid Content-Length: {value[:40]!r}")
                length = int(value)
                if content_length not in (-1, length):
                    raise httpx.RemoteProtocolError("Conflicting Content-Length headers")
                content_length = length
            elif lname == b"transfer-encoding":
                has_te = True
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif lname == b"connection":
                for token in value.lower().split(b","):
                    token = token.strip()
                    if token == b"close":
                        connection_close = True
                    elif token == b"keep-alive":
                        connection_keep_alive = True

    if version == _HTTP11:
        keep_alive = not connection_close
    else:
        keep_alive = connection_keep_alive and not connection_close
    if force_close:
        keep_alive = False

    if head_request or status < 200 or status in _NO_BODY_STATUS:
        framing = -3
    elif has_te:
        if chunked:
            framing = -1
        else:
            framing = -2
            keep_alive = False
    elif content_length >= 0:
        framing = content_length
    else:
        framing = -2
        keep_alive = False
    return status, reason, version, headers, framing, keep_alive


async def _read_chunked(reader: _Reader, first: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body.  Returns ``(body, clean_end)``."""
    data = bytearray(first)
    pos = 0
    parts: list[bytes] = []

    async def fill() -> None:
        nonlocal pos
        if pos:
            del data[:pos]
            pos = 0
        more = await reader.recv()
        if not more:
            received = sum(len(p) for p in parts)
            raise httpx.RemoteProtocolError(
                f"peer closed connection mid-body (received {received} bytes of a chunked body)"
            )
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
        pos = end + 2

    # Trailer section: header lines terminated by an empty line; discarded.
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


class FastTransport(httpx.AsyncBaseTransport):
    """A small, fast HTTP/1.1 keep-alive transport for :class:`httpx.AsyncClient`.

    Use it as ``httpx.AsyncClient(transport=FastTransport())``.  It works under
    both asyncio and trio (via anyio).  See the module docstring for the exact
    feature set; proxies and HTTP/2 are not supported.

    :param max_connections: upper bound on simultaneously open connections
        across all origins.
    :param keepalive_expiry: seconds an idle connection is kept for reuse;
        ``None`` keeps idle connections until the server closes them.
    :param ssl_context: TLS configuration for ``https`` URLs; defaults to
        :func:`ssl.create_default_context` (certificate and host verification on).
    :param connect_timeout_default: connect timeout used when a request carries
        no ``timeout`` extension (i.e. when the transport is used without
        :class:`httpx.AsyncClient`).
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
        self._default_timeouts: _Timeouts = {
            "connect": connect_timeout_default,
            "read": None,
            "write": None,
            "pool": None,
        }
        self._conns: set[_Conn] = set()
        self._idle: dict[_PoolKey, list[_Conn]] = {}
        self._waiters: deque[anyio.Event] = deque()
        self._next_purge = 0.0
        self._closed = False

    # ------------------------------------------------------------------ info

    @property
    def num_connections(self) -> int:
        """Number of open (or opening) connections, idle or in use."""
        return len(self._conns)

    @property
    def num_idle_connections(self) -> int:
        """Number of idle keep-alive connections available for reuse."""
        return sum(len(idle) for idle in self._idle.values())

    # ------------------------------------------------------------- requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response with its body fully read."""
        if self._closed:
            raise RuntimeError("FastTransport is closed; create a new transport or client.")
        url = request.url
        scheme = url.scheme
        if scheme == "http":
            default_port = 80
        elif scheme == "https":
            default_port = 443
        else:
            raise httpx.UnsupportedProtocol(
                f"FastTransport supports only http:// and https:// URLs, not {scheme!r}.",
                request=request,
            )
        key: _PoolKey = (scheme, url.host, url.port or default_port)
        timeouts: _Timeouts = request.extensions.get("timeout") or self._default_timeouts
        head_request = request.method == "HEAD"

        payload, body, force_close = await self._serialize(request)

        conn = await self._acquire(key, timeouts.get("pool"), request)
        try:
            try:
                if conn.stream is None:
                    await self._connect(conn, request, timeouts)
                result = await self._exchange(
                    conn, request, payload, body, head_request, force_close, timeouts
                )
            except _Retry as exc:
                # A stale keep-alive connection: retry once on a fresh connection,
                # keeping our pool slot.
                stream = conn.stream
                conn.stream = None
                conn.reused = False
                if stream is not None:
                    await _close_quietly(stream)
                if self._closed:
                    raise exc.error from None
                await self._connect(conn, request, timeouts)
                try:
                    result = await self._exchange(
                        conn, request, payload, body, head_request, force_close, timeouts
                    )
                except _Retry as exc2:  # pragma: no cover - fresh connections never retry
                    raise exc2.error from None
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
            extensions={"http_version": version, "reason_phrase": reason},
        )

    async def _serialize(self, request: httpx.Request) -> tuple[bytes, bytes, bool]:
        """Build the request head (plus body when small) for a single ``send``."""
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        url = request.url
        parts = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        has_host = False
        chunked = False
        force_close = False
        raw_headers = request.headers.raw
        for name, value in raw_headers:
            n = len(name)
            if n == 4 or n == 17 or n == 10:
                lname = name.lower()
                if lname == b"host":
                    has_host = True
                elif lname == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif lname == b"connection":
                    force_close = b"close" in value.lower()
            parts += (name, b": ", value, b"\r\n")
        line_count = len(raw_headers) + 2
        if not has_host:
            parts += (b"Host: ", url.netloc, b"\r\n")
            line_count += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != line_count or head.count(b"\r") != line_count:
            raise httpx.LocalProtocolError(
                "Request line or header contains CR or LF characters", request=request
            )
        if chunked:
            # A streaming body was read into memory; send it as one chunk.
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        if len(body) <= _LARGE_BODY:
            return head + body, b"", force_close
        return head, body, force_close

    async def _exchange(
        self,
        conn: _Conn,
        request: httpx.Request,
        payload: bytes,
        body: bytes,
        head_request: bool,
        force_close: bool,
        timeouts: _Timeouts,
    ) -> tuple[int, bytes, bytes, _Headers, bytes, bool]:
        """Write the request and read one complete response on ``conn``."""
        stream = conn.stream
        assert stream is not None
        reused = conn.reused
        write_timeout = timeouts.get("write")
        read_timeout = timeouts.get("read")
        scope: anyio.CancelScope | None = None
        if write_timeout is not None or read_timeout is not None:
            scope = anyio.CancelScope()
        reader = _Reader(stream, scope, read_timeout)
        writing = True
        try:
            with scope if scope is not None else _NULL_SCOPE:
                if scope is not None and write_timeout is not None:
                    scope.deadline = anyio.current_time() + write_timeout
                await stream.send(payload)
                if body:
                    await stream.send(body)
                writing = False
                return await self._read_response(reader, head_request, force_close)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            if writing:
                error: httpx.TransportError = httpx.WriteError(
                    f"Failed to send request: {exc!r}", request=request
                )
            else:
                error = httpx.ReadError(f"Failed to read response: {exc!r}", request=request)
            if reused and not reader.received:
                raise _Retry(error) from exc
            raise error from exc
        except httpx.RemoteProtocolError as exc:
            if reused and not reader.received:
                raise _Retry(exc) from exc
            exc.request = request
            raise
        # Only reached when our own timeout scope swallowed the cancellation.
        if writing:
            raise httpx.WriteTimeout("Timed out while sending the request", request=request)
        raise httpx.ReadTimeout("Timed out while reading the response", request=request)

    async def _read_response(
        self, reader: _Reader, head_request: bool, force_close: bool
    ) -> tuple[int, bytes, bytes, _Headers, bytes, bool]:
        data = await reader.recv()
        if not data:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        while True:
            # Accumulate until the end of the response head.
            end, sep = _find_head_end(data, 0)
            while end < 0:
                if len(data) > _MAX_HEAD_SIZE:
                    raise httpx.RemoteProtocolError("Response head too large")
                more = await reader.recv()
                if not more:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected while sending the response headers."
                    )
                start = max(len(data) - 3, 0)
                data += more
                end, sep = _find_head_end(data, start)
            status, reason, version, headers, framing, keep_alive = _parse_head(
                data[:end], head_request, force_close
            )
            data = data[end + sep :]
            if status >= 200 or status == 101:
                break
            # Interim response (100 Continue, 103 Early Hints, ...): skip it.
            if not data:
                data = await reader.recv()
                if not data:
                    raise httpx.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    )
        rest = data

        if framing >= 0:
            have = len(rest)
            if have >= framing:
                if have > framing:
                    keep_alive = False
                    rest = rest[:framing]
                return status, reason, version, headers, rest, keep_alive
            parts = [rest]
            while have < framing:
                more = await reader.recv()
                if not more:
                    raise httpx.RemoteProtocolError(
                        f"peer closed connection mid-body (received {have} of {framing} bytes)"
                    )
                parts.append(more)
                have += len(more)
            content = b"".join(parts)
            if have > framing:
                keep_alive = False
                content = content[:framing]
            return status, reason, version, headers, content, keep_alive
        if framing == -1:
            content, clean = await _read_chunked(reader, rest)
            return status, reason, version, headers, content, keep_alive and clean
        if framing == -2:
            parts = [rest]
            while True:
                more = await reader.recv()
                if not more:
                    break
                parts.append(more)
            return status, reason, version, headers, b"".join(parts), False
        # No body (HEAD, 1xx/101, 204, 304).
        return status, reason, version, headers, b"", keep_alive and not rest and status != 101

    # ----------------------------------------------------------------- pool

    async def _acquire(
        self, key: _PoolKey, pool_timeout: float | None, request: httpx.Request
    ) -> _Conn:
        """Take an idle connection for ``key`` or reserve a slot for a new one."""
        doomed: list[_Conn] = []
        conn = self._try_acquire(key, doomed)
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
                            self._wake_one()  # pass the wake-up on
                        else:
                            self._waiters.remove(event)
                        raise
                    if self._closed:
                        raise RuntimeError(
                            "FastTransport was closed while waiting for a connection."
                        )
                    conn = self._try_acquire(key, doomed, priority=True)
            if conn is None:
                await _close_all(doomed)
                raise httpx.PoolTimeout("Timed out waiting for a free connection", request=request)
        if doomed:
            await _close_all(doomed)
        return conn

    def _try_acquire(
        self, key: _PoolKey, doomed: list[_Conn], priority: bool = False
    ) -> _Conn | None:
        now = time.monotonic()
        if now >= self._next_purge:
            self._purge_expired(now, doomed)
        idle = self._idle.get(key)
        if idle:
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            return conn
        if len(self._conns) >= self._max_connections:
            if self._waiters and not priority:
                return None
            # Evict the least recently used idle connection of another origin.
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
        self._next_purge = now + _PURGE_INTERVAL
        expiry = self._keepalive_expiry
        if expiry is None:
            return
        for key in list(self._idle):
            conns = self._idle[key]
            fresh = [c for c in conns if now - c.idle_since <= expiry]
            if len(fresh) != len(conns):
                for c in conns:
                    if now - c.idle_since > expiry:
                        self._conns.discard(c)
                        doomed.append(c)
                if fresh:
                    self._idle[key] = fresh
                else:
                    del self._idle[key]

    def _remove_idle(self, conn: _Conn) -> None:
        conns = self._idle[conn.key]
        conns.remove(conn)
        if not conns:
            del self._idle[conn.key]

    def _release(self, conn: _Conn) -> None:
        """Return a healthy connection to the idle pool."""
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
        """Close ``conn`` and free its pool slot (safe under cancellation)."""
        self._conns.discard(conn)
        stream = conn.stream
        conn.stream = None
        if self._waiters:
            self._wake_one()
        if stream is not None:
            await _close_quietly(stream)

    def _wake_one(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()

    async def _connect(self, conn: _Conn, request: httpx.Request, timeouts: _Timeouts) -> None:
        scheme, host, port = conn.key
        timeout = timeouts.get("connect")
        try:
            with anyio.fail_after(timeout):
                if scheme == "https":
                    ctx = self._ssl_context
                    if ctx is None:
                        ctx = self._ssl_context = ssl.create_default_context()
                    sni = request.extensions.get("sni_hostname") or host
                    if isinstance(sni, bytes):
                        sni = sni.decode("ascii")
                    conn.stream = await anyio.connect_tcp(
                        host,
                        port,
                        ssl_context=ctx,
                        tls_hostname=sni,
                        tls_standard_compatible=False,
                    )
                else:
                    conn.stream = await anyio.connect_tcp(host, port)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"Timed out connecting to {host}:{port}", request=request
            ) from exc
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise httpx.ConnectError(
                f"Failed to connect to {host}:{port}: {exc}", request=request
            ) from exc
        conn.reused = False

    # ---------------------------------------------------------------- close

    async def aclose(self) -> None:
        """Close every connection.  The transport cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        conns = list(self._conns)
        self._conns.clear()
        self._idle.clear()
        while self._waiters:
            self._waiters.popleft().set()
        streams = [c.stream for c in conns if c.stream is not None]
        for c in conns:
            c.stream = None
        with anyio.CancelScope(shield=True):
            for stream in streams:
                await _close_stream(stream)


class _NullScope:
    """A no-op stand-in for a CancelScope when no timeouts apply."""

    cancelled_caught = False

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> Literal[False]:
        return False


_NULL_SCOPE = _NullScope()


async def _close_stream(stream: anyio.abc.ByteStream) -> None:
    # Closing an already broken connection may complain; it is gone either way.
    with contextlib.suppress(OSError, anyio.BrokenResourceError):
        await stream.aclose()


async def _close_quietly(stream: anyio.abc.ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        await _close_stream(stream)


async def _close_all(conns: list[_Conn]) -> None:
    streams = [c.stream for c in conns if c.stream is not None]
    for c in conns:
        c.stream = None
    if streams:
        with anyio.CancelScope(shield=True):
            for stream in streams:
                await _close_stream(stream)
