"""Hostile or broken answers stay bounded: compression bombs, redirects, Ctrl-C.

Real loopback servers (`LoopServer`), through both routes a request can take: embedkit's
`FastTransport` (the default) and httpx's stock transport (`Connection(http2=True)`, which
speaks HTTP/1.1 to an http:// URL). The memory and Ctrl-C tests run in a subprocess, so
their peak RSS and their signal are their own.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

import embedkit
from embedkit import Connection, ResponseError, StatusError
from embedkit._transports import ResponseTooLarge, decode_limited

from .loopserver import LoopServer

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20


def gzip_bomb(decoded_mb: int) -> bytes:
    """`decoded_mb` MB of zeros, gzipped (about 1 KB per MB), built without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(MB)
    parts = [packer.compress(zeros) for _ in range(decoded_mb)]
    return b"".join(parts) + packer.flush()


class Canned(LoopServer):
    """Answers every request with one canned response (head and body bytes)."""

    name = "canned server"

    def __init__(self, head: bytes = b"", body: bytes = b"") -> None:
        super().__init__()
        self.head = head
        self.body = body
        self.requests: list[dict[str, str]] = []

    async def respond(
        self,
        request_line: bytes,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        self.requests.append(headers)
        writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body)
        await writer.drain()
        return True


ROUTES = {"FastTransport": Connection(), "httpx stock": Connection(http2=True)}


def with_limit(route: str, limit: int) -> Connection:
    return Connection(http2=ROUTES[route].http2, max_response_size=limit)


@pytest.mark.asyncio
@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_gzip_bomb_ends_in_a_response_error_naming_the_limit(route: str) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
    with Canned.running(head=head, body=gzip_bomb(64)) as server:
        url = f"http://127.0.0.1:{server.port}/models/m"
        connection = with_limit(route, MB)
        async with embedkit.AsyncEmbedder(
            url=url, token="t", retry=None, connection=connection
        ) as emb:
            with pytest.raises(ResponseError) as caught:
                await emb.embed("boom")
    message = str(caught.value)
    assert f"limit of {MB} bytes once decoded (gzip)" in message
    assert "max_response_size" in message


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_every_encoding_is_decoded_up_to_the_limit_and_no_further(encoding: str) -> None:
    import brotli  # type: ignore[import-untyped]
    import zstandard

    pack = {
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "br": brotli.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }[encoding]
    data = os.urandom(4096) * 1024  # 4 MiB that compress well
    packed = pack(data)
    assert decode_limited(packed, [encoding], len(data)) == data
    with pytest.raises(ResponseTooLarge, match=f"once decoded \\({encoding}\\)"):
        decode_limited(packed, [encoding], len(data) - 1)
    assert decode_limited(packed, ["identity", encoding], None) == data


_BOMB_CHILD = """
import asyncio, resource, sys
sys.path.insert(0, {root!r})
import embedkit
from tests.test_hostile import Canned, gzip_bomb

head = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Encoding: gzip\\r\\n"
body = gzip_bomb(300)  # ~300 KB that inflate to 300 MB

async def main(port):
    for connection in (embedkit.Connection(max_response_size=8 << 20),
                       embedkit.Connection(max_response_size=8 << 20, http2=True)):
        async with embedkit.AsyncEmbedder(url=f"http://127.0.0.1:{{port}}/models/m", token="t",
                                          retry=None, connection=connection) as emb:
            try:
                await emb.embed("boom")
            except embedkit.ResponseError as exc:
                print("REFUSED", exc, flush=True)

with Canned.running(head=head, body=body) as server:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    asyncio.run(main(server.port))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("GROWTH_KB", after - before, flush=True)
"""


