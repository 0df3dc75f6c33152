"""Reading a response: llhttp (``httptools``) parses, `_Message` collects what it reports.

Status line, headers, Content-Length, chunked bodies (extensions, trailers),
close-delimited bodies, 1xx interim responses and bodiless statuses are all llhttp's
(the binding of Node.js's llhttp that uvicorn uses).  This module adds only the refusals a
client owes its caller: a Transfer-Encoding other than exactly ``chunked`` (``gzip,
chunked`` included) or a repeated one, a response head (status line and headers) over
`MAX_RESPONSE_HEAD_SIZE`, a body over ``max_response_size`` (`ResponseTooLarge`).
Content-Encoding (gzip, deflate, br, zstd) is left to httpx's own decoders, as with its
stock transport: `_Message` only notes that the header is there.

Where llhttp is stricter than h11 (obsolete header line folding, a repeated
Content-Length even with equal values, Content-Length with chunked), the response is
refused as a protocol error; ``tests/test_transport_differential.py`` pins it.

The answer to a HEAD request has no body, but llhttp cannot be told so from Python: the
parser is stopped after the response head (`_StopAtResponseHead`), and the connection that
carried the HEAD request is not reused.

Bytes come from the connection (connection.py); nothing here does I/O.
"""

from __future__ import annotations

import httptools
import httpx

__all__ = ["MAX_RESPONSE_HEAD_SIZE", "ResponseTooLarge"]

#: Largest response head (status line and headers) accepted, in bytes; httpcore's h11 limit.
MAX_RESPONSE_HEAD_SIZE = 100 * 1024
#: Bytes of framing (chunk-size line, extensions, trailers) allowed per chunk.
_MAX_CHUNK_OVERHEAD = 16 * 1024

_Headers = list[tuple[bytes, bytes]]


class ResponseTooLarge(httpx.TransportError):
    """The response body is larger than the transport's ``max_response_size``."""


class _StopAtResponseHead(Exception):
    """Raised inside the parser to stop it after the response head of the answer to HEAD."""


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
        "headers",
        "headers_done",
        "is_head_request",
        "keep_alive",
        "limit",
        "parser",
        "reason",
        "saw_length",
        "saw_te",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        # Bare LF line ends in a response head are accepted, as h11 and browsers accept them.
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.keep_alive = False
        self.limit: int | None = None
        self.is_head_request = False
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

    def start(self, is_head_request: bool, limit: int | None) -> None:
        """Get ready for the response to the request just sent (HEAD or not)."""
        self.reset()
        self.complete = self.keep_alive = False
        self.is_head_request = is_head_request
        self.limit = limit
        self.fed = 0  # bytes fed to the parser for this response (response head, framing, body)

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
        if self.is_head_request and self.parser.get_status_code() >= 200:
            self.complete = True
            raise _StopAtResponseHead

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
            if isinstance(cause, _StopAtResponseHead):
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

    def framing_overflow(self) -> bool:
        """Whether more framing (response head, chunk lines, trailers) than any sane
        response needs has arrived."""
        return (
            self.fed - self.body_size > MAX_RESPONSE_HEAD_SIZE + self.chunks * _MAX_CHUNK_OVERHEAD
        )
