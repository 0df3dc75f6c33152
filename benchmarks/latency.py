"""Scenario 4, latency: what one `embed()` on an idle client adds to one direct httpx call.

Same instant server, same text, same body. The clients take turns (the order flips every
sample), so drift on the machine hits all of them alike. "Direct httpx" is the least code
that returns a vector: `client.post(...)`, then orjson + numpy. embedkit is measured as it
ships (its own HTTP/1.1 transport) and over httpx's stock transport (`http_client=`), which
isolates what the scheduler and the decode layer add.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np

import embedkit

from ._common import PEER_TIMEOUT, Scenario, at_most, sentences, server
from ._measure import percentile
from ._peers import HEADERS, body, decode, embedder

NAME = "latency"
TARGET_ADDED_P50_MS = 0.3
DIRECT = "httpx direct call (post + orjson + numpy)"
DEFAULT = "embedkit embed() (default transport)"
STOCK = "embedkit embed() over httpx's stock transport"


async def _samples(url: str, n: int) -> dict[str, list[float]]:
    texts = sentences(n + 50, seed=4)
    async with (
        httpx.AsyncClient(timeout=PEER_TIMEOUT, headers=HEADERS) as direct_client,
        httpx.AsyncClient(timeout=PEER_TIMEOUT) as stock,
        embedder(url) as emb,
        embedder(url, connection=embedkit.Connection(http_client=stock)) as emb_stock,
    ):

        async def direct(text: str) -> np.ndarray:
            response = await direct_client.post(url, content=body("hf", [text]))
            response.raise_for_status()
            return decode("hf", response.content)[0]

        clients: dict[str, Callable[[str], Awaitable[Any]]] = {
            DIRECT: direct,
            DEFAULT: emb.embed,
            STOCK: emb_stock.embed,
        }
        names = list(clients)
        out: dict[str, list[float]] = {name: [] for name in names}
        for i, text in enumerate(texts):
            order = names if i % 2 == 0 else names[::-1]
            for name in order:
                start = time.perf_counter()
                vector = await clients[name](text)
                elapsed = time.perf_counter() - start
                if i >= 50:  # the first 50 warm up connections and code paths
                    out[name].append(elapsed)
                assert vector.shape == (384,)
    return out


def run(opts: Any) -> Scenario:
    n = 300 if opts.smoke else 3000
    scenario = Scenario(
        name=NAME,
        title=f"Latency: one call on an idle client, {n:,} samples each, alternating",
        setup={"samples": n, "server": "instant (canned body, other process)", "api": "hf (JSON)"},
        columns=["client", "p50 ms", "p90 ms", "p99 ms", "added p50 ms", "added p99 ms"],
    )
    with server(slots=0) as srv:
        samples = asyncio.run(_samples(srv.hf_url, n))
    base = samples[DIRECT]
    b50, b99 = percentile(base, 50) * 1e3, percentile(base, 99) * 1e3
    added: dict[str, float] = {}
    for name, values in samples.items():
        p50, p90, p99 = (percentile(values, q) * 1e3 for q in (50, 90, 99))
        added[name] = p50 - b50
        is_base = values is base
        scenario.rows.append(
            {
                "client": name,
                "p50 ms": p50,
                "p90 ms": p90,
                "p99 ms": p99,
                "added p50 ms": "—" if is_base else f"{p50 - b50:+.3f}",
                "added p99 ms": "—" if is_base else f"{p99 - b99:+.3f}",
                "raw": {
                    "p50_ms": p50,
                    "p90_ms": p90,
                    "p99_ms": p99,
                    "added_p50_ms": p50 - b50,
                    "added_p99_ms": p99 - b99,
                },
            }
        )
        opts.log(f"    {name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    scenario.notes.append(
        "A negative 'added' means faster than the direct httpx call: embedkit's own HTTP/1.1 "
        "transport costs less than httpx's default one (httpcore + h11)."
    )
    scenario.checks.append(
        at_most(
            "latency: added p50 of embed() vs direct httpx",
            added[DEFAULT],
            TARGET_ADDED_P50_MS,
            "ms",
            note=f"over httpx's stock transport the scheduler + decode add {added[STOCK]:+.3f} ms",
        )
    )
    return scenario
