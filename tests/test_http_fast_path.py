"""The backend's fast path: a request head built once (`PreparedPost`), sent by
`FastTransport.send_prepared` without httpx's Request/Response models.

Its bytes must be exactly what `httpx.Request` + `handle_async_request` send, what comes
back must be read as before (Content-Encoding, error statuses and their headers, the
token never shown), and one cancel scope per exchange must keep httpx's per-read timeout.
"""

from __future__ import annotations

import gzip

import anyio
import anyio.abc
import httpx
import pytest
import trio.testing

import embedkit
from embedkit._auth import Secret
from embedkit._backends.http import HttpBackend
from embedkit._backends.protocols import HFProtocol, Options
from embedkit._transports import FastTransport, PreparedPost
from embedkit._transports.request import _serialize

from .test_transport import Conn, Handler, Server, respond_with, serve

TOKEN = "hf_fast_path_secret"


def _httpx_bytes(url: str, headers: dict[str, str], body: bytes) -> bytes:
    """What `handle_async_request` sends for httpx's own Request."""
    request = httpx.Request("POST", url, headers=headers, content=body)
    first, second, _ = _serialize(request, body)
    return first + second


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/embed",
        "https://router.huggingface.co/hf-inference/models/a%2Fb/pipeline/feature-extraction",
        "http://[::1]:9/v1/embeddings?api-version=2024-02-01",
        "http://example.test",
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
        {"Host": "other.test", "x-wait-for-model": "true", "Connection": "close"},
    ],
)
@pytest.mark.parametrize("size", [1, 2000, 65536, 65537, 300_000])
def test_prepared_bytes_are_what_httpx_sends(url: str, headers: dict[str, str], size: int) -> None:
    body = b"x" * size
    prepared = PreparedPost.build(httpx.URL(url), httpx.Headers(headers))
    assert prepared is not None
    assert prepared.head + b"Content-Length: %d\r\n\r\n" % size + body == _httpx_bytes(
        url, headers, body
    )
    assert prepared.close is ("Connection" in headers)
    assert TOKEN not in repr(prepared)


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("http://a.test/embed", {"content-length": "5"}),
        ("http://a.test/embed", {"transfer-encoding": "chunked"}),
        ("http://a.test/embed", {"x-note": "a\r\nb"}),
        ("ftp://a.test/embed", {}),
    ],
    ids=["own-length", "own-chunking", "crlf", "not-http"],
)
def test_heads_that_cannot_be_prepared(url: str, headers: dict[str, str]) -> None:
    assert PreparedPost.build(httpx.URL(url), httpx.Headers(headers)) is None


# ---------------------------------------------------------------- over a real socket


def _scripted(*wires: bytes) -> Handler:
    """A keep-alive handler answering successive requests with ``wires``, once each."""
    script = list(wires)

    async def handler(server: Server, conn: Conn) -> None:
        while script and await server.next_request(conn) is not None:
            await conn.send(script.pop(0))

    return handler


def _wire(status: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
        status.encode(),
        extra,
        len(body),
        body,
    )


@pytest.mark.asyncio
async def test_the_fast_path_sends_httpx_headers_and_reads_every_kind_of_answer() -> None:
    vectors = b"[[1.0, 2.0]]"
    handler = _scripted(
        _wire("200 OK", gzip.compress(vectors), b"Content-Encoding: gzip\r\n"),
        _wire("200 OK", vectors),
        _wire("429 Too Many Requests", b'{"error": "slow down"}', b"Retry-After: 7\r\n"),
        _wire("503 Service Unavailable", b'{"error": "Model m is currently loading"}'),
        _wire("400 Bad Request", b'{"error": "bad token %s"}' % TOKEN.encode()),
        _wire("200 OK", vectors),
    )
    async with serve(handler) as server:
        url = f"{server.url}/models/m"
        backend = HttpBackend(
            HFProtocol(model=None, url=url, options=Options()), token=Secret(TOKEN)
        )
        assert isinstance(backend._direct, FastTransport)
        assert backend._prepared is not None
        try:
            assert (await backend.embed_batch(["a"])).tolist() == [[1.0, 2.0]]  # gunzipped
            assert (await backend.embed_batch(["b"])).tolist() == [[1.0, 2.0]]
            with pytest.raises(embedkit.RateLimitError) as limited:
                await backend.embed_batch(["c"])
            assert limited.value.retry_after == 7.0
            assert limited.value.message == "slow down"
            with pytest.raises(embedkit.ModelLoadingError):
                await backend.embed_batch(["d"])
            assert backend.wait_for_model
            with pytest.raises(embedkit.InputError) as refused:
                await backend.embed_batch(["e"])
            assert TOKEN not in str(refused.value)
            assert TOKEN not in refused.value.message
            assert (await backend.embed_batch(["f"])).shape == (1, 2)
        finally:
            await backend.aclose()
    sent = server.requests
    assert [r.body for r in sent] == [backend.protocol.body([t]) for t in "abcdef"]
    for request, wait in zip(sent, [False] * 4 + [True] * 2, strict=True):
        headers = dict(backend._base_headers)
        if wait:
            headers["x-wait-for-model"] = "true"
        expected = httpx.Request(
            "POST",
            url,
            headers={"accept-encoding": "gzip, deflate", "user-agent": _user_agent(), **headers},
            content=request.body,
        )
        assert request.headers == [(k.lower(), v) for k, v in expected.headers.raw]
        assert request.target == b"/models/m"


def _user_agent() -> str:
    from embedkit._backends.http import _USER_AGENT

    return _USER_AGENT


