"""Tests for `embedkit._transports.FastTransport` against real loopback servers.

Most tests use a tiny scriptable HTTP server written on anyio (so the same server
runs under asyncio and trio): each test gives it a handler that reads requests and
writes whatever bytes the scenario needs (chunked, cut, malformed, slow, ...).
One test runs a real uvicorn + starlette app for a normal round trip.
Synchronisation is by events, never by sleeping.
"""

from __future__ import annotations

import gc
import gzip
import json
import shutil
import socket
import ssl
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.tls import TLSStream

from embedkit._transports import connection as _transport
from embedkit._transports.transport import FastTransport

TIMEOUT = httpx.Timeout(5.0)
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test so an unclosed socket fails the test that leaked it."""
    yield
    gc.collect()


# --------------------------------------------------------------------- test server


@dataclass
class Received:
    """A request as the server saw it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Conn:
    """The server side of one accepted connection."""

    def __init__(self, stream: anyio.abc.ByteStream, index: int) -> None:
        self.stream = stream
        self.index = index  # 0 for the first accepted connection
        self.buffer = BufferedByteReceiveStream(stream)

    async def read_request(self) -> Received | None:
        """The next request, or None if the client closed the connection."""
        try:
            head = await self.buffer.receive_until(b"\r\n\r\n", 65536)
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
            return None
        request_line, *lines = head.split(b"\r\n")
        method, target, _ = request_line.split(b" ")
        headers = []
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        request = Received(method, target, headers, b"")
        length = request.header(b"content-length")
        if length is not None:
            request.body = await self.buffer.receive_exactly(int(length))
        elif request.header(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size = int(await self.buffer.receive_until(b"\r\n", 1024), 16)
                chunk = await self.buffer.receive_exactly(size + 2)
                if size == 0:
                    break
                parts.append(chunk[:-2])
            request.body = b"".join(parts)
        return request

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def close(self) -> None:
        await self.stream.aclose()


Handler = Callable[["Server", Conn], Awaitable[None]]


@dataclass
class Server:
    """A scriptable HTTP/1.1 server: counts connections, records requests."""

    handler: Handler
    port: int = 0
    connections: int = 0
    requests: list[Received] = field(default_factory=list)
    got_request: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def next_request(self, conn: Conn) -> Received | None:
        request = await conn.read_request()
        if request is not None:
            self.requests.append(request)
            self.got_request.set()
        return request

    async def _serve_one(self, stream: anyio.abc.ByteStream) -> None:
        conn = Conn(stream, self.connections)
        self.connections += 1
        try:
            await self.handler(self, conn)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass  # the client went away; that is some tests' point
        finally:
            await stream.aclose()


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    """Run a `Server` on 127.0.0.1 for the duration of the block."""
    server = Server(handler)
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, server._serve_one)
            try:
                yield server
            finally:
                tg.cancel_scope.cancel()


def respond_with(*responses: bytes) -> Handler:
    """A keep-alive handler answering successive requests with ``responses``, cycling."""

    async def handler(server: Server, conn: Conn) -> None:
        i = 0
        while await server.next_request(conn) is not None:
            await conn.send(responses[i % len(responses)])
            i += 1

    return handler


async def answer_when_released(server: Server, conn: Conn) -> None:
    """A keep-alive handler that holds every request until `server.release` is set."""
    while await server.next_request(conn) is not None:
        await server.release.wait()
        await conn.send(OK)


def client_for(
    transport: FastTransport,
    timeout: httpx.Timeout = TIMEOUT,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout, headers=headers)


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return body + b"0\r\n" + trailers + b"\r\n"


# --------------------------------------------------------------------- round trips


@pytest.mark.asyncio
async def test_content_length_round_trip() -> None:
    async with serve(respond_with(OK)) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            response = await client.post(f"{server.url}/embed?model=m", content=b'{"input": ["a"]}')
        assert response.status_code == 200
        assert response.json() == []
        assert response.http_version == "HTTP/1.1"
        assert response.reason_phrase == "OK"
        assert response.headers["content-type"] == "application/json"
        assert response.headers.get_list("content-length") == ["2"]
        (request,) = server.requests
        assert (request.method, request.target) == (b"POST", b"/embed?model=m")
        assert request.header(b"host") == f"127.0.0.1:{server.port}".encode()
        assert request.body == b'{"input": ["a"]}'


