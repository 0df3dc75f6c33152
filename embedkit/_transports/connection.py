"""One connection: opened by the pool, it carries one exchange at a time.

A `_Conn` is a pool slot (transport.py decides when one is opened, reused or closed);
`_Conn.exchange` writes a request on it and reads the complete response (`RawResponse`),
through the connection's `_Message` (parser.py).  How an exchange goes, and fails:

* **Early responses.**  A large body is sent in 64 KiB pieces, and the socket is
  checked between pieces: a server that answers before reading it all (a proxy's
  413) is heard and its answer returned.  When a write fails, the response the
  server may have sent before closing is read too.  Either way the connection is
  not reused.
* **Dead connections on asyncio.**  asyncio reports a failed send by closing the
  socket rather than raising; a reused connection whose socket is found closed
  right after the send counts as a failed write.
* **What may be sent again.**  A write that failed on a reused connection before one
  response byte arrived means the server had closed it while idle: `_Resend` tells the
  pool so.  Any other failure is the httpx error for it.
* **Timeouts** come from ``request.extensions["timeout"]`` (httpx sets it):
  ``write`` bounds each send, ``read`` each wait for response bytes (``connect`` and
  ``pool`` are the pool's).  One cancel scope covers a whole exchange (see `_Deadline`):
  a scope with a deadline costs more CPU on asyncio than parsing a response, so there is
  not one per send and per receive.
* **Idle checks.**  `_Conn.is_dead` tells the pool whether an idle connection is
  readable (the server closed it, or sent bytes nobody asked for), TLS or not.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
from typing import Any

import anyio
import anyio.abc
import httpx

from .parser import _Headers, _Message
from .request import _SMALL_BODY, _Origin, _RequestBytes

__all__ = ["RawResponse"]

#: Bytes asked for per receive: asyncio reads at most 256 KiB per wake-up, and anyio
#: splits (copies) a chunk larger than what was asked for, one receive per piece.
_RECV_SIZE = 256 * 1024

_Timeouts = dict[str, Any]

# Errors that mean "this connection is broken" (as opposed to a protocol error).
_IO_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class RawResponse:
    """A response as a connection read it, without httpx's models.

    `FastTransport.send_prepared` returns it; `FastTransport.handle_async_request` turns
    it into an `httpx.Response`.
    """

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


class _EarlyResponse(Exception):
    """The server started answering before the request body was all sent."""


class _Resend(Exception):
    """The server had closed this reused connection before our request: send it anew."""

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class _Conn:
    """A pool slot: a (possibly not yet opened) connection to one origin."""

    __slots__ = ("idle_since", "message", "origin", "received", "reused", "sock", "stream")

    def __init__(self, origin: _Origin) -> None:
        self.origin = origin
        self.stream: anyio.abc.ByteStream | None = None
        self.sock: Any = None  # the stream's socket, looked up once (anyio's lookup is slow)
        self.message: _Message | None = None
        self.idle_since = 0.0
        self.reused = False  # came from the idle pool (so the server may have closed it)
        self.received = False  # has any response byte arrived for the current request?

    def attach(self, stream: anyio.abc.ByteStream) -> None:
        """Use ``stream``, just connected, for this slot's exchanges."""
        self.stream = stream
        self.sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.message = _Message()

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

    async def exchange(
        self,
        encoded: _RequestBytes,
        request: httpx.Request | None,
        is_head_request: bool,
        timeouts: _Timeouts,
        max_response_size: int | None,
    ) -> RawResponse:
        """Write the request and read its complete response.

        Raises `_Resend` when the request may be sent again on a new connection (see the
        module docstring), the httpx error for any other failure (with ``request`` on it).
        """
        self.received = False
        message = self.message
        assert message is not None
        message.start(is_head_request, max_response_size)
        clock = _Deadline(timeouts)
        write_error: httpx.WriteError | None = None
        write_cause: BaseException | None = None
        try:
            while True:
                with clock.scope() as scope:
                    if not clock.reading:
                        try:
                            await self._write(encoded, clock, scope)
                        except (*_IO_ERRORS, _EarlyResponse) as exc:
                            write_error = httpx.WriteError(
                                f"Failed to send the request: {exc!r}", request=request
                            )
                            write_cause = exc
                        clock.start_reading(scope)
                    await self._read(message, clock)
                if not scope.cancelled_caught:
                    break
                if clock.expired():
                    if clock.reading:
                        raise httpx.ReadTimeout("Timed out while reading the response")
                    raise httpx.WriteTimeout("Timed out while sending the request")
        except (*_IO_ERRORS, httpx.TransportError) as exc:
            if write_error is not None:
                # The server may have answered before closing (a proxy's 413); it did not.
                if self.reused and not self.received:
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
            and not (encoded.close or message.extra or message.is_head_request)
        )
        body = message.body
        content = body[0] if len(body) == 1 else b"".join(body)
        return RawResponse(
            parser.get_status_code(),
            message.reason,
            b"HTTP/" + parser.get_http_version().encode("ascii"),
            message.headers,
            content,
            keep_alive,
            message.encoded,
        )

    async def _write(
        self, encoded: _RequestBytes, clock: _Deadline, scope: anyio.CancelScope
    ) -> None:
        """Send the request head (with a small body), then a large body in pieces."""
        stream = self.stream
        assert stream is not None
        await stream.send(encoded.first)
        rest = encoded.rest
        # A large body goes in pieces; a server that answers before reading it all
        # (a proxy's 413) is heard between pieces instead of after a failed write.
        for start in range(0, len(rest), _SMALL_BODY):
            if self.readable():
                raise _EarlyResponse
            clock.wrote(scope)
            await stream.send(rest[start : start + _SMALL_BODY])
        if self.reused and self.closed_underneath():
            # asyncio reports a failed send by closing the socket, not by raising.
            raise anyio.BrokenResourceError

    async def _read(self, message: _Message, clock: _Deadline) -> None:
        """Read until ``message`` holds one complete response (resumable after a cancel)."""
        stream = self.stream
        assert stream is not None
        while not message.complete:
            try:
                data = await stream.receive(_RECV_SIZE)
            except anyio.EndOfStream:
                data = b""
            if not data:
                message.eof(self.received)
                return
            self.received = True
            clock.progress()
            message.fed += len(data)
            message.feed(data)
            if not message.complete and message.framing_overflow():
                raise httpx.RemoteProtocolError("Response head or chunk framing too large")


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
