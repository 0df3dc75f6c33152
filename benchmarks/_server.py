"""The load-test server: an embedding API with a cost model, in its own process.

    python -m benchmarks._server --latency-ms 10 --per-text-ms 0.05 --slots 4

It speaks the two wire formats the benchmarks need, over plain HTTP/1.1 with keep-alive,
written on raw asyncio so that the server itself costs little CPU:

* `POST /embed` (any path not under `/v1`): HF / TEI style `{"inputs": [...]}` answered
  with `[[f32, ...], ...]` (always 2-D, as TEI-backed models answer).
* `POST /v1/embeddings`: OpenAI style, `encoding_format` "base64" or "float".
* `GET /health`, `GET /stats` (counters as JSON), `POST /reset` (zero the counters).

The cost model, the picture of a small GPU embedding service behind one network hop:
every admitted request holds one of `--slots` slots for `latency + per_text × n` seconds
(requests queue FIFO while every slot is busy). With `--slots 0` the answer is instant.
With `--rate R` a token bucket (rate R, burst `--burst`) admits requests first; a request
without a token is answered at once with 429, `Retry-After` (whole seconds, rounded up) and
`retry-after-ms` (exact), as OpenAI sends them.

Vectors are real float32 values (unit length, dimension `--dim`), serialized once at start:
row k of an answer is canned row `crc32(text) % 64`, so a client's output can be checked
against its input order. JSON rows are printed as the shortest float32 repr (as TEI does).

The chosen port is printed on stdout as `PORT <n>` once the server is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import heapq
import itertools
import math
import threading
import time
import zlib

import numpy as np
import orjson

CANNED = 64

_REASONS = {200: b"OK", 404: b"Not Found", 400: b"Bad Request", 429: b"Too Many Requests"}


def canned_vectors(dim: int, seed: int = 0) -> np.ndarray:
    """The canned unit-length float32 rows every server answers with."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((CANNED, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def row_index(text: str) -> int:
    """Which canned row the server answers for `text`."""
    return zlib.crc32(text.encode()) % CANNED


