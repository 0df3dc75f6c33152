"""A misbehaving HF-style embedding server on real loopback sockets, for resilience tests.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) to answer
`POST /models/{name}` with `[[...], ...]` rows from `tests.fakes.vector_for`, and at a chosen
rate it fails the way real servers and proxies do:

* `loading` - 503 `{"error": "Model ... is currently loading", "estimated_time": 20.0}`
* `ratelimit` - 429 with `Retry-After: 1`
* `500` - `{"error": "unknown error"}`
* `502` - an HTML page, as a proxy sends it
* `cut` - headers promise the whole body, half of it is sent, the connection is closed
* `slow` - answers only after `slow_seconds` (past the client's read timeout)

A `cold` server answers every request 503 "loading" until it is loaded; a request carrying
`x-wait-for-model: true` is instead held until the model is ready (as HF does). The test
decides when loading ends (`finish_loading()`), so no test sleeps to simulate it.

It runs its own asyncio loop in a thread, so the client under test may use any event loop.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson

from .fakes import vector_for

FAULTS = ("loading", "ratelimit", "500", "502", "cut", "slow")


@dataclass
class Counters:
    """What the server saw and did."""

    requests: int = 0
    ok: int = 0
    texts_answered: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    loading_answers: int = 0
    held_for_model: int = 0
    wait_header_seen: int = 0


class FaultServer:
    """Start with `with FaultServer.running(...) as server:`; its URL is `server.url`."""

    def __init__(
        self,
        *,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        seed: int = 0,
        slow_seconds: float = 2.0,
        cold: bool = False,
        dim: int = 32,
    ) -> None:
        self.fault_rate = fault_rate
        self.faults = faults
        self.slow_seconds = slow_seconds
        self.cold = cold
        self.dim = dim
        self.counters = Counters()
        self._random = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loaded: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The HF-style model URL to give the client."""
        return f"http://127.0.0.1:{self.port}/models/fault-model"

    @classmethod
    @contextmanager
    def running(cls, **kwargs: object) -> Iterator[FaultServer]:
        """Run a server in a background thread for the duration of the block."""
        server = cls(**kwargs)  # type: ignore[arg-type]
        server._thread = threading.Thread(target=server._main, daemon=True)
        server._thread.start()
        if not server._ready.wait(10):
            raise RuntimeError("fault server did not start")
        try:
            yield server
        finally:
            assert server._loop is not None
            assert server._stop is not None
            server._loop.call_soon_threadsafe(server._stop.set)
            server._thread.join(10)

    def finish_loading(self) -> None:
        """The cold model is now loaded: held requests are answered, new ones succeed."""
        assert self._loop is not None
        assert self._loaded is not None
        self._loop.call_soon_threadsafe(self._loaded.set)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loaded = asyncio.Event()
        if not self.cold:
            self._loaded.set()
        self._stop = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            await self._stop.wait()
            self._server.close()
        # close lingering keep-alive connections so the thread can end
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                headers = _headers(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self._respond(headers, body, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _respond(
        self, headers: dict[str, str], body: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must be dropped."""
        assert self._loaded is not None
        self.counters.requests += 1
        wait_header = headers.get("x-wait-for-model", "").lower() == "true"
        if wait_header:
            self.counters.wait_header_seen += 1
        if not self._loaded.is_set():
            if not wait_header:
                self.counters.loading_answers += 1
                await _send(writer, 503, _LOADING)
                return True
            self.counters.held_for_model += 1
            await self._loaded.wait()
        texts = orjson.loads(body)["inputs"]
        fault = None
        if self.fault_rate and self._random.random() < self.fault_rate:
            fault = self._random.choice(self.faults)
        if fault is not None:
            self.counters.faults[fault] += 1
        payload = orjson.dumps([vector_for(t, self.dim).tolist() for t in texts])
        if fault == "loading":
            await _send(writer, 503, _LOADING)
        elif fault == "ratelimit":
            await _send(writer, 429, b'{"error": "Rate limit reached."}', b"Retry-After: 1\r\n")
        elif fault == "500":
            await _send(writer, 500, b'{"error": "unknown error"}')
        elif fault == "502":
            await _send(writer, 502, _HTML_502, b"Content-Type: text/html\r\n")
        elif fault == "cut":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(payload))
            writer.write(payload[: len(payload) // 2])
            await writer.drain()
            return False
        elif fault == "slow":
            await asyncio.sleep(self.slow_seconds)  # the fault itself: a server too slow
            await _send(writer, 200, payload)
        else:
            self.counters.ok += 1
            self.counters.texts_answered += len(texts)
            await _send(writer, 200, payload)
        return True


_LOADING = b'{"error": "Model fault-model is currently loading", "estimated_time": 20.0}'
_HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)
_REASONS = {
    200: b"OK",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, extra: bytes = b"") -> None:
    content_type = b"" if b"Content-Type" in extra else b"Content-Type: application/json\r\n"
    writer.write(
        b"HTTP/1.1 %d %s\r\n%s%sContent-Length: %d\r\n\r\n"
        % (status, _REASONS[status], content_type, extra, len(body))
        + body
    )
    await writer.drain()
