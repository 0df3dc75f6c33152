"""The default transport against real servers on loopback, and httpx's stock one beside it.

Each server gets 20,000 texts through `AsyncEmbedder`, over embedkit's default transport and
over `httpx.AsyncHTTPTransport()`; the answers must be exactly the vectors the server computed
(tests.fakes.vector_for) and no error may reach the caller.

* nginx as a TLS-terminating reverse proxy in front of the hash server, with a CA and
  certificate made by the test, `gzip on`, `keepalive_timeout 1s`, `keepalive_requests 5`
  (waves of requests spaced past the timeout meet connections nginx has closed) and
  `client_max_body_size 16k` (a batch over it is answered 413 and must be split, never
  become a TransportError).
* uvicorn with `--http h11` and with `--http httptools`; hypercorn (plain, and over TLS
  with HTTP/2 for `http2=True`).

Servers are started by the tests and stopped by PID (tests/servers.py).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

import embedkit
from devtools.nginx import NGINX, nginx_path, running_nginx
from embedkit import Connection, Limits, RetryPolicy

from . import asgi_hash
from .fakes import vectors_for
from .hashserver import HashServer
from .servers import ROOT, free_port, running, stop

N_TEXTS = 20_000

pytestmark = [pytest.mark.integration]

TRANSPORTS = ["embedkit", "httpx"]


def _texts(n: int = N_TEXTS, long: range = range(0)) -> list[str]:
    """Distinct texts; those whose index is in `long` are ~900 bytes (a batch of 32 of them
    is over nginx's 16 KB body limit, a batch of 16 is under it)."""
    return [f"text {i} " + ("x" * 900 if i in long else "y" * (i % 40)) for i in range(n)]


def _fast_retry() -> RetryPolicy:
    async def no_wait(seconds: float) -> None:
        await anyio.lowlevel.checkpoint()

    return RetryPolicy(sleep=no_wait)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polling a process we do not control; not test synchronisation
    raise RuntimeError(f"port {port} not open after 30 s:\n{log.read_text(errors='replace')}")


# ------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a certificate it signed for localhost and 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make the test CA and certificate")
    d = tmp_path_factory.mktemp("tls")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req", "-x509", *ec, "-days", "2", "-subj", "/CN=embedkit test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.pem",
    )  # fmt: skip
    run("req", *ec, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
    )  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


# -------------------------------------------------------------------------- nginx

NGINX_HTTP = """
    keepalive_timeout 1s;
    keepalive_requests 5;
    client_max_body_size 16k;
    gzip on;
    gzip_types application/json;
    gzip_min_length 64;
    gzip_proxied any;
    upstream embed {{
        server 127.0.0.1:{upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://embed;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


@pytest.fixture(scope="module")
def nginx(tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx terminating TLS in front of a hash server; yields its https:// root URL."""
    require_nginx()
    d = tmp_path_factory.mktemp("nginx")
    port = free_port()
    with HashServer.running(dim=asgi_hash.DIM) as upstream:
        body = NGINX_HTTP.format(
            upstream=upstream.port, port=port, cert=tls["cert"], key=tls["key"]
        )
        with running_nginx(d, body, [port]):
            yield f"https://localhost:{port}"


def require_nginx() -> None:
    """Skip (outside CI; in CI a skip fails the run) when nginx is not installed."""
    if nginx_path() is None:
        pytest.skip(
            f"nginx not found (looked for {NGINX}); install Debian's nginx-light "
            "(apt-get install nginx-light) or set EMBEDKIT_NGINX"
        )


