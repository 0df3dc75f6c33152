"""Scenario: search queries while a bulk job saturates the same embedder (priority lanes).

A web app and an ingestion job share one `AsyncEmbedder`: `aembed_file` embeds a corpus
(the bulk lane: it keeps every slot busy with full batches), while a web route calls
`embed(query)` at 10 queries/s (open loop: a query starts on time whether or not the
previous one is done). We measure each query's latency, p50 and p99:

* idle: the queries alone (the reference);
* bulk + queries with priority (the default: `embed` is "interactive", so a query goes in
  the next batch that leaves, ahead of the queued bulk texts);
* bulk + queries without it (`priority="bulk"`: a query queues behind the bulk work, FIFO);

and the bulk job's throughput alone and beside the queries. The phases run interleaved, three
rounds (one at --smoke size), and each figure is the median of its rounds.
Targets (issue 22): p99 with priority at most 2x the idle p99; bulk throughput beside the
queries at least 0.95x alone. The server is the cost model (`benchmarks._server`), with as
many slots as the client's concurrency, so a batch never queues in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import embedkit

from ._common import Scenario, at_least, at_most, median, sentences, server
from ._peers import TOKEN

NAME = "priority"
QUERY_RATE = 10.0
TARGET_P99_RATIO = 2.0
TARGET_BULK_SHARE = 0.95
SLOTS = 8


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _queries(
    emb: embedkit.AsyncEmbedder, stop: asyncio.Event, priority: Any, latencies: list[float]
) -> None:
    """Open-loop queries at QUERY_RATE until `stop` is set."""
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        started = time.perf_counter()
        await emb.embed(
            f"search query number {i}: where is the nearest library?", priority=priority
        )
        latencies.append(time.perf_counter() - started)

    start = time.perf_counter()
    i = 0
    while not stop.is_set():
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
        delay = start + i / QUERY_RATE - time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, delay))
    if tasks:
        await asyncio.gather(*tasks)


async def _phase(
    url: str, corpus: Path | None, out: Path, priority: Any, idle_seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    result: dict[str, Any] = {}
    async with embedkit.AsyncEmbedder(url=url, api="hf", token=TOKEN) as emb:
        await emb.embed_many(["warm-up one", "warm-up two"])
        stop = asyncio.Event()
        queries = (
            asyncio.create_task(_queries(emb, stop, priority, latencies))
            if priority is not None
            else None
        )
        if corpus is not None:
            started = time.perf_counter()
            done = await embedkit.aembed_file(corpus, out, overwrite=True, embedder=emb)
            seconds = time.perf_counter() - started
            result["bulk_texts_per_s"] = done.rows / seconds
        else:
            await asyncio.sleep(idle_seconds)  # the queries run alone for this long
        stop.set()
        if queries is not None:
            await queries
    if latencies:
        result["queries"] = len(latencies)
        result["p50_ms"] = _pct(latencies, 0.5) * 1000
        result["p99_ms"] = _pct(latencies, 0.99) * 1000
    return result


def run(opts: Any) -> Scenario:
    n = opts.n or (20_000 if opts.smoke else 100_000)
    server_options = {"latency_ms": 10.0, "per_text_ms": 0.05, "slots": SLOTS}
    scenario = Scenario(
        name=NAME,
        title=f"Priority: {QUERY_RATE:g} queries/s while embed_file ({n} texts) saturates "
        "the same embedder",
        setup={"n": n, "query_rate": QUERY_RATE, "server": server_options},
        columns=["phase", "queries", "query p50 ms", "query p99 ms", "bulk texts/s"],
    )
    with tempfile.TemporaryDirectory() as tmp, server(**server_options) as srv:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(sentences(n, seed=22)) + "\n", encoding="utf-8")
        out = Path(tmp) / "out.npy"
        idle_seconds = 3.0 if opts.smoke else 10.0
        phases = [
            ("queries alone (idle)", None, "interactive"),
            ("bulk alone", corpus, None),
            ("bulk + queries, priority on", corpus, "interactive"),
            ("bulk + queries, priority off", corpus, "bulk"),
        ]
        # the phases interleaved, `rounds` times (the machine is shared: its load drifts);
        # each figure is the median over the rounds
        rounds = 1 if opts.smoke else 3
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in phases}
        for _ in range(rounds):
            for label, source, priority in phases:
                result = asyncio.run(_phase(srv.hf_url, source, out, priority, idle_seconds))
                runs[label].append(result)
                opts.log(f"    {label}: {result}")
        results: dict[str, dict[str, Any]] = {}
        for label, _, _ in phases:
            keys = runs[label][0].keys()
            merged = {key: median([run[key] for run in runs[label]]) for key in keys}
            results[label] = merged
            scenario.rows.append(
                {
                    "phase": label,
                    "queries": merged.get("queries"),
                    "query p50 ms": merged.get("p50_ms"),
                    "query p99 ms": merged.get("p99_ms"),
                    "bulk texts/s": merged.get("bulk_texts_per_s"),
                    "raw": runs[label],
                }
            )
    idle = results["queries alone (idle)"]
    alone = results["bulk alone"]
    on = results["bulk + queries, priority on"]
    scenario.notes.append(
        f"Server: {SLOTS} slots of 10 ms + 0.05 ms a text; the client at its defaults "
        f'(concurrency {SLOTS}, batch 32). Priority off is `embed(q, priority="bulk")`. '
        "Phases interleaved; each figure is the median of its rounds. With ~55 queries a "
        "phase, p99 is close to the slowest query."
    )
    scenario.checks.append(
        at_most(
            "priority: query p99 beside bulk work, over the idle p99",
            on["p99_ms"] / idle["p99_ms"],
            TARGET_P99_RATIO,
            "x",
        )
    )
    scenario.checks.append(
        at_least(
            "priority: bulk throughput beside the queries, over bulk alone",
            on["bulk_texts_per_s"] / alone["bulk_texts_per_s"],
            TARGET_BULK_SHARE,
            "x",
        )
    )
    return scenario
