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
  One connection's exchange (writing, reading, its timeouts) is connection.py's.
* **Parsing: llhttp.**  Responses are parsed by ``httptools`` (the binding of
  Node.js's llhttp that uvicorn uses); parser.py adds only the refusals a client owes
  its caller.  Requests are encoded by request.py, which also holds the backend's fast
  path (`PreparedPost`, sent with `FastTransport.send_prepared`).
* **Pool** (this module).  Connections are pooled per ``(scheme, host, port)``; at most
  ``max_connections`` are open (or opening) at once.  Idle connections are reused
  most-recently-used first, dropped after ``keepalive_expiry`` seconds, and checked
  before reuse: a socket that is readable while idle (the server closed it, or sent
  bytes nobody asked for) is closed instead, TLS or not.  When the pool is full, an
  idle connection to another origin is evicted; otherwise the request waits in FIFO
  order for a release, bounded by the ``pool`` timeout.

What it does the way httpcore does
----------------------------------
* **Re-sending.**  A request is sent again by the transport only when it went out
  on a reused connection that the server had already closed: the write failed and
  not one response byte arrived.  Such re-sends are counted (`resent_requests`;
  embedkit reports them in ``stats().retries``).  Any other failure is raised, and
  the caller's retry policy decides.
* **Timeouts** come from ``request.extensions["timeout"]`` (httpx sets it):
  ``connect`` bounds connection setup and ``pool`` the wait for a connection (here);
  ``write`` each send and ``read`` each wait for response bytes (connection.py).
* **Cancellation safety.**  A connection whose request was interrupted is closed,
  never returned to the pool, and its slot is released.
* Early responses, dead connections on asyncio: see connection.py.

Limits
------
* HTTP/1.1 (and HTTP/1.0 servers) only: no HTTP/2, no proxies, no Unix sockets, no
  ``Upgrade``/CONNECT tunnels, no streamed response bodies (the whole body is read
  before `handle_async_request` returns; embedding answers are at most a few MB).
  embedkit routes through httpx's stock transport when any of these is needed.
* Streamed request bodies are read into memory and sent as one chunk.
* Where llhttp is stricter than h11, the response is refused (see parser.py).
* The connection that carried a HEAD request is not reused (llhttp cannot be told
  from Python that the answer to HEAD has no body; it is parsed up to its response head).
"""

from __future__ import annotations

import math
import ssl
import time
from collections import deque

import anyio
import anyio.abc
import httpx

from .connection import _IO_ERRORS, RawResponse, _Conn, _Resend, _Timeouts
from .request import PreparedPost, _Origin, _origin_of, _RequestBytes, _serialize

__all__ = ["FastTransport"]

_PURGE_INTERVAL = 1.0


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
        self._idle: dict[_Origin, list[_Conn]] = {}
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
        origin = _origin_of(request.url, request)
        timeouts: _Timeouts = request.extensions.get("timeout") or self._default_timeouts
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        encoded = _serialize(request, body)
        sni = request.extensions.get("sni_hostname") or origin.host
        if isinstance(sni, bytes):
            sni = sni.decode("ascii")
        response = await self._round_trip(
            origin, encoded, timeouts, request, request.method == "HEAD", sni
        )
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=httpx.ByteStream(response.content),
            request=request,
            extensions={"http_version": response.version, "reason_phrase": response.reason},
        )

    async def warm(
        self, url: str | httpx.URL, n: int, *, connect_timeout: float | None = None
    ) -> int:
        """Open connections to `url`'s origin until `n` are open, and leave them idle.

        A burst that starts on a cold pool waits for a connection per request on top of the
        server's answer; this moves that wait to a moment the caller chooses. Never more
        than `max_connections` in all. Returns how many were opened; a failed connect
        raises `httpx.ConnectError` / `httpx.ConnectTimeout` (those opened stay in the pool).
        """
        if self._closed:
            raise RuntimeError("Cannot warm up: the FastTransport has been closed.")
        url = httpx.URL(url)
        origin = _origin_of(url, None)
        have = sum(1 for conn in self._conns if conn.origin == origin)
        todo = max(0, min(n - have, self._max_connections - len(self._conns)))
        timeouts: _Timeouts = {"connect": connect_timeout}

        async def open_one() -> None:
            conn = _Conn(origin)
            self._conns.add(conn)  # holds its slot while connecting, as a request's would
            try:
                await self._connect(conn, None, timeouts, origin.host)
            except BaseException:
                self._conns.discard(conn)
                if self._waiters:
                    self._wake_one()
                raise
            conn.reused = False
            self._release(conn)

        async with anyio.create_task_group() as tg:
            for _ in range(todo):
                tg.start_soon(open_one)
        return todo

    async def send_prepared(
        self, prepared: PreparedPost, body: bytes, timeouts: _Timeouts | None
    ) -> RawResponse:
        """POST ``body`` with a request head built once (`PreparedPost`): no httpx models.

        The same connection pool, re-sending, limits and errors as
        `handle_async_request` (errors carry no ``request``).  The body comes back as
        received: when ``RawResponse.encoded`` is true, its Content-Encoding is still to
        be undone (`RawResponse.to_httpx` does it as httpx would).
        """
        if self._closed:
            raise RuntimeError("Cannot send a request: the FastTransport has been closed.")
        return await self._round_trip(
            prepared.origin,
            prepared.encode(body),
            timeouts or self._default_timeouts,
            request=None,
            is_head_request=False,
            sni=prepared.origin.host,
        )

    async def _round_trip(
        self,
        origin: _Origin,
        encoded: _RequestBytes,
        timeouts: _Timeouts,
        request: httpx.Request | None,
        is_head_request: bool,
        sni: str,
    ) -> RawResponse:
        """Take a connection, exchange one request and response on it, give it back."""
        doomed: list[_Conn] = []
        conn = self._try_acquire(origin, doomed, queued=False)
        if conn is None or doomed:
            conn = await self._acquire(origin, conn, doomed, timeouts.get("pool"), request)
        limit = self._max_response_size
        try:
            try:
                if conn.stream is None:
                    await self._connect(conn, request, timeouts, sni)
                response = await conn.exchange(encoded, request, is_head_request, timeouts, limit)
            except _Resend as resend:
                # The server had dropped this keep-alive connection before our request
                # reached it: one fresh attempt, keeping our pool slot.
                await conn.aclose()
                if self._closed:
                    raise resend.error from resend.__cause__
                self._resent += 1
                await self._connect(conn, request, timeouts, sni)
                response = await conn.exchange(encoded, request, is_head_request, timeouts, limit)
        except BaseException:
            await self._discard(conn)
            raise

        if response.reusable and not self._closed:
            self._release(conn)
        else:
            await self._discard(conn)
        return response

    async def _connect(
        self, conn: _Conn, request: httpx.Request | None, timeouts: _Timeouts, sni: str
    ) -> None:
        scheme, host, port = conn.origin
        conn.reused = False
        try:
            with anyio.fail_after(timeouts.get("connect")):
                conn.attach(await self._open_stream(scheme, host, port, sni))
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"Timed out connecting to {host}:{port}", request=request
            ) from exc
        except (*_IO_ERRORS, anyio.EndOfStream) as exc:
            raise httpx.ConnectError(
                f"Failed to connect to {host}:{port}: {exc}", request=request
            ) from exc

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
        origin: _Origin,
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
                    conn = self._try_acquire(origin, doomed, queued=True)
        for victim in doomed:
            await victim.aclose()
        if conn is None:
            raise httpx.PoolTimeout("Timed out waiting for a free connection", request=request)
        return conn

    def _try_acquire(self, origin: _Origin, doomed: list[_Conn], queued: bool) -> _Conn | None:
        """Take an idle connection to ``origin`` or reserve a slot for a new one, if possible.

        Connections found expired or dead on the way are moved to ``doomed``.
        """
        now = time.monotonic()
        if now >= self._next_purge:
            self._purge_expired(now, doomed)
        idle = self._idle.get(origin)
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
            self._idle[victim.origin].remove(victim)
            self._conns.discard(victim)
            doomed.append(victim)
        conn = _Conn(origin)
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
        idle = self._idle.get(conn.origin)
        if idle is None:
            self._idle[conn.origin] = [conn]
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
