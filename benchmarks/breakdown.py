"""Where embedkit's client CPU goes: its layers measured one at a time, bottom up.

Each layer is driven exactly as the layer above drives it (8 tasks in flight, batches of 32,
the same instant server), and its CPU is read with `time.process_time()`; the difference
between two neighbouring rows is what the upper layer adds. These reach into embedkit's
private modules on purpose; if those change shape, the affected rows are skipped.

1. FastTransport.handle_async_request: raw HTTP/1.1 exchange, body bytes out.
2. HttpBackend.embed_batch: + the wire protocol (body, decode to a checked float32 matrix,
   error mapping), and however the backend reaches the transport.
3. AsyncEmbedder.embed_many: + the scheduler (queue, batch forming, slots, retry wrapper,
   delivering rows).
4. Scheduler alone, with an instant in-process `send`: the scheduler's own cost, no HTTP.

Also, for reference, httpx.AsyncClient(transport=FastTransport).post: what httpx's client
layer (Request/Response/URL/cookie models) costs on top of the transport; and httpx's stock
transport (httpcore + h11) driven exactly as row 1 drives FastTransport, the yardstick for
row 1 (target: at most half its CPU).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import numpy as np

from ._peers import HEADERS, TOKEN, body, embedder

BATCH = 32
CONCURRENCY = 8


async def _drive(calls: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """Run `one(i)` for i < calls, 8 at a time; CPU seconds per call."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def guarded(i: int) -> None:
        async with semaphore:
            await one(i)

    for i in range(16):  # warm up connections and code paths
        await one(i)
    start = time.process_time()
    await asyncio.gather(*(guarded(i) for i in range(calls)))
    return (time.process_time() - start) / calls


async def _layers(hf_url: str, oa_url: str, texts: list[str], api: str) -> dict[str, float]:
    from embedkit._backends.http import HttpBackend
    from embedkit._backends.protocols import HFProtocol, OpenAIProtocol, Options
    from embedkit._transports.transport import FastTransport

    calls = len(texts) // BATCH
    chunks = [texts[i * BATCH : (i + 1) * BATCH] for i in range(calls)]
    if api == "hf":
        url, protocol = hf_url, HFProtocol(model=None, url=hf_url, options=Options())
        bodies = [body("hf", c) for c in chunks]
    else:
        url = oa_url + "/embeddings"
        protocol = OpenAIProtocol(model="bench", url=oa_url, options=Options())
        bodies = [body("openai", c, "base64") for c in chunks]
    out: dict[str, float] = {}

    transport = FastTransport(max_connections=16)
    headers = [(k.encode(), v.encode()) for k, v in HEADERS.items()] + [(b"host", b"127.0.0.1")]

    async def raw(i: int) -> None:
        request = httpx.Request("POST", url, headers=headers, content=bodies[i % calls])
        response = await transport.handle_async_request(request)
        await response.aread()

    out["1. FastTransport.handle_async_request"] = await _drive(calls, raw)
    await transport.aclose()

    stock = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=16))

    async def raw_stock(i: int) -> None:
        request = httpx.Request("POST", url, headers=headers, content=bodies[i % calls])
        response = await stock.handle_async_request(request)
        await response.aread()

    out["reference: httpx.AsyncHTTPTransport.handle_async_request (stock)"] = await _drive(
        calls, raw_stock
    )
    await stock.aclose()

    async with httpx.AsyncClient(
        transport=FastTransport(max_connections=16), headers=HEADERS
    ) as client:

        async def post(i: int) -> None:
            (await client.post(url, content=bodies[i % calls])).raise_for_status()

        out["reference: httpx.AsyncClient.post over FastTransport"] = await _drive(calls, post)

    from embedkit._auth import Secret

    backend = HttpBackend(protocol, token=Secret(TOKEN), max_connections=16)
    await backend.start()

    async def send(i: int) -> None:
        matrix = await backend.embed_batch(chunks[i % calls])
        assert matrix.shape == (BATCH, 384)

    out["2. + HttpBackend.embed_batch (protocol body + decode)"] = await _drive(calls, send)
    await backend.aclose()

    async with embedder(url if api == "hf" else oa_url, api=api) as emb:  # type: ignore[arg-type]
        await emb.embed_many(texts[:64])
        start = time.process_time()
        await emb.embed_many(texts)
        out["3. + scheduler: AsyncEmbedder.embed_many"] = (time.process_time() - start) / calls
    return out


async def _scheduler_alone(texts: list[str]) -> float:
    from embedkit._core.flow import AdaptiveConcurrency
    from embedkit._core.retry import DEFAULT_RETRY
    from embedkit._core.scheduler import Scheduler

    canned = np.ones((BATCH, 384), dtype=np.float32)

    async def send(batch: list[str]) -> np.ndarray:
        await asyncio.sleep(0)
        return canned[: len(batch)]

    scheduler = Scheduler(
        send,
        max_batch_size=BATCH,
        concurrency=AdaptiveConcurrency(CONCURRENCY),
        retry=DEFAULT_RETRY,
    )

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        await scheduler.submit(texts[:64])
        start = time.process_time()
        await scheduler.submit(texts)
        cpu = time.process_time() - start
        tg.cancel_scope.cancel()
    return cpu / (len(texts) // BATCH)


def layers(hf_url: str, oa_url: str, texts: list[str], rounds: int = 3) -> list[dict[str, Any]]:
    """Rows for the overhead table: CPU µs per text of each layer (least of the rounds)."""
    rows: list[dict[str, Any]] = []
    for api, path in (("hf", "JSON"), ("openai", "base64")):
        try:
            runs = [asyncio.run(_layers(hf_url, oa_url, texts, api)) for _ in range(rounds)]
        except (ImportError, AttributeError, TypeError) as exc:
            rows.append({"client": f"layers: skipped ({exc!r})", "path": path})
            continue
        for name in runs[0]:
            cpu = min(run[name] for run in runs) / BATCH * 1e6
            label = name if name.startswith("reference") else f"layer {name}"
            rows.append({"client": label, "path": path, "CPU µs/text": cpu})
    try:
        per_batch = min(asyncio.run(_scheduler_alone(texts)) for _ in range(rounds))
        rows.append(
            {
                "client": "layer 4. scheduler alone (instant in-process send, no HTTP)",
                "path": "any",
                "CPU µs/text": per_batch / BATCH * 1e6,
            }
        )
    except (ImportError, AttributeError, TypeError) as exc:
        rows.append({"client": f"scheduler alone: skipped ({exc!r})", "path": "any"})
    return rows
