"""Writing a request: the bytes `FastTransport` sends, and the fast path's prepared POST.

`_serialize` encodes any ``httpx.Request`` byte for byte as httpx's stock transport would
(request line, headers in order, ``Host`` when missing), and refuses a CR or LF anywhere
in them (header or request-line injection) before anything is sent.  A streamed request
body has already been read into memory by then; with ``Transfer-Encoding: chunked`` it is
sent as one chunk.

**The backend's fast path.**  `HttpBackend` builds the bytes of its request line and
headers once (`PreparedPost`, byte for byte what ``httpx.Request`` would serialize) and
posts each body with `FastTransport.send_prepared`: the same pool, re-sending, timeouts
and errors, without httpx's Request and Response models.  Only the ``Content-Length``
line, which httpx puts last, is written per body.

A small body goes out in the same send as the request head; a larger one is sent after
it, in pieces (see connection.py), so that a server answering early is heard.
"""

from __future__ import annotations

from typing import NamedTuple

import httpx

__all__ = ["PreparedPost"]

#: A body up to this size goes out in the same send as the request head; a larger one
#: is sent after it, in pieces of this size.
_SMALL_BODY = 64 * 1024


class _Origin(NamedTuple):
    """Where a request goes: connections are pooled per origin."""

    scheme: str
    host: str
    port: int


def _origin_of(url: httpx.URL, request: httpx.Request | None) -> _Origin:
    """The origin of ``url``; an error for a scheme other than http and https."""
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
    return _Origin(scheme, url.host, port)


class _RequestBytes(NamedTuple):
    """A request encoded for the wire, as two sends."""

    #: the request head, followed by the body when it is small (`_SMALL_BODY`)
    first: bytes
    #: a larger body, sent after `first` in pieces; empty when it went with the request head
    rest: bytes
    #: the request asked the server to close the connection (``Connection: close``)
    close: bool


def _split_body(request_head: bytes, body: bytes, close: bool) -> _RequestBytes:
    """The sends for ``request_head`` and ``body``: together when the body is small."""
    if len(body) <= _SMALL_BODY:
        return _RequestBytes(request_head + body, b"", close)
    return _RequestBytes(request_head, body, close)


def _serialize(request: httpx.Request, body: bytes) -> _RequestBytes:
    """Encode the request (its request head, and ``body``) for the wire."""
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
    request_head = b"".join(parts)
    # Every CR and LF must be one of ours: refuse header/request-line injection.
    if request_head.count(b"\n") != line_count or request_head.count(b"\r") != line_count:
        raise httpx.LocalProtocolError(
            "Request line or header contains CR or LF characters", request=request
        )
    if chunked:
        # A streamed body already read into memory: send it as a single chunk.
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return _split_body(request_head, body, close)


_LENGTH_LINE = b"Content-Length: 1\r\n\r\n"


class PreparedPost:
    """The bytes of a POST's request line and headers, built once for many bodies.

    They are what `handle_async_request` would send for an ``httpx.Request("POST", url,
    headers=headers, content=body)``, minus the ``Content-Length`` line that httpx puts
    last, which `FastTransport.send_prepared` adds for each body.  `build` returns
    ``None`` when that does not hold (the headers set their own framing, or hold CR/LF):
    then requests must take the ordinary path, which reports the problem.
    """

    __slots__ = ("close", "origin", "request_head")

    def __init__(self, origin: _Origin, request_head: bytes, close: bool) -> None:
        self.origin = origin
        #: the request line and headers, without the ``Content-Length`` line
        self.request_head = request_head
        self.close = close

    @property
    def head(self) -> bytes:
        """`request_head`, by the name this attribute had first."""
        return self.request_head

    def __repr__(self) -> str:
        # never the request head: it holds the Authorization header
        scheme, host, port = self.origin
        return f"PreparedPost({scheme}://{host}:{port})"

    @classmethod
    def build(cls, url: httpx.URL, headers: httpx.Headers) -> PreparedPost | None:
        """The prepared request head for POSTs to ``url`` with ``headers``, if it can be built."""
        try:
            request = httpx.Request("POST", url, headers=headers, content=b"x")
            origin = _origin_of(url, request)
            encoded = _serialize(request, b"x")
        except httpx.HTTPError:
            return None
        if encoded.rest or not encoded.first.endswith(b"\r\n" + _LENGTH_LINE + b"x"):
            return None
        return cls(origin, encoded.first[: -len(_LENGTH_LINE) - 1], encoded.close)

    def encode(self, body: bytes) -> _RequestBytes:
        """The sends that POST ``body``."""
        request_head = self.request_head + b"Content-Length: %d\r\n\r\n" % len(body)
        return _split_body(request_head, body, self.close)