def test_a_300_mb_gzip_bomb_through_both_routes_keeps_peak_memory_bounded() -> None:
    script = _BOMB_CHILD.format(root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert sum(line.startswith("REFUSED") for line in lines) == 2, done.stdout
    growth_mb = int(lines[-1].split()[1]) / 1024
    # 8 MB decoded at most, plus a 1 MB step and the interpreter's own churn; decoding all
    # of it would take 300 MB (the issue measured 4.2 GB of peak growth)
    assert growth_mb < 64, f"peak RSS grew by {growth_mb:.0f} MB"


# ---------------------------------------------------------------------------- redirects


@pytest.mark.asyncio
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_to_another_origin_is_a_status_error_and_is_never_followed(
    route: str, status: int
) -> None:
    with Canned.running(head=b"HTTP/1.1 200 OK\r\n", body=b"[]") as elsewhere:
        location = f"http://127.0.0.1:{elsewhere.port}/steal?sig=abc123"
        head = b"HTTP/1.1 %d Moved\r\nLocation: %s\r\n" % (status, location.encode())
        with Canned.running(head=head) as server:
            url = f"http://127.0.0.1:{server.port}/models/m"
            async with embedkit.AsyncEmbedder(
                url=url, token="hf_topsecret", retry=None, connection=ROUTES[route]
            ) as emb:
                with pytest.raises(StatusError) as caught:
                    await emb.embed("a")
            assert len(server.requests) == 1
    error = caught.value
    assert type(error) is StatusError
    assert error.status_code == status
    assert f"redirected to http://127.0.0.1:{elsewhere.port}/steal;" in str(error)
    assert "abc123" not in str(error)  # no query string: it may hold a signature
    assert "hf_topsecret" not in str(error)
    assert elsewhere.requests == []  # the token never went to the other origin


@pytest.mark.asyncio
async def test_a_relative_redirect_names_the_resolved_address() -> None:
    with Canned.running(head=b"HTTP/1.1 308 Moved\r\nLocation: /v2/models/m\r\n") as server:
        url = f"http://127.0.0.1:{server.port}/models/m"
        async with embedkit.AsyncEmbedder(url=url, token="t", retry=None) as emb:
            with pytest.raises(StatusError) as caught:
                await emb.embed("a")
    assert str(caught.value).startswith(
        f"308: the server redirected to http://127.0.0.1:{server.port}/v2/models/m;"
    )


# ------------------------------------------------------------------------------- Ctrl-C


def interrupt_when(
    child: subprocess.Popen[str], ready: Callable[[], bool]
) -> tuple[float, str, str]:
    """SIGINT `child` once `ready()` (its request is on the wire): the seconds it took to
    exit after the signal, its stdout and its stderr. Killed if it outlives the test."""
    try:
        assert ready(), "the child never sent its request"
        interrupted = time.monotonic()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
        return time.monotonic() - interrupted, out, err
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


_HANG_CHILD = """
import sys
sys.path.insert(0, {root!r})
import embedkit
from tests.test_hostile import _Hang

with _Hang.running() as server:
    url = f"http://127.0.0.1:{{server.port}}/models/m"
    with embedkit.Embedder(url=url, token="t") as emb:
        try:
            emb.embed("x")
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
    print("CLOSED", flush=True)
"""


def test_ctrl_c_stops_a_blocked_sync_embed_promptly() -> None:
    script = _HANG_CHILD.format(root=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None
    stdout = child.stdout

    def arrived() -> bool:
        return stdout.readline().strip() == "ARRIVED"  # the request is on the wire

    took, out, err = interrupt_when(child, arrived)
    assert child.returncode == 0, err[-3000:]
    assert out.split() == ["INTERRUPTED", "CLOSED"]
    assert took < 3.0, f"took {took:.1f} s to stop after Ctrl-C"


class _Hang(LoopServer):
    """Holds every request without answering; `arrived` is set when the first one is in."""

    name = "hanging server"

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()

    async def respond(
        self,
        request_line: bytes,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        self.arrived.set()
        print("ARRIVED", flush=True)  # for a parent process watching this one's stdout
        await asyncio.Event().wait()  # never answers
        return False


def test_ctrl_c_stops_the_cli_promptly(tmp_path: Path) -> None:
    corpus = tmp_path / "in.txt"
    corpus.write_text("a\nb\nc\n", encoding="utf-8")
    with _Hang.running() as server:
        argv = [sys.executable, "-m", "embedkit", "embed", str(corpus), "-o"]
        argv += [str(tmp_path / "out.npy"), "--api", "hf"]
        argv += ["--url", f"http://127.0.0.1:{server.port}/models/m"]
        env = {**os.environ, "HF_TOKEN": "hf_unused", "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        took, _, err = interrupt_when(child, lambda: server.arrived.wait(60))
    assert child.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert took < 3.0, f"took {took:.1f} s to stop after Ctrl-C"