@pytest.mark.asyncio
async def test_a_header_that_cannot_be_prepared_fails_as_before() -> None:
    handler = _scripted(_wire("200 OK", b"[[1.0]]"))
    async with serve(handler) as server:
        backend = HttpBackend(
            HFProtocol(model=None, url=f"{server.url}/m", options=Options()),
            headers={"x-note": "a\r\nb"},
        )
        assert backend._prepared is None  # httpx.Request's path, which refuses it
        try:
            with pytest.raises(embedkit.TransportError, match="CR or LF"):
                await backend.embed_batch(["a"])
        finally:
            await backend.aclose()
    assert server.requests == []


# ------------------------------------------------------- timeouts on a virtual clock


class _TimedStream(anyio.abc.ByteStream):
    """Server bytes that arrive at set times after the connection opens (anyio's clock)."""

    def __init__(self, schedule: list[tuple[float, bytes]]) -> None:
        self.schedule = list(schedule)
        self.opened = anyio.current_time()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.schedule:
            raise anyio.EndOfStream
        at, data = self.schedule[0]
        await anyio.sleep_until(self.opened + at)  # cancel-safe: nothing taken before
        self.schedule.pop(0)
        return data

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class _TimedTransport(FastTransport):
    def __init__(self, schedule: list[tuple[float, bytes]]) -> None:
        super().__init__()
        self.schedule = schedule

    async def _open_stream(
        self, scheme: str, host: str, port: int, sni: str
    ) -> anyio.abc.ByteStream:
        return _TimedStream(self.schedule)


def _timed_post(schedule: list[tuple[float, bytes]], read: float) -> tuple[bytes | str, float]:
    """POST through the fast path on trio's virtual clock: (body or error name, seconds)."""

    async def main() -> tuple[bytes | str, float]:
        transport = _TimedTransport(schedule)
        prepared = PreparedPost.build(httpx.URL("http://server.test/embed"), httpx.Headers())
        assert prepared is not None
        start = anyio.current_time()
        try:
            raw = await transport.send_prepared(
                prepared, b"{}", httpx.Timeout(5.0, read=read).as_dict()
            )
            outcome: bytes | str = raw.content
        except httpx.TimeoutException as exc:
            outcome = type(exc).__name__
        finally:
            await transport.aclose()
        return outcome, anyio.current_time() - start

    clock = trio.testing.MockClock(autojump_threshold=0)
    return anyio.run(main, backend="trio", backend_options={"clock": clock})


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


def test_a_response_trickling_in_within_the_read_timeout_is_read_whole() -> None:
    # 0.6 s in all, but never 0.2 s without a byte: httpx's read timeout is per read.
    schedule = [(0.15, HEAD), (0.3, b"[1"), (0.45, b",2"), (0.6, b"]")]
    body, elapsed = _timed_post(schedule, read=0.2)
    assert body == b"[1,2]"
    assert elapsed == pytest.approx(0.6)


def test_a_silence_longer_than_the_read_timeout_is_a_read_timeout() -> None:
    schedule = [(0.1, HEAD), (0.15, b"[1"), (0.5, b",2]")]
    outcome, elapsed = _timed_post(schedule, read=0.2)
    assert outcome == "ReadTimeout"
    assert elapsed == pytest.approx(0.15 + 0.2)  # 0.2 s after the last byte, not before


def test_a_read_timeout_longer_than_the_write_timeout_is_honoured() -> None:
    # read > write: the scope's first deadline (the write timeout's) fires and is re-armed.
    schedule = [(8.0, HEAD + b"[1,2]")]
    body, elapsed = _timed_post(schedule, read=10.0)
    assert body == b"[1,2]"
    assert elapsed == pytest.approx(8.0)
    outcome, elapsed = _timed_post([(12.0, HEAD + b"[1,2]")], read=10.0)
    assert outcome == "ReadTimeout"
    assert elapsed == pytest.approx(10.0)


@pytest.mark.asyncio
async def test_after_the_first_answer_the_pool_opens_up_to_the_concurrency_limit() -> None:
    body = b"[[0.5,0.25]]"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    async with serve(respond_with(answer)) as server:
        async with embedkit.AsyncEmbedder(
            url=server.url, limits=embedkit.Limits(max_concurrency=4, max_batch_size=1)
        ) as emb:
            assert server.connections == 0  # nothing opened before the first request
            row = await emb.embed("first")
            assert row.tolist() == [0.5, 0.25]
            with anyio.fail_after(5):  # the warm-up runs in the background: wait for it
                while server.connections < 4:
                    await anyio.sleep(0.001)
            direct = emb._backend._direct  # type: ignore[attr-defined]
            assert direct.num_idle_connections == 4
            # a burst of four finds four open connections and opens none of its own
            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(emb.embed, f"burst {i}")
        assert server.connections == 4


@pytest.mark.asyncio
async def test_warm_false_leaves_the_pool_to_open_on_demand() -> None:
    backend = HttpBackend(
        HFProtocol(model=None, url="http://127.0.0.1:9/embed", options=Options()), warm=False
    )
    assert backend.fit_concurrency(32, 8) == 8
    with anyio.fail_after(1):
        await backend.run()  # returns at once: nothing waits for a first answer
    warm = HttpBackend(
        HFProtocol(model=None, url="http://127.0.0.1:9/embed", options=Options()), warm=True
    )
    warm.fit_concurrency(32, 8)
    async with anyio.create_task_group() as tg:
        await tg.start(warm.run)  # waits for a first answer that never comes here
        tg.cancel_scope.cancel()
    await backend.aclose()
    await warm.aclose()
