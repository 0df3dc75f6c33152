"""Timing one client over one corpus, the same way for every client."""

from __future__ import annotations

import asyncio
import gc
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._common import NEIGHBOURS, Server, check_rows, median
from ._peers import Client

WARM_UP = ["A warm-up sentence opens the first connection.", "And a second one, to be sure."]
#: seconds of idle after the warm-up, before the timed run
IDLE_AFTER_WARM_UP = 0.1


async def _once(
    client: Client, texts: Sequence[str], server: Server | None, check: bool
) -> dict[str, Any]:
    async with client:
        await client.run(WARM_UP)
        # A moment's idle between the warm-up and the timed run, the same for every client:
        # a client in service has been open a while before a burst, and background work its
        # first answer started (embedkit's pool warm-up, Connection(warm=True)) has finished.
        await asyncio.sleep(IDLE_AFTER_WARM_UP)
        before_429 = client.rejected
        if server is not None:
            server.reset()
        gc.collect()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        NEIGHBOURS.start()
        cpu = time.process_time()
        wall = time.perf_counter()
        started = time.monotonic()
        matrix = await client.run(texts)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        neighbours = NEIGHBOURS.stop()
        after = resource.getrusage(resource.RUSAGE_SELF)
        system = after.ru_stime - usage.ru_stime
        client_429 = client.rejected - before_429
    if check:
        check_rows(texts, matrix)
    elif matrix.shape[0] != len(texts):
        raise AssertionError(f"{client.name}: {matrix.shape[0]} rows for {len(texts)} texts")
    result: dict[str, Any] = {
        "client": client.name,
        "texts": len(texts),
        "seconds": wall,
        "texts_per_s": len(texts) / wall,
        "cpu_us_per_text": cpu / len(texts) * 1e6,
        "kernel_us_per_text": system / len(texts) * 1e6,
        "client_429": client_429,
        "neighbour_cores": neighbours,
    }
    if server is not None:
        stats = server.stats()
        result["requests"] = stats["requests"]
        result["ok_requests"] = stats["ok"]
        result["rejected_429"] = stats["rejected_429"]
        result["mean_batch"] = stats["texts"] / stats["requests"] if stats["requests"] else 0.0
        result["slot_busy_seconds"] = stats["slot_busy_seconds"]
        result["connections"] = stats["connections"]
        if stats["first_request_monotonic"] is not None:
            # CLOCK_MONOTONIC is shared by every process on Linux
            result["first_request_after_ms"] = (stats["first_request_monotonic"] - started) * 1e3
        slots = server.options.get("slots", 0)
        if slots:
            result["slot_utilization"] = stats["slot_busy_seconds"] / (slots * wall)
    return result


def measure(
    make: Callable[[], Client],
    texts: Sequence[str],
    server: Server | None = None,
    *,
    check: bool = True,
) -> dict[str, Any]:
    """Open a fresh client, warm it up (one connection), time `run(texts)`, check the rows.

    Waits first (up to 20 s) for other processes on the machine to go quiet.
    """
    waited = NEIGHBOURS.wait_quiet()
    result = asyncio.run(_once(make(), texts, server, check))
    result["waited_for_quiet_s"] = round(waited, 1)
    return result


def head_to_head(
    makers: Sequence[Callable[[], Client]],
    texts: Sequence[str],
    server: Server | None = None,
    *,
    rounds: int = 3,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Alternate the clients for `rounds` rounds; keep each client's median-throughput run."""
    runs: list[list[dict[str, Any]]] = [[] for _ in makers]
    for r in range(rounds):
        order = range(len(makers)) if r % 2 == 0 else reversed(range(len(makers)))
        for i in order:
            result = measure(makers[i], texts, server, check=check)
            runs[i].append(result)
            log(f"    {result['client']}: {result['texts_per_s']:,.0f} texts/s")
    return [pick_median(r) for r in runs]


def pick_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, annotated with every round's number."""
    rates = [r["texts_per_s"] for r in runs]
    mid = median(rates)
    best = min(runs, key=lambda r: abs(r["texts_per_s"] - mid))
    out = dict(best)
    out["rounds"] = [round(x, 1) for x in rates]
    return out


def percentile(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, dtype=float), q))