class Counters:
    """What the server saw; served on `/stats`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.requests = 0
        self.texts = 0
        self.ok = 0
        self.rejected = 0
        self.busy = 0.0
        self.max_waiting = 0
        self.waiting = 0
        self.max_batch = 0
        self.connections = 0
        self.first: float | None = None

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "seconds": time.perf_counter() - self.started,
                "requests": self.requests,
                "texts": self.texts,
                "ok": self.ok,
                "rejected_429": self.rejected,
                "slot_busy_seconds": self.busy,
                "max_waiting": self.max_waiting,
                "max_batch": self.max_batch,
                "connections": self.connections,
                "first_request_monotonic": self.first,
            }
        )


class Bucket:
    """A token bucket that never goes into debt: a request either has a token or gets 429."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.monotonic()

    def take(self) -> float:
        """0.0 when admitted; else the seconds until a token will be there."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Timer:
    """Sleeps with ~0.1 ms precision, where `asyncio.sleep` overshoots by up to ~1 ms.

    asyncio's epoll loop rounds every timeout up to a whole millisecond, which would add ~1 ms
    to each request of the cost model (10% at 10 ms). A thread waits on a condition variable
    (nanosecond timeouts) for the earliest deadline and resolves its future on the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self.count = itertools.count()
        self.cond = threading.Condition()
        threading.Thread(target=self.run, daemon=True, name="cost-timer").start()

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()
        with self.cond:
            heapq.heappush(self.heap, (time.perf_counter() + seconds, next(self.count), future))
            self.cond.notify()
        return future

    def run(self) -> None:
        with self.cond:
            while True:
                if not self.heap:
                    self.cond.wait()
                    continue
                due = self.heap[0][0] - time.perf_counter()
                if due > 0:
                    self.cond.wait(due)
                    continue
                _, _, future = heapq.heappop(self.heap)
                self.loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.latency = args.latency_ms / 1000.0
        self.per_text = args.per_text_ms / 1000.0
        self.slots = asyncio.Semaphore(args.slots) if args.slots > 0 else None
        self.bucket = (
            Bucket(args.rate, args.burst or max(1.0, args.rate / 10)) if args.rate else None
        )
        self.counters = Counters()
        self.timer: Timer | None = None
        vectors = canned_vectors(args.dim)
        self.json_rows = [orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY) for v in vectors]
        self.b64_rows = [base64.b64encode(v.astype("<f4").tobytes()) for v in vectors]

    def cost(self, n: int) -> float:
        return self.latency + self.per_text * n

    def answer_headers(self) -> bytes:
        """Extra header lines of a successful answer (a server built on this one adds some)."""
        return b""

    def parse(self, path: bytes, body: bytes) -> tuple[int, bytes, bytes, int]:
        """(status, content type, body, texts) for a POST, before any waiting."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, b"text/plain", b"bad json", 0
        openai = path.startswith(b"/v1")
        inputs = payload.get("input" if openai else "inputs") if isinstance(payload, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return 400, b"application/json", b'{"error":"inputs must be a non-empty list"}', 0
        n = len(inputs)
        self.counters.texts += n
        self.counters.max_batch = max(self.counters.max_batch, n)
        rows = [row_index(t) for t in inputs]
        if not openai:
            return (
                200,
                b"application/json",
                b"[" + b",".join(self.json_rows[k] for k in rows) + b"]",
                n,
            )
        return 200, b"application/json", self.openai_body(payload, rows, n), n

    def openai_body(self, payload: dict[str, object], rows: list[int], tokens: int) -> bytes:
        """An OpenAI-style answer with canned rows `rows`, reporting `tokens` in `usage`."""
        if payload.get("encoding_format") == "base64":
            cells = [b'"' + self.b64_rows[k] + b'"' for k in rows]
        else:
            cells = [self.json_rows[k] for k in rows]
        data = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}' % (i, cell)
            for i, cell in enumerate(cells)
        )
        usage = b'"usage":{"prompt_tokens":%d,"total_tokens":%d}' % (tokens, tokens)
        return b'{"object":"list","data":[' + data + b'],"model":"bench",' + usage + b"}"

    async def serve_slow(self, n: int) -> None:
        """Hold a slot for the cost of a batch of n texts (FIFO queue when all are busy)."""
        assert self.slots is not None
        c = self.counters
        c.waiting += 1
        c.max_waiting = max(c.max_waiting, c.waiting)
        async with self.slots:
            c.waiting -= 1
            started = time.perf_counter()
            if self.timer is None:
                self.timer = Timer(asyncio.get_running_loop())
            await self.timer.sleep(self.cost(n))
            c.busy += time.perf_counter() - started


def response(status: int, ctype: bytes, body: bytes, extra: bytes = b"") -> bytes:
    reason = _REASONS.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
        % (status, reason, ctype, len(body), extra)
        + body
    )


class Connection(asyncio.Protocol):
    """One keep-alive connection; requests on it are answered one at a time, in order."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.buffer = bytearray()
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.app.counters.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        while self.transport is not None and not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).split(b"\r\n")
            method, path, _ = head[0].split(b" ", 2)
            length = 0
            close = False
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self.handle(method, path, body, close)

    def handle(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        app = self.app
        if method == b"GET":
            if path == b"/stats":
                self.send(response(200, b"application/json", app.counters.as_json()), close)
            elif path in (b"/health", b"/"):
                self.send(response(200, b"text/plain", b"ok"), close)
            else:
                self.send(response(404, b"text/plain", b"not found"), close)
            return
        if path == b"/reset":
            app.counters.reset()
            if app.bucket is not None:
                app.bucket.tokens = app.bucket.burst
            self.send(response(200, b"text/plain", b"ok"), close)
            return
        app.counters.requests += 1
        if app.counters.first is None:
            app.counters.first = time.monotonic()
        if app.bucket is not None:
            wait = app.bucket.take()
            if wait > 0:
                app.counters.rejected += 1
                extra = b"retry-after: %d\r\nretry-after-ms: %d\r\n" % (
                    max(1, math.ceil(wait)),
                    max(1, math.ceil(wait * 1000)),
                )
                body429 = b'{"error":{"message":"Rate limit reached","type":"rate_limit"}}'
                self.send(response(429, b"application/json", body429, extra), close)
                return
        status, ctype, answer, n = app.parse(path, body)
        if status != 200 or app.slots is None:
            if status == 200:
                app.counters.ok += 1
            self.send(response(status, ctype, answer), close)
            return
        self.busy = True
        task = asyncio.get_running_loop().create_task(self.slow(n, answer, close))
        task.add_done_callback(_TASKS.discard)
        _TASKS.add(task)

    async def slow(self, n: int, answer: bytes, close: bool) -> None:
        await self.app.serve_slow(n)
        self.app.counters.ok += 1
        self.busy = False
        self.send(response(200, b"application/json", answer, self.app.answer_headers()), close)
        if self.buffer:
            self.next_request()

    def send(self, data: bytes, close: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if close:
            self.transport.close()
            self.transport = None


_TASKS: set[asyncio.Task[None]] = set()


async def main(
    args: argparse.Namespace, app_class: type[App] = App, connection: type[Connection] = Connection
) -> None:
    app = app_class(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: connection(app), args.host, args.port, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await server.serve_forever()


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The server's options; a server built on this one passes its parser with its own."""
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed cost of a request")
    parser.add_argument("--per-text-ms", type=float, default=0.0, help="cost of each text")
    parser.add_argument("--slots", type=int, default=0, help="requests served at once (0: instant)")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s admitted (0: no limit)")
    parser.add_argument(
        "--burst", type=float, default=0.0, help="token bucket size (default rate/10)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parse_args()))