@pytest.mark.asyncio
async def test_response_headers_repeated_and_case_insensitive() -> None:
    response_bytes = (
        b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nX-Thing:  one \r\nset-cookie: b=2\r\n"
        b"CONTENT-LENGTH: 3\r\n\r\nabc"
    )
    async with serve(respond_with(response_bytes)) as server, client_for(FastTransport()) as client:
        response = await client.get(server.url)
    assert response.status_code == 201
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["x-thing"] == "one"
    assert response.content == b"abc"


@pytest.mark.asyncio
async def test_chunked_body_with_extensions_and_trailers_keeps_connection() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        while await server.next_request(conn) is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await conn.send(b"5;ext=1\r\nhello\r\n")  # separate writes: split across reads
            await conn.send(b"1\r\n \r\n6\r\nworld!\r\n")
            await conn.send(b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            for _ in range(3):
                response = await client.get(server.url)
                assert response.content == b"hello world!"
                assert "content-length" not in response.headers
        assert server.connections == 1


@pytest.mark.asyncio
async def test_close_delimited_body() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstreamed ")
        await conn.send(b"until close")
        await conn.close()

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            response = await client.get(server.url)
            assert response.content == b"streamed until close"
            assert transport.num_connections == 0


@pytest.mark.asyncio
async def test_keep_alive_reuses_one_connection() -> None:
    async with serve(respond_with(OK)) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            for _ in range(20):
                assert (await client.post(server.url, content=b"x")).status_code == 200
            assert transport.num_connections == 1
            assert transport.num_idle_connections == 1
        assert server.connections == 1
        assert len(server.requests) == 20
        assert transport.num_connections == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "response_bytes",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        OK + b"junk",  # bytes after the body make the connection unusable
    ],
    ids=["connection-close", "http-1.0", "bytes-after-the-body"],
)
async def test_connection_not_reused_when_the_server_says_close_or_sends_junk(
    response_bytes: bytes,
) -> None:
    async with serve(respond_with(response_bytes)) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            for _ in range(3):
                assert (await client.get(server.url)).content == b"[]"
            assert transport.num_connections == 0
        assert server.connections == 3


@pytest.mark.asyncio
async def test_http_1_0_keep_alive_is_honoured() -> None:
    response_bytes = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n[]"
    async with serve(respond_with(response_bytes)) as server:
        async with client_for(FastTransport()) as client:
            for _ in range(3):
                assert (await client.get(server.url)).content == b"[]"
        assert server.connections == 1


@pytest.mark.asyncio
async def test_bare_lf_response_head_is_tolerated() -> None:
    response_bytes = b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: b\n\nok"
    async with serve(respond_with(response_bytes)) as server, client_for(FastTransport()) as client:
        response = await client.get(server.url)
    assert response.content == b"ok"
    assert response.headers["x-a"] == "b"


# ------------------------------------------------------------------ bodiless/1xx


