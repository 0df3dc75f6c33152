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
from dataclasses import dataclass, field

import orjson

from .fakes import vector_for
from .loopserver import LoopServer, send

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


class FaultServer(LoopServer):
    """Start with `with FaultServer.running(...) as server:`; its URL is `server.url`."""

    name = "fault server"

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
        super().__init__()
        self.fault_rate = fault_rate
        self.faults = faults
        self.slow_seconds = slow_seconds
        self.cold = cold
        self.dim = dim
        self.counters = Counters()
        self._random = random.Random(seed)
        self._loaded: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The HF-style model URL to give the client."""
        return f"http://127.0.0.1:{self.port}/models/fault-model"

    def finish_loading(self) -> None:
        """The cold model is now loaded: held requests are answered, new ones succeed."""
        self.call(lambda: self._loaded.set() if self._loaded else None)

    def on_loop(self) -> None:
        self._loaded = asyncio.Event()
        if not self.cold:
            self._loaded.set()

    async def respond(
        self,
        request_line: bytes,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        return await self._respond(headers, body, writer)

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
                await send(writer, 503, _LOADING)
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
            await send(writer, 503, _LOADING)
        elif fault == "ratelimit":
            await send(writer, 429, b'{"error": "Rate limit reached."}', b"Retry-After: 1\r\n")
        elif fault == "500":
            await send(writer, 500, b'{"error": "unknown error"}')
        elif fault == "502":
            await send(writer, 502, _HTML_502, b"Content-Type: text/html\r\n")
        elif fault == "cut":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(payload))
            writer.write(payload[: len(payload) // 2])
            await writer.drain()
            return False
        elif fault == "slow":
            await asyncio.sleep(self.slow_seconds)  # the fault itself: a server too slow
            await send(writer, 200, payload)
        else:
            self.counters.ok += 1
            self.counters.texts_answered += len(texts)
            await send(writer, 200, payload)
        return True


_LOADING = b'{"error": "Model fault-model is currently loading", "estimated_time": 20.0}'
_HTML_502 = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
)
