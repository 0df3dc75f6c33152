"""A lean HTTP/1.1 client transport for httpx: llhttp parses, anyio moves the bytes.

Why this exists
---------------
httpx's default stack (httpx -> httpcore -> h11) spends most of its CPU time in
generic machinery: a pure-Python state machine that turns every response into a
stream of events, several layers of locks, wrappers and per-request objects.  An
embedding client sends many small POSTs over a few keep-alive connections, so that
overhead dominates its CPU budget.  `FastTransport` keeps httpx's interface and its
client layer, and replaces the layers below with three small ones.

Layers
------
* **Bytes on the wire: anyio.**  Connections are anyio streams from
  `anyio.connect_tcp` (Happy Eyeballs over every resolved address; TLS with ALPN
  ``http/1.1`` and the SNI name), so the transport runs under asyncio and trio alike.
* **Parsing: llhttp.**  Responses are parsed by ``httptools`` (the binding of
  Node.js's llhttp that uvicorn uses).  Status line, headers, Content-Length,
  chunked bodies (extensions, trailers), close-delimited bodies, 1xx interim
  responses and bodiless statuses are all llhttp's.  This module adds only the
  refusals a client owes its caller: a Transfer-Encoding other than exactly
  ``chunked`` (``gzip, chunked`` included) or a repeated one, a response head over
  `MAX_HEAD_SIZE`, a body over ``max_response_size``.  Content-Encoding (gzip,
  deflate, br, zstd) is left to httpx's own decoders, as with its stock transport.
* **Pool.**  Connections are pooled per ``(scheme, host, port)``; at most
  ``max_connections`` are open (or opening) at once.  Idle connections are reused
  most-recently-used first, dropped after ``keepalive_expiry`` seconds, and checked
  before reuse: a socket that is readable while idle (the server closed it, or sent
  bytes nobody asked for) is closed instead, TLS or not.  When the pool is full, an
  idle connection to another origin is evicted; otherwise the request waits in FIFO
  order for a release, bounded by the ``pool`` timeout.
* **The backend's fast path.**  `HttpBackend` builds the bytes of its request line
  and headers once (`PreparedPost`, byte for byte what ``httpx.Request`` would
  serialize) and posts each body with `FastTransport.send_prepared`: the same pool,
  re-sending, timeouts and errors, without httpx's Request and Response models.  Its
  `RawResponse` holds the body as received; an answer with a Content-Encoding goes
  through ``httpx.Response`` (`RawResponse.to_httpx`) to be decoded as httpx does.

What it does the way httpcore does
----------------------------------
* **Re-sending.**  A request is sent again by the transport only when it went out
  on a reused connection that the server had already closed: the write failed and
  not one response byte arrived.  Such re-sends are counted (`resent_requests`;
  embedkit reports them in ``stats().retries``).  Any other failure is raised, and
  the caller's retry policy decides.
* **Early responses.**  A large body is sent in 64 KiB pieces, and the socket is
  checked between pieces: a server that answers before reading it all (a proxy's
  413) is heard and its answer returned.  When a write fails, the response the
  server may have sent before closing is read too.  Either way the connection is
  not reused.
* **Dead connections on asyncio.**  asyncio reports a failed send by closing the
  socket rather than raising; a reused connection whose socket is found closed
  right after the send counts as a failed write.
* **Timeouts** come from ``request.extensions["timeout"]`` (httpx sets it):
  ``connect`` bounds connection setup, ``write`` each send, ``read`` each wait for
  response bytes, ``pool`` the wait for a connection.  One cancel scope covers a
  whole exchange (see `_Deadline`): a scope with a deadline costs more CPU on
  asyncio than parsing a response, so there is not one per send and per receive.
* **Cancellation safety.**  A connection whose request was interrupted is closed,
  never returned to the pool, and its slot is released.

Limits
------
* HTTP/1.1 (and HTTP/1.0 servers) only: no HTTP/2, no proxies, no Unix sockets, no
  ``Upgrade``/CONNECT tunnels, no streamed response bodies (the whole body is read
  before `handle_async_request` returns; embedding answers are at most a few MB).
  embedkit routes through httpx's stock transport when any of these is needed.
* Streamed request bodies are read into memory and sent as one chunk.
* Where llhttp is stricter than h11 (obsolete header line folding, a repeated
  Content-Length even with equal values, Content-Length with chunked), the response
  is refused as a protocol error; ``tests/test_transport_differential.py`` pins it.
* The connection that carried a HEAD request is not reused (llhttp cannot be told
  from Python that the answer to HEAD has no body; it is parsed up to its head).
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
import time
from collections import deque
from typing import Any

import anyio
import anyio.abc
import httptools
import httpx

__all__ = ["MAX_HEAD_SIZE", "FastTransport", "PreparedPost", "RawResponse", "ResponseTooLarge"]

#: Largest response head (status line and headers) accepted, in bytes; httpcore's h11 limit.
MAX_HEAD_SIZE = 100 * 1024
#: Bytes of framing (chunk-size line, extensions, trailers) allowed per chunk.
_MAX_CHUNK_OVERHEAD = 16 * 1024
#: Bytes asked for per receive: asyncio reads at most 256 KiB per wake-up, and anyio
#: splits (copies) a chunk larger than what was asked for, one receive per piece.
_RECV_SIZE = 256 * 1024
_SMALL_BODY = 64 * 1024
_PURGE_INTERVAL = 1.0

_PoolKey = tuple[str, str, int]
_Timeouts = dict[str, Any]
_Headers = list[tuple[bytes, bytes]]

# Errors that mean "this connection is broken" (as opposed to a protocol error).
_IO_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class ResponseTooLarge(httpx.TransportError):
    """The response body is larger than the transport's ``max_response_size``."""