@pytest.mark.asyncio
@pytest.mark.parametrize("status_line", [b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 Not Modified"])
async def test_204_and_304_have_no_body(status_line: bytes) -> None:
    # A Content-Length on a 304 describes the resource, not this message.
    async with serve(respond_with(status_line + b"\r\nContent-Length: 7\r\n\r\n", OK)) as server:
        async with client_for(FastTransport()) as client:
            first = await client.get(server.url)
            second = await client.get(server.url)
        assert first.content == b""
        assert second.content == b"[]"
        assert server.connections == 1


@pytest.mark.asyncio
async def test_head_response_has_no_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"

    async def handler(server: Server, conn: Conn) -> None:
        while (request := await server.next_request(conn)) is not None:
            await conn.send(head if request.method == b"HEAD" else OK)

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            response = await client.head(server.url)
            assert response.content == b""
            assert response.headers["content-length"] == "1234"
            assert transport.num_connections == 0  # not reused after HEAD (see the module)
            assert (await client.get(server.url)).content == b"[]"
        assert server.requests[0].method == b"HEAD"


@pytest.mark.asyncio
@pytest.mark.parametrize("separate_writes", [False, True])
async def test_interim_1xx_responses_are_skipped(separate_writes: bool) -> None:
    interim = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ]

    async def handler(server: Server, conn: Conn) -> None:
        while await server.next_request(conn) is not None:
            if separate_writes:
                for part in interim:
                    await conn.send(part)
                await conn.send(OK)
            else:
                await conn.send(b"".join(interim) + OK)

    async with serve(handler) as server:
        async with client_for(FastTransport()) as client:
            for _ in range(2):
                response = await client.post(
                    server.url, content=b"{}", headers={"Expect": "100-continue"}
                )
                assert response.status_code == 200
                assert response.content == b"[]"
                assert "link" not in response.headers
        assert server.connections == 1


# ------------------------------------------------------------------- compression


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_compressed_response_is_decoded(encoding: str, framing: str) -> None:
    payload = json.dumps([[0.125] * 384 for _ in range(8)]).encode()
    compressed = gzip.compress(payload) if encoding == "gzip" else zlib.compress(payload)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n" % (
        encoding.encode()
    )
    if framing == "chunked":
        half = len(compressed) // 2
        response_bytes = (
            head
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + chunked(compressed[:half], compressed[half:])
        )
    else:
        response_bytes = head + b"Content-Length: %d\r\n\r\n" % len(compressed) + compressed

    async with serve(respond_with(response_bytes)) as server, client_for(FastTransport()) as client:
        response = await client.get(server.url)
    assert response.content == payload
    assert response.json()[7][383] == 0.125
    assert response.headers["content-encoding"] == encoding
    if framing == "chunked":
        assert "content-length" not in response.headers
    else:  # the header still describes the bytes on the wire, exactly once
        assert response.headers.get_list("content-length") == [str(len(compressed))]


# ----------------------------------------------------------------------- requests


@pytest.mark.asyncio
@pytest.mark.parametrize("parts", [[b'{"input": ', b'["streamed"]}'], []], ids=["body", "empty"])
async def test_streamed_request_body_is_sent_chunked(parts: list[bytes]) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with serve(respond_with(OK)) as server:
        async with client_for(FastTransport()) as client:
            for _ in range(2):
                assert (await client.post(server.url, content=body())).status_code == 200
        assert server.connections == 1
        request = server.requests[0]
        assert request.header(b"transfer-encoding") == b"chunked"
        assert request.body == b"".join(parts)


@pytest.mark.asyncio
async def test_request_asking_to_close_is_not_kept_alive() -> None:
    async with serve(respond_with(OK)) as server:
        transport = FastTransport()
        async with client_for(transport, headers={"Connection": "close"}) as client:
            for _ in range(2):
                assert (await client.get(server.url)).status_code == 200
            assert transport.num_connections == 0
        assert server.connections == 2


@pytest.mark.asyncio
async def test_large_request_body() -> None:
    big = bytes(range(256)) * 65536  # 16 MiB: several sends, waits for buffer space
    async with serve(respond_with(OK)) as server:
        async with client_for(FastTransport()) as client:
            assert (await client.post(server.url, content=big)).status_code == 200
        assert server.requests[0].body == big


@pytest.mark.asyncio
async def test_large_response_body() -> None:
    big = bytes(range(256)) * 16384  # 4 MiB
    response_bytes = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    async with serve(respond_with(response_bytes)) as server:
        async with client_for(FastTransport()) as client:
            for _ in range(2):
                assert (await client.get(server.url)).content == big
        assert server.connections == 1


@pytest.mark.asyncio
async def test_header_injection_is_refused() -> None:
    async with serve(respond_with(OK)) as server:
        async with client_for(FastTransport()) as client:
            with pytest.raises(httpx.LocalProtocolError):
                await client.get(server.url, headers={"X-Evil": "a\r\nInjected: yes"})
        assert server.connections == 0


@pytest.mark.asyncio
async def test_unsupported_scheme() -> None:
    async with FastTransport() as transport:
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/"))


# ------------------------------------------------------------ failures and retries


