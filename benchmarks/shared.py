"""Scenario `shared`: many processes, one budget (a quota in Redis, a persistent cache).

1. Four processes, each a web app's worker with its own embedder, under one server quota of
   R requests/s (the cost-model server admits R/s, 429 beyond). The load is uneven, as a
   load balancer's is over a short time: the workers have 12, 4, 2 and 1 users, each user
   embedding two texts, then thinking 50-150 ms. Rows: one `RedisQuota` of R for all four;
   each process told R/4 (`Limits(requests_per_second=R/4)`); each told R.
2. A 20,000-text corpus through `embed_file`, cold then warm, with a `SQLiteCache` and a
   `RedisCache`: requests sent and wall time.
3. The cost of a lookup per text (µs): `get_many` of 1,024 stored keys, SQLite and Redis.

Redis is Debian's `redis-server` on loopback, started here (`devtools.redis`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import embedkit
from devtools.redis import redis_path, running_redis
from embedkit._cache import KeyMaker

from ._common import Scenario, at_least, at_most, sentences, server

NAME = "shared"
RATE = 40.0
USERS = (12, 4, 2, 1)
TARGET_RATE_SHARE = 95.0
TARGET_429_SHARE = 5.0


def _worker(
    root: str, mode: str, redis_url: str, users: int, seconds: float, start: Any, out: Any
) -> None:
    logging.getLogger("embedkit").setLevel(logging.ERROR)  # each 429 is logged otherwise

    async def user(emb: embedkit.AsyncEmbedder, k: int, until: float) -> int:
        rng = random.Random(k)
        calls = 0
        while time.monotonic() < until:
            # retries ran out: the web app would answer 503; the load goes on
            with contextlib.suppress(embedkit.RateLimitError):
                await emb.embed_many([f"user {k} call {calls} a", f"user {k} call {calls} b"])
            calls += 1
            await asyncio.sleep(rng.uniform(0.05, 0.15))
        return calls

    async def go() -> tuple[float, float, int]:
        quota = None
        rps = None
        if mode == "redis":
            quota = embedkit.RedisQuota(redis_url, name="bench", requests_per_second=RATE)
        else:
            rps = RATE / len(USERS) if mode == "quarter" else RATE
        limits = embedkit.Limits(max_batch_size=2, max_concurrency=8, requests_per_second=rps)
        async with embedkit.AsyncEmbedder(api="tei", url=root, quota=quota, limits=limits) as emb:
            await emb.embed("warm-up")
            start.wait(60)
            began = time.time()
            until = time.monotonic() + seconds
            calls = await asyncio.gather(*(user(emb, k, until) for k in range(users)))
            return began, time.time(), sum(calls)

    out.put(asyncio.run(go()))


def _fleet(srv: Any, mode: str, redis_url: str, seconds: float) -> dict[str, Any]:
    srv.reset()
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(srv.root, mode, redis_url, u, seconds, start, out))
        for u in USERS
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while srv.stats()["ok"] < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling child processes we cannot await
    srv.reset()
    start.set()
    spans = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(60)
    stats = srv.stats()
    elapsed = max(e for _, e, _ in spans) - min(b for b, _, _ in spans)
    ok_rate = stats["ok"] / elapsed
    return {
        "ok_rate": ok_rate,
        "share": 100 * ok_rate / RATE,
        "share_429": 100 * stats["rejected_429"] / max(1, stats["requests"]),
        "requests": stats["requests"],
        "calls": sum(c for _, _, c in spans),
        "seconds": elapsed,
    }


def _file_run(root: str, corpus: Path, out: Path, cache: Any, srv: Any) -> tuple[int, float]:
    before = srv.stats()["requests"]
    began = time.perf_counter()
    embedkit.embed_file(corpus, out, api="tei", url=root, cache=cache, overwrite=True)
    return srv.stats()["requests"] - before, time.perf_counter() - began


def _lookup_us(cache: Any, keys: list[str]) -> float:
    async def go() -> float:
        values = [b"\x00" * 4 * 384] * len(keys)
        await cache.set_many(list(zip(keys, values, strict=True)))
        rounds = 20
        began = time.perf_counter()
        for _ in range(rounds):
            found = await cache.get_many(keys)
            assert all(v is not None for v in found)
        spent = time.perf_counter() - began
        if hasattr(cache, "detach"):
            await cache.detach()
        return 1e6 * spent / (rounds * len(keys))

    if hasattr(cache, "attach"):

        async def attached() -> float:
            cache.attach()
            return await go()

        return asyncio.run(attached())
    return asyncio.run(go())


def run(opts: Any) -> Scenario:
    seconds = 3.0 if opts.smoke else 8.0
    n_corpus = 2_000 if opts.smoke else 20_000
    cost = {"latency_ms": 10.0, "per_text_ms": 0.05, "slots": 8, "rate": RATE, "burst": RATE / 10}
    scenario = Scenario(
        name=NAME,
        title=f"Many processes, one budget: 4 workers under R = {RATE:g} requests/s; "
        f"a {n_corpus:,}-text corpus cold and warm",
        setup={
            "rate": RATE,
            "users": USERS,
            "seconds": seconds,
            "server": cost,
            "corpus": n_corpus,
        },
        columns=["client", "ok req/s", "% of R", "429 share", "requests", "seconds", "µs/text"],
    )
    if redis_path() is None:
        scenario.notes.append(
            "redis-server is not installed (apt-get install redis-server): skipped"
        )
        return scenario
    with tempfile.TemporaryDirectory() as tmp, running_redis(Path(tmp)) as redis_server:
        rows = {}
        with server(**cost) as srv:
            for mode, label in (
                ("redis", "RedisQuota(R) shared by the 4"),
                ("quarter", "each process told R/4"),
                ("whole", "each process told R"),
            ):
                row = _fleet(srv, mode, redis_server.url, seconds)
                rows[mode] = row
                opts.log(
                    f"    {label}: {row['ok_rate']:.1f} ok req/s ({row['share']:.0f}% of R), "
                    f"{row['share_429']:.1f}% 429"
                )
                scenario.rows.append(
                    {
                        "client": label,
                        "ok req/s": row["ok_rate"],
                        "% of R": f"{row['share']:.0f}%",
                        "429 share": f"{row['share_429']:.1f}%",
                        "requests": row["requests"],
                        "seconds": row["seconds"],
                        "raw": row,
                    }
                )
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(sentences(n_corpus, seed=20)) + "\n")
        warm = {}
        with server(latency_ms=10.0, per_text_ms=0.05, slots=8) as srv:
            for label, cache in (
                ("SQLiteCache", embedkit.SQLiteCache(Path(tmp) / "cache.db")),
                ("RedisCache", embedkit.RedisCache(redis_server.url)),
            ):
                for phase in ("cold", "warm"):
                    sent, took = _file_run(srv.root, corpus, Path(tmp) / "out.npy", cache, srv)
                    if phase == "warm":
                        warm[label] = sent
                    opts.log(f"    embed_file {label} {phase}: {sent} requests, {took:.2f} s")
                    scenario.rows.append(
                        {
                            "client": f"embed_file, {label}, {phase}",
                            "requests": sent,
                            "seconds": took,
                        }
                    )
        maker = KeyMaker({"model": "bench"})
        keys = maker.keys([f"lookup {i}" for i in range(1024)])
        for label, cache in (
            ("SQLiteCache", embedkit.SQLiteCache(Path(tmp) / "lookup.db")),
            ("RedisCache", embedkit.RedisCache(redis_server.url, prefix="lookup:")),
        ):
            us = _lookup_us(cache, keys)
            opts.log(f"    {label} lookup: {us:.2f} µs/text")
            scenario.rows.append({"client": f"{label} get_many of 1,024 hits", "µs/text": us})
    shared = rows["redis"]
    scenario.checks += [
        at_least(
            "shared: RedisQuota, achieved share of R", shared["share"], TARGET_RATE_SHARE, "%"
        ),
        at_most(
            "shared: RedisQuota, requests answered 429", shared["share_429"], TARGET_429_SHARE, "%"
        ),
        at_most("shared: warm SQLiteCache rerun, requests sent", warm["SQLiteCache"], 0, ""),
        at_most("shared: warm RedisCache rerun, requests sent", warm["RedisCache"], 0, ""),
    ]
    scenario.notes.append(
        "The workers' loads are uneven (12, 4, 2 and 1 users): a share fixed per process (R/4) "
        "leaves the quiet workers' share unused while the busy one waits; each told R sends up "
        "to 4R and is answered 429. % of R can pass 100% by the server's initial burst (R/10)."
    )
    return scenario
