"""Which way requests travel (embedkit's transport or httpx's), TLS settings, proxies,
the response size limit and the transport's re-sends in `stats()`, over real loopback sockets."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

import embedkit
from embedkit import Connection
from embedkit._backends.http import HttpBackend
from embedkit._transports import connection as _transport
from embedkit._transports.route import proxy_applies, ssl_context
from embedkit._transports.transport import FastTransport

from .test_transport import Conn, Server, _make_cert, reset_on_close, respond_with, serve

VECTORS = b"[[1.0, 2.0]]"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(VECTORS),
    VECTORS,
)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxies_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _backend(emb: embedkit.AsyncEmbedder) -> HttpBackend:
    backend = emb._backend
    assert isinstance(backend, HttpBackend)
    return backend


# ------------------------------------------------------------------------- proxies


@pytest.mark.asyncio
async def test_a_proxy_from_the_environment_is_followed_through_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with serve(respond_with(ANSWER)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        url = "http://embeddings.test/models/m"  # not resolvable: only the proxy can reach it
        async with embedkit.AsyncEmbedder(url=url, retry=None) as emb:
            assert _backend(emb)._direct is None  # httpx's own transport carries it
            vector = await emb.embed("a")
        assert vector.tolist() == [1.0, 2.0]
        (request,) = proxy.requests
        assert request.target == url.encode()  # absolute form: a request for a proxy


def test_proxies_are_read_as_httpx_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal.test,10.0.0.1")
    assert proxy_applies(httpx.URL("https://api.example.com/v1"))
    assert not proxy_applies(httpx.URL("http://api.example.com/v1"))  # only HTTPS_PROXY
    assert not proxy_applies(httpx.URL("https://localhost:8080/"))
    assert not proxy_applies(httpx.URL("https://tei.internal.test/"))
    assert not proxy_applies(httpx.URL("https://10.0.0.1/"))
    monkeypatch.setenv("NO_PROXY", "*")
    assert not proxy_applies(httpx.URL("https://api.example.com/v1"))


def test_without_a_proxy_embedkits_transport_carries_requests_directly() -> None:
    emb = embedkit.AsyncEmbedder(url="http://127.0.0.1:9/models/m")
    assert isinstance(_backend(emb)._direct, FastTransport)


def test_http2_goes_through_httpx() -> None:
    emb = embedkit.AsyncEmbedder(
        connection=Connection(http2=True), url="https://127.0.0.1:9/models/m"
    )
    assert _backend(emb)._direct is None


# ------------------------------------------------------------------------------ TLS


def test_ssl_context_from_httpx_style_arguments(tmp_path: Path) -> None:
    default = ssl_context()
    assert default.verify_mode == ssl.CERT_REQUIRED
    assert default.check_hostname
    assert default.cert_store_stats()["x509_ca"] > 0  # httpx's trust store (certifi)
    insecure = ssl_context(False)
    assert insecure.verify_mode == ssl.CERT_NONE
    cert, key = _make_cert(tmp_path)
    from_file = ssl_context(str(cert))
    assert from_file.cert_store_stats()["x509_ca"] == 1
    assert ssl_context(tmp_path).verify_mode == ssl.CERT_REQUIRED  # a CA directory
    given = ssl.create_default_context()
    assert ssl_context(given, cert=(str(cert), str(key))) is given  # client cert loaded
    with pytest.raises(FileNotFoundError):
        ssl_context(True, cert=str(tmp_path / "missing.pem"))
    with pytest.raises(TypeError, match="verify"):
        ssl_context(3)  # type: ignore[arg-type]


def test_tls_settings_with_a_custom_transport_are_refused() -> None:
    with pytest.raises(ValueError, match="verify="):
        embedkit.AsyncEmbedder(
            connection=Connection(verify=False, transport=FastTransport()), url="https://x.test/m"
        )
    with pytest.raises(ValueError, match="http2="):
        embedkit.AsyncEmbedder(
            connection=Connection(http2=True, http_client=httpx.AsyncClient()),
            url="https://x.test/m",
        )


@pytest.mark.asyncio
async def test_verify_with_a_ca_file_over_embedkits_transport(tmp_path: Path) -> None:
    cert, key = _make_cert(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server_context.set_alpn_protocols(["http/1.1"])
    alpn: list[str | None] = []

    async def handler(server: Server, conn: Conn) -> None:
        from anyio.streams.tls import TLSStream

        tls = await TLSStream.wrap(
            conn.stream, server_side=True, ssl_context=server_context, standard_compatible=False
        )
        alpn.append(tls.extra(anyio.streams.tls.TLSAttribute.alpn_protocol))
        await respond_with(ANSWER)(server, Conn(tls, conn.index))

    async with serve(handler) as server:
        url = f"https://localhost:{server.port}/models/m"
        async with embedkit.AsyncEmbedder(
            connection=Connection(verify=str(cert)), url=url, retry=None
        ) as emb:
            assert (await emb.embed("a")).tolist() == [1.0, 2.0]
        async with embedkit.AsyncEmbedder(url=url, retry=None) as emb:  # not trusted
            with pytest.raises(embedkit.TransportError, match="ConnectError"):
                await emb.embed("a")
    assert alpn[0] == "http/1.1"  # offered by the client, chosen by the server


# ------------------------------------------------------------- size limit, re-sends


@pytest.mark.asyncio
async def test_a_response_over_max_response_size_is_a_response_error(
    http_transport: httpx.AsyncBaseTransport | None,
) -> None:
    big = b"[[" + b"1.0, " * 400 + b"1.0]]"
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    async with serve(respond_with(wire)) as server:
        async with embedkit.AsyncEmbedder(
            connection=Connection(max_response_size=1000, transport=http_transport),
            url=f"{server.url}/models/m",
            retry=None,
        ) as emb:
            with pytest.raises(embedkit.ResponseError, match="max_response_size"):
                await emb.embed("a")
        async with embedkit.AsyncEmbedder(
            connection=Connection(transport=None), url=f"{server.url}/models/m", retry=None
        ) as emb:
            assert (await emb.embed("a")).shape == (401,)


@pytest.mark.asyncio
async def test_a_transport_resend_shows_in_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    async def handler(server: Server, conn: Conn) -> None:
        if conn.index == 0:
            await server.next_request(conn)
            await conn.send(ANSWER)
            reset_on_close(conn)  # gone before the next request arrives
            return
        await respond_with(ANSWER)(server, conn)

    async with (
        serve(handler) as server,
        embedkit.AsyncEmbedder(url=f"{server.url}/models/m", retry=None) as emb,
    ):
        await emb.embed("first")
        transport = _backend(emb)._direct
        assert transport is not None
        idle = transport._idle[("http", "127.0.0.1", server.port)][0]
        with anyio.fail_after(5):
            while not idle.readable():  # the reset has arrived
                await anyio.lowlevel.checkpoint()
        # Blind the idle check: the reset now looks like it raced our request.
        monkeypatch.setattr(_transport._Conn, "is_dead", lambda self: False)
        await emb.embed("second")
        assert emb.stats().retries == {"stale connection": 1}
    assert [r.body.count(b"second") for r in server.requests] == [0, 1]