def reset_on_close(conn: Conn) -> None:
    """Make closing this server connection send a TCP RST instead of a FIN."""
    sock = conn.stream.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_reused_connection_dropped_after_the_server_read_the_request_is_not_resent(
    how: str,
) -> None:
    """The server takes the next request on a kept-alive connection, then drops it: it may
    have acted on it, so the transport raises and leaves the decision to the caller."""

    async def handler(server: Server, conn: Conn) -> None:
        if conn.index == 0:
            await server.next_request(conn)
            await conn.send(OK)
            await server.next_request(conn)  # read it, answer nothing, close
            if how == "reset":
                reset_on_close(conn)
            return
        await respond_with(OK)(server, conn)

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            assert (await client.post(server.url, content=b"1")).status_code == 200
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                await client.post(server.url, content=b"2")
            assert transport.num_connections == 0
            assert transport.resent_requests == 0
        assert server.connections == 1
        assert [r.body for r in server.requests] == [b"1", b"2"]


@pytest.mark.asyncio
async def test_reused_connection_the_server_had_reset_is_resent_once_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server resets an idle connection just as it is taken from the pool (the idle
    check is blinded to stage that race): the write fails, nothing was received, so the
    request never reached the server and is sent again on a new connection."""

    async def handler(server: Server, conn: Conn) -> None:
        if conn.index == 0:
            await server.next_request(conn)
            await conn.send(OK)
            reset_on_close(conn)
            return
        await respond_with(OK)(server, conn)

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            assert (await client.post(server.url, content=b"1")).status_code == 200
            while server.connections < 1 or not transport.num_idle_connections:
                await anyio.lowlevel.checkpoint()
            idle = transport._idle[("http", "127.0.0.1", server.port)][0]
            with anyio.fail_after(5):  # the RST has arrived once the socket is readable
                while not idle.readable():
                    await anyio.lowlevel.checkpoint()
            monkeypatch.setattr(_transport._Conn, "is_dead", lambda self: False)
            assert (await client.post(server.url, content=b"2")).status_code == 200
            assert transport.resent_requests == 1
        assert server.connections == 2
        assert [r.body for r in server.requests] == [b"1", b"2"]


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_idle_connection_closed_by_server_is_replaced(how: str) -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        await conn.send(OK)  # no "Connection: close", but close anyway
        if how == "reset":
            reset_on_close(conn)

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            for _ in range(3):
                assert (await client.get(server.url)).status_code == 200
                # the server's close reaches us before the next request: wait for it
                with anyio.fail_after(5):
                    while not transport._idle[("http", "127.0.0.1", server.port)][0].readable():
                        await anyio.lowlevel.checkpoint()
        assert server.connections == 3
        assert len(server.requests) == 3
        assert transport.resent_requests == 0  # found dead in the pool, never sent on


@pytest.mark.asyncio
async def test_fresh_connection_closed_without_response_is_an_error() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await client.get(server.url)
            assert transport.num_connections == 0
        assert server.connections == 1  # a fresh connection is not retried


@pytest.mark.asyncio
async def test_cut_mid_body_content_length() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
                await client.get(server.url)
            assert transport.num_connections == 0


@pytest.mark.asyncio
async def test_cut_mid_body_chunked() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")

    async with serve(handler) as server, client_for(FastTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await client.get(server.url)


@pytest.mark.asyncio
async def test_cut_in_response_head() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Le")

    async with serve(handler) as server, client_for(FastTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "response_bytes",
    [
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n",
    ],
    ids=[
        "status",
        "not-http",
        "header-no-colon",
        "header-space",
        "content-length",
        "conflicting-length",
        "chunk-size",
        "chunk-crlf",
    ],
)
async def test_malformed_response_is_a_protocol_error(response_bytes: bytes) -> None:
    async with serve(respond_with(response_bytes)) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(server.url)
            assert transport.num_connections == 0


@pytest.mark.asyncio
async def test_read_timeout_when_server_never_answers() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        await anyio.sleep_forever()  # hold the connection open, say nothing

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport, timeout=httpx.Timeout(5.0, read=0.2)) as client:
            with pytest.raises(httpx.ReadTimeout) as excinfo:
                await client.get(server.url)
            assert excinfo.value.request.url == httpx.URL(server.url)
            assert transport.num_connections == 0


@pytest.mark.asyncio
async def test_read_timeout_applies_per_receive_mid_body() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await anyio.sleep_forever()

    timeout = httpx.Timeout(5.0, read=0.2)
    async with serve(handler) as server, client_for(FastTransport(), timeout=timeout) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url)


@pytest.mark.asyncio
async def test_connection_refused_is_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        transport = FastTransport()
        async with client_for(transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")
            assert transport.num_connections == 0


@pytest.mark.asyncio
async def test_connect_by_host_name() -> None:
    async with serve(respond_with(OK)) as server:
        async with client_for(FastTransport()) as client:
            response = await client.get(f"http://localhost:{server.port}/")
        assert response.status_code == 200
        assert server.requests[0].header(b"host") == f"localhost:{server.port}".encode()


@pytest.mark.asyncio
async def test_connection_reset_is_read_error() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        await server.next_request(conn)
        reset_on_close(conn)

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            with pytest.raises(httpx.ReadError):
                await client.get(server.url)
            assert transport.num_connections == 0
        assert server.connections == 1


@pytest.mark.asyncio
async def test_connection_reset_while_sending_is_write_error() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        reset_on_close(conn)  # and close at once, before the request arrives

    async with serve(handler) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            with pytest.raises((httpx.WriteError, httpx.ReadError)):
                await client.post(server.url, content=bytes(64 * 1024 * 1024))
            assert transport.num_connections == 0


@pytest.mark.asyncio
async def test_an_early_answer_to_a_large_body_is_read_not_lost() -> None:
    """A proxy refuses a body by its Content-Length before reading it (nginx's 413) and
    reads no more of it: the client must hear the 413 between pieces of the body, not sit
    in a write that cannot finish (the write timeout would turn it into a TransportError)."""
    early = (
        b"HTTP/1.1 413 Request Entity Too Large\r\n"
        b"Connection: close\r\nContent-Length: 9\r\n\r\ntoo large"
    )

    async def handler(server: Server, conn: Conn) -> None:
        await conn.buffer.receive_until(b"\r\n\r\n", 65536)  # the head only
        await conn.send(early)
        await anyio.sleep_forever()  # never reads the body

    async with serve(handler) as server:
        transport = FastTransport()
        timeout = httpx.Timeout(5.0, write=2.0)
        async with client_for(transport, timeout=timeout) as client:
            response = await client.post(server.url, content=bytes(64 * 1024 * 1024))
            assert response.status_code == 413
            assert response.content == b"too large"
            assert transport.num_connections == 0  # the body was cut short: not reusable


@pytest.mark.asyncio
async def test_write_timeout_when_server_does_not_read() -> None:
    # The kernel completes the handshake for a listener that never accepts; with
    # nobody reading, the socket buffers fill up and the client has to wait.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        transport = FastTransport()
        body = bytes(64 * 1024 * 1024)
        async with client_for(transport, timeout=httpx.Timeout(5.0, write=0.2)) as client:
            with pytest.raises(httpx.WriteTimeout):
                await client.post(f"http://127.0.0.1:{port}/", content=body)
            assert transport.num_connections == 0


@pytest.mark.asyncio
async def test_connect_timeout() -> None:
    # A listener whose accept queue is full drops new SYNs, so connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with suppress(BlockingIOError):
                    filler.connect(address)
            transport = FastTransport()
            timeout = httpx.Timeout(5.0, connect=0.2)
            async with client_for(transport, timeout=timeout) as client:
                with pytest.raises(httpx.ConnectTimeout):
                    await client.get(f"http://127.0.0.1:{address[1]}/")
                assert transport.num_connections == 0
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.asyncio
async def test_transport_used_directly_without_timeouts_adds_missing_host() -> None:
    async with serve(respond_with(OK)) as server:
        async with FastTransport() as transport:
            request = httpx.Request("POST", f"{server.url}/embed", content=b"{}")
            del request.headers["Host"]
            response = await transport.handle_async_request(request)
            assert await response.aread() == b"[]"
        assert server.requests[0].header(b"host") == f"127.0.0.1:{server.port}".encode()


def test_max_connections_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        FastTransport(max_connections=0)


# --------------------------------------------------------------------------- pool


@pytest.mark.asyncio
@pytest.mark.parametrize("keep_alive", [True, False])
async def test_pool_limit_is_respected(keep_alive: bool) -> None:
    both_busy = anyio.Event()
    answer = OK if keep_alive else OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")

    async def handler(server: Server, conn: Conn) -> None:
        while await server.next_request(conn) is not None:
            if len(server.requests) >= 2:
                both_busy.set()
            await both_busy.wait()  # hold answers until both connections are in use
            await conn.send(answer)

    async with serve(handler) as server:
        transport = FastTransport(max_connections=2)
        statuses: list[int] = []

        async def one(client: httpx.AsyncClient) -> None:
            statuses.append((await client.get(server.url)).status_code)
            assert transport.num_connections <= 2

        async with client_for(transport) as client:
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one, client)
            assert transport.num_connections == (2 if keep_alive else 0)
        assert statuses == [200] * 10
        assert server.connections == (2 if keep_alive else 10)


@pytest.mark.asyncio
async def test_pool_timeout() -> None:
    async with serve(answer_when_released) as server:
        transport = FastTransport(max_connections=1)
        async with client_for(transport, timeout=httpx.Timeout(5.0, pool=0.2)) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, server.url)
                await server.got_request.wait()
                with pytest.raises(httpx.PoolTimeout):
                    await client.get(server.url)
                server.release.set()
            assert (await client.get(server.url)).status_code == 200
        assert server.connections == 1


@pytest.mark.asyncio
async def test_full_pool_evicts_idle_connection_to_other_origin() -> None:
    async with serve(respond_with(OK)) as first, serve(respond_with(OK)) as second:
        transport = FastTransport(max_connections=1)
        async with client_for(transport) as client:
            assert (await client.get(first.url)).status_code == 200
            assert (await client.get(second.url)).status_code == 200
            assert (await client.get(first.url)).status_code == 200
            assert transport.num_connections == 1
        assert (first.connections, second.connections) == (2, 1)


@pytest.mark.asyncio
async def test_keepalive_expiry() -> None:
    async with serve(respond_with(OK)) as server:
        async with client_for(FastTransport(keepalive_expiry=0)) as client:
            for _ in range(3):
                assert (await client.get(server.url)).status_code == 200
        assert server.connections == 3


@pytest.mark.asyncio
async def test_expired_idle_connections_to_other_origins_are_purged() -> None:
    async with serve(respond_with(OK)) as first, serve(respond_with(OK)) as second:
        transport = FastTransport(keepalive_expiry=0)
        async with client_for(transport) as client:
            await client.get(first.url)
            assert transport.num_idle_connections == 1
            await client.get(second.url)  # the idle connection to `first` is dropped
            assert transport.num_connections == 1


@pytest.mark.asyncio
async def test_no_keepalive_expiry() -> None:
    async with serve(respond_with(OK)) as server:
        async with client_for(FastTransport(keepalive_expiry=None)) as client:
            for _ in range(3):
                assert (await client.get(server.url)).status_code == 200
        assert server.connections == 1


@pytest.mark.asyncio
async def test_waiter_keeps_its_turn_when_a_newcomer_takes_the_connection() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        while (request := await server.next_request(conn)) is not None:
            if request.target == b"/held":
                await server.release.wait()
            await conn.send(OK)

    async with serve(handler) as server:
        transport = FastTransport(max_connections=1)
        results: list[int] = []

        async def waiter(client: httpx.AsyncClient) -> None:
            results.append((await client.get(server.url)).status_code)

        async def release_once_waiter_queued(client: httpx.AsyncClient) -> None:
            await server.got_request.wait()
            tg.start_soon(waiter, client)  # queues for the only connection
            await anyio.wait_all_tasks_blocked()
            server.release.set()

        async with client_for(transport) as client, anyio.create_task_group() as tg:
            tg.start_soon(release_once_waiter_queued, client)
            assert (await client.get(f"{server.url}/held")).status_code == 200
            # This task sends again at once, before the woken waiter runs, and
            # takes the connection; the waiter must still get it afterwards.
            assert (await client.get(server.url)).status_code == 200
        assert results == [200]
        assert server.connections == 1


@pytest.mark.asyncio
async def test_aclose_fails_waiting_and_in_flight_requests() -> None:
    async def handler(server: Server, conn: Conn) -> None:
        while (request := await server.next_request(conn)) is not None:
            if request.target == b"/held":
                await anyio.sleep_forever()
            await conn.send(OK)

    async with serve(handler) as server:
        transport = FastTransport(max_connections=1)
        errors: list[BaseException] = []

        async def get(client: httpx.AsyncClient, path: str) -> None:
            try:
                await client.get(server.url + path)
            except (httpx.TransportError, RuntimeError) as exc:
                errors.append(exc)

        async with client_for(transport) as client:
            await client.get(server.url)  # the held request will reuse this connection
            async with anyio.create_task_group() as tg:
                server.got_request = anyio.Event()
                tg.start_soon(get, client, "/held")
                await server.got_request.wait()
                tg.start_soon(get, client, "/queued")
                await anyio.wait_all_tasks_blocked()
                await transport.aclose()
        assert len(errors) == 2
        assert any(isinstance(e, RuntimeError) for e in errors)
        assert any(isinstance(e, httpx.TransportError) for e in errors)
        assert transport.num_connections == 0
        assert server.connections == 1  # the dropped request was not retried


@pytest.mark.asyncio
async def test_cancellation_mid_request_does_not_leak() -> None:
    async with serve(answer_when_released) as server:
        transport = FastTransport(max_connections=1)
        async with client_for(transport) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.post, server.url)
                await server.got_request.wait()
                assert transport.num_connections == 1
                tg.cancel_scope.cancel()
            assert transport.num_connections == 0  # closed, not returned half-read
            server.release.set()
            for _ in range(2):
                assert (await client.post(server.url)).content == b"[]"
            assert transport.num_connections == 1
            assert transport.num_idle_connections == 1
        assert server.connections == 2


@pytest.mark.asyncio
async def test_cancellation_while_waiting_for_pool_does_not_leak() -> None:
    async with serve(answer_when_released) as server:
        transport = FastTransport(max_connections=1)
        results: list[int] = []

        async def get(client: httpx.AsyncClient) -> None:
            results.append((await client.get(server.url)).status_code)

        async with client_for(transport) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(get, client)
                await server.got_request.wait()
                with anyio.CancelScope() as waiter_scope:
                    waiter_scope.cancel()  # cancelled while queued for the pool
                    await client.get(server.url)
                tg.start_soon(get, client)  # queued behind the first request
                await anyio.wait_all_tasks_blocked()
                server.release.set()
            assert results == [200, 200]
            assert transport.num_connections == 1
        assert server.connections == 1


# ------------------------------------------------------------------------ closing


@pytest.mark.asyncio
async def test_aclose_closes_connections_and_refuses_reuse() -> None:
    async with serve(respond_with(OK)) as server:
        transport = FastTransport()
        async with client_for(transport) as client:
            await client.get(server.url)
            assert transport.num_idle_connections == 1
        assert transport.num_connections == 0
        with pytest.raises(RuntimeError, match="closed"):
            await transport.handle_async_request(httpx.Request("GET", server.url))
        await transport.aclose()  # idempotent


# ------------------------------------------------------------------- real servers


@pytest.mark.asyncio
async def test_uvicorn_starlette_round_trip() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def embed(request: Request) -> JSONResponse:
        payload = await request.json()
        return JSONResponse({"data": [[float(len(t))] * 64 for t in payload["input"]]})

    app = Starlette(
        routes=[Route("/embed", embed, methods=["POST"])],
        middleware=[Middleware(GZipMiddleware, minimum_size=500)],
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue until uvicorn accepts: no need to wait for startup
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", http="h11", ws="none")
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            transport = FastTransport()
            async with client_for(transport) as client:
                for n in (1, 3, 40):
                    texts = ["x" * i for i in range(n)]
                    response = await client.post(
                        f"http://127.0.0.1:{port}/embed", json={"input": texts}
                    )
                    assert response.status_code == 200
                    assert [row[0] for row in response.json()["data"]] == list(range(n))
                assert response.headers["content-encoding"] == "gzip"
                assert transport.num_connections == 1
            server.should_exit = True
    finally:
        sock.close()


def _make_cert(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not available to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    args = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]
    subprocess.run(
        [openssl, *args, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    return cert, key


@pytest.mark.asyncio
async def test_https(tmp_path: Path) -> None:
    cert, key = _make_cert(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def handler(server: Server, conn: Conn) -> None:
        tls = await TLSStream.wrap(
            conn.stream, server_side=True, ssl_context=server_context, standard_compatible=False
        )
        conn = Conn(tls, conn.index)
        while (request := await server.next_request(conn)) is not None:
            if request.target == b"/slow":
                await anyio.sleep_forever()
            if request.target == b"/close":
                await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close")
                return
            await conn.send(OK)

    async with serve(handler) as server:
        base = f"https://localhost:{server.port}"
        transport = FastTransport(ssl_context=client_context)
        async with client_for(transport, timeout=httpx.Timeout(5.0, read=0.2)) as client:
            for host in ("localhost", "127.0.0.1", "localhost"):
                response = await client.post(f"https://{host}:{server.port}/", content=b"x")
                assert response.content == b"[]"
            assert server.connections == 2  # one per origin, reused
            assert (await client.get(f"{base}/close")).content == b"until close"
            with pytest.raises(httpx.ReadTimeout):
                await client.get(f"{base}/slow")

        # Used directly (no timeouts), with the SNI name given by extension.
        async with FastTransport(ssl_context=client_context) as transport:
            request = httpx.Request(
                "GET",
                f"https://127.0.0.1:{server.port}/",
                extensions={"sni_hostname": b"localhost"},
            )
            response = await transport.handle_async_request(request)
            assert await response.aread() == b"[]"

        async with client_for(FastTransport()) as client:  # default context: untrusted cert
            with pytest.raises(httpx.ConnectError):
                await client.get(f"{base}/")


@pytest.mark.asyncio
async def test_an_idle_tls_connection_the_server_closed_is_checked_and_replaced(
    tmp_path: Path,
) -> None:
    cert, key = _make_cert(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    closed = anyio.Event()

    async def handler(server: Server, conn: Conn) -> None:
        tls = await TLSStream.wrap(
            conn.stream, server_side=True, ssl_context=server_context, standard_compatible=False
        )
        tls_conn = Conn(tls, conn.index)
        await server.next_request(tls_conn)
        await tls_conn.send(OK)  # keep-alive promised, then closed while idle
        await tls.aclose()
        closed.set()

    async with serve(handler) as server:
        transport = FastTransport(ssl_context=ssl.create_default_context(cafile=str(cert)))
        url = f"https://localhost:{server.port}/"
        async with client_for(transport) as client:
            for _ in range(3):
                closed = anyio.Event()
                assert (await client.get(url)).content == b"[]"
                await closed.wait()
                idle = transport._idle[("https", "localhost", server.port)][0]
                with anyio.fail_after(5):
                    while not idle.readable():  # the close has reached our socket
                        await anyio.lowlevel.checkpoint()
        assert server.connections == 3
        assert transport.resent_requests == 0  # found closed before use: never written to


def test_trio_backend() -> None:
    pytest.importorskip("trio")

    async def main() -> None:
        async def handler(server: Server, conn: Conn) -> None:
            while (request := await server.next_request(conn)) is not None:
                if request.target == b"/slow":
                    await anyio.sleep_forever()
                await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                await conn.send(chunked(b"[1,", b"2]"))

        async with serve(handler) as server:
            transport = FastTransport()
            async with client_for(transport, timeout=httpx.Timeout(5.0, read=0.2)) as client:
                for _ in range(3):
                    assert (await client.post(server.url, json={"a": 1})).json() == [1, 2]
                assert server.connections == 1
                with pytest.raises(httpx.ReadTimeout):
                    await client.get(f"{server.url}/slow")
                assert transport.num_connections == 0
                assert (await client.get(server.url)).json() == [1, 2]

    anyio.run(main, backend="trio")


@pytest.mark.asyncio
async def test_warm_opens_idle_connections_that_a_burst_then_reuses() -> None:
    async with serve(respond_with(OK)) as server:
        transport = FastTransport(max_connections=4)
        async with client_for(transport) as client:
            assert await transport.warm(server.url, 3) == 3
            assert transport.num_idle_connections == 3
            assert await transport.warm(server.url, 3) == 0  # already open
            assert await transport.warm(server.url, 10) == 1  # never past max_connections
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(client.post, server.url)
            assert transport.num_connections == 4
        assert server.connections == 4  # the burst opened none of its own
        assert len(server.requests) == 4