class _HeadDone(Exception):
    """Raised inside the parser to stop it after the head of a response to HEAD."""


# ------------------------------------------------------------------------ parsing


class _Message:
    """The httptools callbacks for one connection: collects the current response."""

    __slots__ = (
        "body",
        "body_size",
        "chunks",
        "complete",
        "encoded",
        "extra",
        "fed",
        "head_request",
        "headers",
        "headers_done",
        "keep_alive",
        "limit",
        "parser",
        "reason",
        "saw_length",
        "saw_te",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        # Bare LF line ends in a head are accepted, as h11 and browsers accept them.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.keep_alive = False
        self.limit: int | None = None
        self.head_request = False
        self.complete = False
        self.fed = 0
        self.reset()

    def reset(self) -> None:
        self.headers: _Headers = []
        self.reason = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.chunks = 0
        self.headers_done = False
        self.saw_length = False
        self.saw_te = False
        self.encoded = False  # a Content-Encoding header: the body needs httpx's decoders
        self.extra = False  # bytes arrived after the message: the connection is out of step

    def start(self, head_request: bool, limit: int | None) -> None:
        self.reset()
        self.complete = self.keep_alive = False
        self.head_request = head_request
        self.limit = limit
        self.fed = 0  # bytes fed to the parser for this response (head, framing and body)

    # httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True
        else:
            self.reset()  # a new message: the first, or the one after a 1xx

    def on_status(self, status: bytes) -> None:
        self.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field: dropped, as httpx's stock transport drops them
        if value and value[-1] in (32, 9):  # llhttp keeps trailing whitespace; h11 drops it
            value = value.rstrip(b" \t")
        size = len(name)
        if size == 17 or size == 14 or size == 16:
            lname = name.lower()
            if lname == b"content-encoding":
                self.encoded = True
            elif lname == b"transfer-encoding":
                if self.saw_te:
                    raise httpx.RemoteProtocolError("Repeated Transfer-Encoding header")
                if value.strip(b" \t").lower() != b"chunked":
                    raise httpx.RemoteProtocolError(
                        f"Unsupported Transfer-Encoding: {value[:40]!r} (only chunked)"
                    )
                self.saw_te = True
            elif lname == b"content-length":
                self.saw_length = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.head_request and self.parser.get_status_code() >= 200:
            self.complete = True
            raise _HeadDone

    def on_chunk_header(self) -> None:
        self.chunks += 1

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.limit is not None and self.body_size > self.limit:
            raise ResponseTooLarge(
                f"Response body over the limit of {self.limit} bytes (max_response_size)"
            )
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers_done = False  # an interim response: the real one follows
            return
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside this callback
        self.complete = True

    # ------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Parse the next bytes; afterwards `complete` says whether the response is whole."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadDone):
                self.extra = True  # the parser stopped mid-stream: never reuse it
                return
            if isinstance(cause, httpx.TransportError):
                raise cause from None
            raise httpx.RemoteProtocolError(f"Malformed response: {exc}") from exc
        except httptools.HttpParserUpgrade:
            self.complete = self.extra = True  # 101: the connection is no longer HTTP
        except httptools.HttpParserError as exc:
            if self.complete:
                self.extra = True  # junk after a complete response
                return
            raise httpx.RemoteProtocolError(f"Malformed response: {exc}") from exc

    def eof(self, received: bool) -> None:
        """The server closed the connection: end a close-delimited body, or raise."""
        if self.headers_done and not self.saw_length and not self.saw_te:
            self.complete = True
            return
        if not received:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if not self.headers_done:
            raise httpx.RemoteProtocolError("Server disconnected while sending the response head.")
        raise httpx.RemoteProtocolError(
            f"peer closed connection without sending complete message body "
            f"(received {self.body_size} bytes)"
        )

    def head_overflow(self) -> bool:
        """Whether more framing than any sane response needs has arrived."""
        return self.fed - self.body_size > MAX_HEAD_SIZE + self.chunks * _MAX_CHUNK_OVERHEAD


# --------------------------------------------------------------------------- pool


class _Conn:
    """A pool slot: a (possibly not yet opened) connection to one origin."""

    __slots__ = ("idle_since", "key", "message", "received", "reused", "sock", "stream")

    def __init__(self, key: _PoolKey) -> None:
        self.key = key
        self.stream: anyio.abc.ByteStream | None = None
        self.sock: Any = None  # the stream's socket, looked up once (anyio's lookup is slow)
        self.message: _Message | None = None
        self.idle_since = 0.0
        self.reused = False  # came from the idle pool (so the server may have closed it)
        self.received = False  # has any response byte arrived for the current request?

    def raw_socket(self) -> Any:
        return self.sock if self.stream is not None else None

    def readable(self) -> bool:
        """Whether the socket has bytes (or EOF) waiting, without reading them."""
        sock = self.raw_socket()
        if sock is None:
            return False
        fd = sock.fileno()
        if fd < 0:
            return True
        try:
            ready, _, _ = select.select([fd], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def is_dead(self) -> bool:
        """Whether an idle connection was closed by the server (or has unexpected bytes)."""
        return self.readable()

    def closed_underneath(self) -> bool:
        """Whether the socket was closed by the event loop (asyncio, after a failed send)."""
        sock = self.raw_socket()
        return sock is not None and sock.fileno() < 0

    def shutdown(self) -> None:
        """Wake up any task using the connection; it will then close it."""
        sock = self.raw_socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def aclose(self) -> None:
        stream, self.stream = self.stream, None
        self.message = None
        if stream is not None:
            # Closing an already broken connection may complain; it is gone either way.
            with anyio.CancelScope(shield=True), contextlib.suppress(*_IO_ERRORS):
                await stream.aclose()


class _Deadline:
    """The write and read timeouts of one exchange, kept by one cancel scope.

    Entering and leaving an anyio cancel scope with a deadline costs ~10 µs on asyncio,
    more than parsing a response, so one scope covers a whole exchange instead of one
    scope per send and per receive.  ``write`` bounds each send: the deadline is moved
    before every piece of a large body, and a deadline that fires while sending is a
    `httpx.WriteTimeout`.  ``read`` bounds each wait for response bytes: the deadline
    is not moved as bytes arrive; when it fires and bytes did arrive within ``read``
    seconds, reading resumes under a new scope (a receive is safe to cancel: no byte
    is lost), so it is a `httpx.ReadTimeout` only after ``read`` seconds without one.
    Times are anyio's clock, so that a test's virtual clock (trio's MockClock) is obeyed.
    """

    __slots__ = ("read", "reading", "since", "write")

    def __init__(self, timeouts: _Timeouts) -> None:
        self.write: float | None = timeouts.get("write")
        self.read: float | None = timeouts.get("read")
        self.reading = False
        self.since = math.nan  # the last progress (anyio.current_time())

    def scope(self) -> anyio.CancelScope:
        """A cancel scope for the current phase, with the deadline its limit sets."""
        limit = self.read if self.reading else self.write
        if not self.reading:
            self.since = anyio.current_time()
        if limit is None:
            return anyio.CancelScope()
        return anyio.CancelScope(deadline=self.since + limit)

    def wrote(self, scope: anyio.CancelScope) -> None:
        """A piece of the body went out: the next one gets the whole write timeout."""
        self.since = anyio.current_time()
        if self.write is not None:
            scope.deadline = self.since + self.write

    def start_reading(self, scope: anyio.CancelScope) -> None:
        """The request is sent (or failed): from now on the read timeout applies."""
        self.reading = True
        self.since = anyio.current_time()
        read = self.read
        # A deadline later than the read timeout's must move; an earlier one (the
        # write timeout's, when read >= write) is left to fire and be re-armed.
        if read is not None and (self.write is None or read < self.write):
            scope.deadline = self.since + read

    def progress(self) -> None:
        """Response bytes arrived."""
        self.since = anyio.current_time()

    def expired(self) -> bool:
        """After the scope fired: whether the current phase really ran out of time."""
        if not self.reading:
            return True
        # the deadline's own arithmetic: a deadline that fired always counts as reached
        return self.read is not None and anyio.current_time() >= self.since + self.read


class _EarlyResponse(Exception):
    """The server started answering before the request body was all sent."""


class _Resend(Exception):
    """The server had closed this reused connection before our request: send it anew."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


#: status, reason, HTTP version, headers, body (as received), reusable, Content-Encoding set
_Result = tuple[int, bytes, bytes, _Headers, bytes, bool, bool]


class FastTransport(httpx.AsyncBaseTransport):
    """A small, fast HTTP/1.1 keep-alive transport for `httpx.AsyncClient`.

    Use it as ``httpx.AsyncClient(transport=FastTransport())``.  It works under
    asyncio and trio.  See the module docstring for what it supports; for proxies
    or HTTP/2, use httpx's own transport.

    Args:
        max_connections: Most connections open at once, over all origins.
        keepalive_expiry: Seconds an idle connection is kept for reuse; ``None``
            keeps idle connections until the server closes them.
        ssl_context: TLS settings for ``https://`` URLs.  Defaults to httpx's own
            (`httpx.create_ssl_context()`: certifi, or ``SSL_CERT_FILE`` /
            ``SSL_CERT_DIR``).  ALPN ``http/1.1`` is set on it.
        connect_timeout_default: Connect timeout for requests that carry no
            ``timeout`` extension, i.e. when the transport is used without
            `httpx.AsyncClient`.
        max_response_size: Largest response body accepted, in bytes as received
            (before Content-Encoding is undone); a larger one raises
            `ResponseTooLarge` as soon as it is seen.  ``None``: no limit.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float | None = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_default: float | None = None,
        max_response_size: int | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if max_response_size is not None and max_response_size < 0:
            raise ValueError("max_response_size must be >= 0")
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["http/1.1"])  # as httpcore does
        self._ssl_context = ssl_context
        self._max_response_size = max_response_size
        self._default_timeouts: _Timeouts = {"connect": connect_timeout_default}
        self._conns: set[_Conn] = set()
        self._idle: dict[_PoolKey, list[_Conn]] = {}
        self._waiters: deque[anyio.Event] = deque()
        self._next_purge = 0.0
        self._closed = False
        self._resent = 0

    @property
    def num_connections(self) -> int:
        """Connections currently open or opening, idle or in use."""
        return len(self._conns)

    @property
    def num_idle_connections(self) -> int:
        """Idle keep-alive connections waiting in the pool."""
        return sum(len(idle) for idle in self._idle.values())

    @property
    def resent_requests(self) -> int:
        """Requests sent again on a new connection: the reused one had been closed."""
        return self._resent

    # -------------------------------------------------------------- requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response, with the body already read."""
        if self._closed:
            raise RuntimeError("Cannot send a request: the FastTransport has been closed.")
        key = _pool_key(request.url, request)
        timeouts: _Timeouts = request.extensions.get("timeout") or self._default_timeouts
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        first, second, close = _serialize(request, body)
        sni = request.extensions.get("sni_hostname") or key[1]
        if isinstance(sni, bytes):
            sni = sni.decode("ascii")
        status, reason, version, headers, content, _, _ = await self._round_trip(
            key, first, second, close, timeouts, request, request.method == "HEAD", sni
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"http_version": version, "reason_phrase": reason},
        )

    async def send_prepared(
        self, prepared: PreparedPost, body: bytes, timeouts: _Timeouts | None
    ) -> RawResponse:
        """POST ``body`` with a head built once (`PreparedPost`): no httpx models.

        The same connection pool, re-sending, limits and errors as
        `handle_async_request` (errors carry no ``request``).  The body comes back as
        received: when ``RawResponse.encoded`` is true, its Content-Encoding is still to
        be undone (`RawResponse.to_httpx` does it as httpx would).
        """
        if self._closed:
            raise RuntimeError("Cannot send a request: the FastTransport has been closed.")
        head = prepared.head + b"Content-Length: %d\r\n\r\n" % len(body)
        if len(body) <= _SMALL_BODY:
            first, second = head + body, b""
        else:
            first, second = head, body
        result = await self._round_trip(
            prepared.key,
            first,
            second,
            prepared.close,
            timeouts or self._default_timeouts,
            None,
            False,
            prepared.key[1],
        )
        return RawResponse(*result)

    async def _round_trip(
        self,
        key: _PoolKey,
        first: bytes,
        second: bytes,
        close: bool,
        timeouts: _Timeouts,
        request: httpx.Request | None,
        head: bool,
        sni: str,
    ) -> _Result:
        """Take a connection, exchange one request and response on it, give it back."""
        doomed: list[_Conn] = []
        conn = self._try_acquire(key, doomed, queued=False)
        if conn is None or doomed:
            conn = await self._acquire(key, conn, doomed, timeouts.get("pool"), request)
        try:
            try:
                if conn.stream is None:
                    await self._connect(conn, request, timeouts, sni)
                result = await self._exchange(conn, request, head, first, second, close, timeouts)
            except _Resend as resend:
                # The server had dropped this keep-alive connection before our request
                # reached it: one fresh attempt, keeping our pool slot.
                await conn.aclose()
                if self._closed:
                    raise resend.error from resend.__cause__
                self._resent += 1
                await self._connect(conn, request, timeouts, sni)
                result = await self._exchange(conn, request, head, first, second, close, timeouts)
        except BaseException:
            await self._discard(conn)
            raise

        if result[5] and not self._closed:
            self._release(conn)
        else:
            await self._discard(conn)
        return result

    async def _exchange(
        self,
        conn: _Conn,
        request: httpx.Request | None,
        head: bool,
        first: bytes,
        second: bytes,
        close: bool,
        timeouts: _Timeouts,
    ) -> _Result:
        """Write the request on ``conn`` and read its complete response."""
        conn.received = False
        message = conn.message
        assert message is not None
        message.start(head, self._max_response_size)
        clock = _Deadline(timeouts)
        write_error: httpx.WriteError | None = None
        write_cause: BaseException | None = None
        try:
            while True:
                with clock.scope() as scope:
                    if not clock.reading:
                        try:
                            await self._write(conn, first, second, clock, scope)
                        except (*_IO_ERRORS, _EarlyResponse) as exc:
                            write_error = httpx.WriteError(
                                f"Failed to send the request: {exc!r}", request=request
                            )
                            write_cause = exc
                        clock.start_reading(scope)
                    await self._read(conn, message, clock)
                if not scope.cancelled_caught:
                    break
                if clock.expired():
                    if clock.reading:
                        raise httpx.ReadTimeout("Timed out while reading the response")
                    raise httpx.WriteTimeout("Timed out while sending the request")
        except (*_IO_ERRORS, httpx.TransportError) as exc:
            if write_error is not None:
                # The server may have answered before closing (a proxy's 413); it did not.
                if conn.reused and not conn.received:
                    raise _Resend(write_error) from write_cause
                raise write_error from write_cause
            if isinstance(exc, httpx.TransportError):
                if request is not None:
                    exc.request = request
                raise
            raise httpx.ReadError(f"Failed to read the response: {exc!r}", request=request) from exc
        parser = message.parser
        keep_alive = (
            message.keep_alive
            and write_error is None  # the rest of the body is unsent: not reusable
            and not (close or message.extra or message.head_request)
        )
        body = message.body
        content = body[0] if len(body) == 1 else b"".join(body)
        version = b"HTTP/" + parser.get_http_version().encode("ascii")
        status = parser.get_status_code()
        return (
            status,
            message.reason,
            version,
            message.headers,
            content,
            keep_alive,
            message.encoded,
        )

    async def _write(
        self, conn: _Conn, first: bytes, second: bytes, clock: _Deadline, scope: anyio.CancelScope
    ) -> None:
        """Send the request: the head (with a small body), then a large body in pieces."""
        stream = conn.stream
        assert stream is not None
        await stream.send(first)
        # A large body goes in pieces; a server that answers before reading it all
        # (a proxy's 413) is heard between pieces instead of after a failed write.
        for start in range(0, len(second), _SMALL_BODY):
            if conn.readable():
                raise _EarlyResponse
            clock.wrote(scope)
            await stream.send(second[start : start + _SMALL_BODY])
        if conn.reused and conn.closed_underneath():
            # asyncio reports a failed send by closing the socket, not by raising.
            raise anyio.BrokenResourceError

    async def _read(self, conn: _Conn, message: _Message, clock: _Deadline) -> None:
        """Read until ``message`` holds one complete response (resumable after a cancel)."""
        stream = conn.stream
        assert stream is not None
        while not message.complete:
            try:
                data = await stream.receive(_RECV_SIZE)
            except anyio.EndOfStream:
                data = b""
            if not data:
                message.eof(conn.received)
                return
            conn.received = True
            clock.progress()
            message.fed += len(data)
            message.feed(data)
            if not message.complete and message.head_overflow():
                raise httpx.RemoteProtocolError("Response head or chunk framing too large")

    async def _connect(
        self, conn: _Conn, request: httpx.Request | None, timeouts: _Timeouts, sni: str
    ) -> None:
        scheme, host, port = conn.key
        conn.reused = False
        try:
            with anyio.fail_after(timeouts.get("connect")):
                conn.stream = await self._open_stream(scheme, host, port, sni)
                conn.sock = conn.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"Timed out connecting to {host}:{port}", request=request
            ) from exc
        except (*_IO_ERRORS, anyio.EndOfStream) as exc:
            raise httpx.ConnectError(
                f"Failed to connect to {host}:{port}: {exc}", request=request
            ) from exc
        conn.message = _Message()

    async def _open_stream(
        self, scheme: str, host: str, port: int, sni: str
    ) -> anyio.abc.ByteStream:
        """A connected byte stream: the seam the differential tests script bytes through."""
        if scheme == "http":
            return await anyio.connect_tcp(host, port)
        return await anyio.connect_tcp(
            host,
            port,
            ssl_context=self._tls_context(),
            tls_hostname=sni,
            tls_standard_compatible=False,
        )

    def _tls_context(self) -> ssl.SSLContext:
        context = self._ssl_context
        if context is None:
            context = self._ssl_context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
        return context

    async def _acquire(
        self,
        key: _PoolKey,
        conn: _Conn | None,
        doomed: list[_Conn],
        pool_timeout: float | None,
        request: httpx.Request | None,
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
            await victim.aclose()
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
            if (expiry is not None and now - conn.idle_since >= expiry) or conn.is_dead():
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
            self._idle[victim.key].remove(victim)
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
        await conn.aclose()

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
            conn.shutdown()  # its request task will see EOF and close it
        while self._waiters:
            self._waiters.popleft().set()
        for conn in idle:
            await conn.aclose()


def _pool_key(url: httpx.URL, request: httpx.Request | None) -> _PoolKey:
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
    return scheme, url.host, port


_LENGTH_LINE = b"Content-Length: 1\r\n\r\n"


class PreparedPost:
    """The bytes of a POST's request line and headers, built once for many bodies.

    They are what `handle_async_request` would send for an ``httpx.Request("POST", url,
    headers=headers, content=body)``, minus the ``Content-Length`` line that httpx puts
    last, which `FastTransport.send_prepared` adds for each body.  `build` returns
    ``None`` when that does not hold (the headers set their own framing, or hold CR/LF):
    then requests must take the ordinary path, which reports the problem.
    """

    __slots__ = ("close", "head", "key")

    def __init__(self, key: _PoolKey, head: bytes, close: bool) -> None:
        self.key = key
        self.head = head
        self.close = close

    def __repr__(self) -> str:
        # never the head: it holds the Authorization header
        return f"PreparedPost({self.key[0]}://{self.key[1]}:{self.key[2]})"

    @classmethod
    def build(cls, url: httpx.URL, headers: httpx.Headers) -> PreparedPost | None:
        """The prepared head for POSTs to ``url`` with ``headers``, if it can be built."""
        try:
            request = httpx.Request("POST", url, headers=headers, content=b"x")
            key = _pool_key(url, request)
            first, second, close = _serialize(request, b"x")
        except httpx.HTTPError:
            return None
        if second or not first.endswith(b"\r\n" + _LENGTH_LINE + b"x"):
            return None
        return cls(key, first[: -len(_LENGTH_LINE) - 1], close)


class RawResponse:
    """A response read by `FastTransport.send_prepared`, without httpx's models."""

    __slots__ = ("content", "encoded", "headers", "reason", "reusable", "status", "version")

    def __init__(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        headers: _Headers,
        content: bytes,
        reusable: bool,
        encoded: bool,
    ) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        #: the body as received: still Content-Encoded when `encoded`
        self.content = content
        self.reusable = reusable
        self.encoded = encoded

    def to_httpx(self) -> httpx.Response:
        """The `httpx.Response` `handle_async_request` would have returned (unread)."""
        return httpx.Response(
            self.status,
            headers=self.headers,
            stream=httpx.ByteStream(self.content),
            extensions={"http_version": self.version, "reason_phrase": self.reason},
        )


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