def _embedder(
    url: str, transport: str, ca: Path | None = None, **kwargs: object
) -> embedkit.AsyncEmbedder:
    if transport == "httpx":
        verify: ssl.SSLContext | bool = True
        if ca is not None:
            verify = ssl.create_default_context(cafile=str(ca))
        kwargs["connection"] = Connection(transport=httpx.AsyncHTTPTransport(verify=verify))
    elif ca is not None:
        kwargs["connection"] = Connection(verify=str(ca))
    return embedkit.AsyncEmbedder(api="tei", url=url, retry=_fast_retry(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_nginx_tls_gzip_stale_connections_and_body_limit(
    nginx: str, tls: dict[str, Path], transport: str
) -> None:
    texts = _texts(long=range(3000, 4000))
    waves = [texts[:8000], texts[8000:14000], texts[14000:]]
    async with _embedder(nginx, transport, tls["ca"], limits=Limits(max_concurrency=8)) as emb:
        assert emb.info.model_id == "hash-model"  # TEI's /info, through nginx and TLS
        results = []
        for i, wave in enumerate(waves):
            if i:
                # Past keepalive_timeout: nginx closes every idle connection meanwhile.
                # Waiting for the server's timeout is what is under test here.
                await anyio.sleep(1.3)
            results.append(await emb.embed_many(wave))
        stats = emb.stats()
        client = emb._backend._client  # type: ignore[attr-defined]
        answer = await client.post(f"{nginx}/embed", json={"inputs": ["a"] * 40})
        assert answer.headers["content-encoding"] == "gzip"  # and httpx decoded it:
        assert len(answer.json()) == 40
    np.testing.assert_array_equal(np.concatenate(results), vectors_for(texts, asgi_hash.DIM))
    assert stats.splits > 0  # 413s from nginx became splits...
    assert stats.failed_texts == 0  # ...and nothing reached a caller as an error
    transport_retries = {k: v for k, v in stats.retries.items() if k not in ("413",)}
    # A keep-alive race (nginx closing as we send) may cost a retry, never a failure.
    assert sum(transport_retries.values()) <= stats.requests // 50, stats.retries


# -------------------------------------------------------------- uvicorn, hypercorn


@pytest.fixture(scope="module", params=["uvicorn-h11", "uvicorn-httptools", "hypercorn"])
def asgi_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The hash app under a real ASGI server; yields its http:// root URL."""
    port = free_port()
    app = "tests.asgi_hash:app"
    if request.param == "hypercorn":
        argv = [sys.executable, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
    else:
        http = request.param.split("-")[1]
        argv = [
            sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--http", http, "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    log = tmp_path_factory.mktemp("asgi") / "server.log"
    url = f"http://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(ROOT)}  # `tests.asgi_hash` is imported from the repository root
    with running(argv, health_url=f"{url}/health", log=log, timeout=60, env=env):
        yield url


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_asgi_servers(asgi_server: str, transport: str) -> None:
    texts = _texts()
    async with _embedder(asgi_server, transport, limits=Limits(max_concurrency=8)) as emb:
        matrix = await emb.embed_many(texts)
        stats = emb.stats()
    np.testing.assert_array_equal(matrix, vectors_for(texts, asgi_hash.DIM))
    assert stats.failed_texts == 0
    assert stats.retries == {}


@pytest.mark.asyncio
async def test_http2_over_tls_with_hypercorn(
    tls: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    log = tmp_path_factory.mktemp("h2") / "server.log"
    argv = [
        sys.executable, "-m", "hypercorn", "tests.asgi_hash:app", "--bind", f"127.0.0.1:{port}",
        "--certfile", str(tls["cert"]), "--keyfile", str(tls["key"]),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once, before any I/O
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    try:
        _wait_for_port(port, process, log)
        texts = _texts(2000)
        url = f"https://localhost:{port}"
        async with embedkit.AsyncEmbedder(
            connection=Connection(verify=str(tls["ca"]), http2=True),
            api="tei",
            url=url,
            retry=_fast_retry(),
        ) as emb:
            matrix = await emb.embed_many(texts)
            # The server reports which protocol the embedder's own client spoke.
            health = await emb._backend._client.get(f"{url}/health")  # type: ignore[attr-defined]
            assert health.headers["x-http-version"] == "2"
        np.testing.assert_array_equal(matrix, vectors_for(texts, asgi_hash.DIM))
    finally:
        stop(process)
