"""A fast, deterministic TEI-style embedding server on loopback, for the bulk and CLI tests.

`POST /embed` answers `tests.fakes.vector_for(text)` for every input, so a test can compute
the expected matrix on its own. `GET /info` and `GET /health` answer as TEI does. The test
controls it from outside:

* `pause()` holds every new request until `resume()`, and `hold_after = n` does the same
  once n texts are answered (to kill a client mid-run without guessing at timings);
* `refuse` is a set of texts answered with TEI's 422 Validation error;
* `delay` makes every answer wait that long (a slower server, not synchronisation).

It speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) and runs its own asyncio
loop in a thread, so the client under test may run anywhere: in the test, or in a subprocess.
"""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from .fakes import vector_for
from .loopserver import LoopServer, send


class HashServer(LoopServer):
    """Start with `with HashServer.running(dim=8) as server:`; its root URL is `server.url`."""

    name = "hash server"

    def __init__(self, *, dim: int = 8, delay: float = 0.0, max_batch: int = 256) -> None:
        super().__init__()
        self.dim = dim
        self.delay = delay
        self.max_batch = max_batch
        self.refuse: set[str] = set()
        self.hold_after: int | None = None
        self.requests = 0
        self.texts = 0
        self._open: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The server root, for `api="tei"` / `--api tei --url`."""
        return f"http://127.0.0.1:{self.port}"

    def pause(self) -> None:
        """Hold every request that arrives from now on (those already answered are gone)."""
        assert self._open is not None
        self.call(self._open.clear)

    def resume(self) -> None:
        """Answer held requests, and new ones at once (this also ends `hold_after`)."""
        assert self._open is not None

        def release() -> None:
            assert self._open is not None
            self.hold_after = None
            self._open.set()

        self.call(release)

    def on_loop(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    async def respond(
        self,
        request_line: bytes,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        status, payload = await self._answer(request_line, body)
        await send(writer, status, payload)
        return True

    async def _answer(self, request_line: bytes, body: bytes) -> tuple[int, bytes]:
        method, path = request_line.split(b" ")[:2]
        if method == b"GET" and path == b"/info":
            info = {
                "model_id": "hash-model",
                "max_client_batch_size": self.max_batch,
                "max_concurrent_requests": 4096,
            }
            return 200, orjson.dumps(info)
        if method == b"GET" and path == b"/health":
            return 200, b"{}"
        if method != b"POST" or path != b"/embed":
            return 404, b'{"error": "no such route", "error_type": "NotFound"}'
        assert self._open is not None
        if self.hold_after is not None and self.texts >= self.hold_after:
            self._open.clear()
        await self._open.wait()
        if self.delay:
            await asyncio.sleep(self.delay)  # the server's own cost, not test synchronisation
        self.requests += 1
        texts = orjson.loads(body)["inputs"]
        for text in texts:
            if text in self.refuse:
                message = f"refused input: {text[:40]}"
                return 422, orjson.dumps({"error": message, "error_type": "Validation"})
        self.texts += len(texts)
        rows = np.stack([vector_for(text, self.dim) for text in texts])
        return 200, orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)
