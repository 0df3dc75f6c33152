"""`RedisQuota`: one budget for separate processes, through a real `redis-server`.

The rate-limited server is `benchmarks._server --rate R` (a token bucket of R requests/s,
429 beyond, `/stats` counts both); the processes are `multiprocessing` spawn children, each
with its own embedder and its own connection to Redis, as uvicorn's or Celery's workers are.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

import embedkit
from devtools.redis import RunningRedis, running_redis

from .fakes import vector_for
from .servers import rate_limited_server

RATE = 40.0
PROCESSES = 4


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RunningRedis]:
    with running_redis(tmp_path) as r:
        yield r


def _web_worker(
    root: str, quota: Any, n: int, tag: str, start: Any, out: Any
) -> None:  # pragma: no cover - runs in a child process
    async def go() -> tuple[float, float]:
        async with embedkit.AsyncEmbedder(
            api="tei",
            url=root,
            quota=quota,
            limits=embedkit.Limits(max_batch_size=1, max_concurrency=8),
        ) as emb:
            await emb.embed("warm-up " + tag)  # connections open before the clock starts
            start.wait(60)
            began = time.time()
            texts = [f"{tag} request {i}" for i in range(n)]
            rows = await asyncio.gather(*(emb.embed(t) for t in texts))
            ended = time.time()
            assert all(row.shape == (8,) for row in rows)
            return began, ended

    out.put(asyncio.run(go()))


def run_processes(root: str, quota: Any, n: int) -> tuple[float, float, dict[str, Any]]:
    """`PROCESSES` children each sending `n` requests at once: (ok req/s, 429 share, stats)."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_web_worker, args=(root, quota, n, f"p{k}", start, out))
        for k in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    # every child is up and warm when it waits on `start`; reset the server's counters then
    time.sleep(0.0)
    deadline = time.monotonic() + 120
    while httpx.get(root + "/stats").json()["ok"] < PROCESSES and time.monotonic() < deadline:
        time.sleep(0.05)  # polling child processes we cannot await
    httpx.post(root + "/reset")
    start.set()
    spans = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    stats = httpx.get(root + "/stats").json()
    seconds = max(e for _, e in spans) - min(b for b, _ in spans)
    return stats["ok"] / seconds, stats["rejected_429"] / max(1, stats["requests"]), stats


@pytest.mark.integration
@pytest.mark.slow
def test_four_processes_share_one_redis_quota(redis_server: RunningRedis) -> None:
    quota = embedkit.RedisQuota(redis_server.url, name="web", requests_per_second=RATE)
    with rate_limited_server(RATE) as root:
        achieved, refused, stats = run_processes(root, quota, int(RATE * 5 / PROCESSES))
    print(f"RedisQuota R={RATE:g}: {achieved:.1f} ok req/s, {100 * refused:.1f}% 429, {stats}")
    assert refused <= 0.05
    assert achieved <= RATE * 1.1
    assert achieved >= RATE * 0.75  # a shared, loaded machine: the pace itself is R


@pytest.mark.asyncio
@pytest.mark.integration
async def test_a_pause_one_process_starts_holds_the_others(redis_server: RunningRedis) -> None:
    a = embedkit.RedisQuota(redis_server.url, name="p", requests_per_second=100.0)
    b = embedkit.RedisQuota(redis_server.url, name="p", requests_per_second=100.0)
    for q in (a, b):
        q.attach()
    try:
        await a.pace()
        a.on_rate_limited(1, 1)
        began = time.monotonic()
        a.pause(1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.wait)  # reports the 429 and the pause to Redis, then sits it out
            while a.pauses == 0:  # until a's report has reached Redis
                await anyio.sleep(0.005)
            await b.wait()
            await b.pace()  # b's first lease hears of the pause
            assert time.monotonic() - began >= 0.9
        assert b.pauses == 1
    finally:
        for q in (a, b):
            await q.detach()


@pytest.mark.asyncio
@pytest.mark.integration
async def test_a_pace_learned_from_429s_is_shared(redis_server: RunningRedis) -> None:
    a = embedkit.RedisQuota(redis_server.url, name="learn")
    b = embedkit.RedisQuota(redis_server.url, name="learn")
    for q in (a, b):
        q.attach()
    try:
        assert a.rate is None
        for _ in range(30):
            a.on_success()
        await a.pace()  # unpaced: reports the successes
        a.on_rate_limited(1, 1)
        await a.wait()
        assert a.rate is not None
        assert a.counters()["learned_cuts"] == 1
        await anyio.sleep(0.15)  # b asks for news every 0.1 s while unpaced
        await b.pace()
        assert b.rate == pytest.approx(a.rate, rel=0.5)
    finally:
        for q in (a, b):
            await q.detach()


@pytest.mark.asyncio
@pytest.mark.integration
async def test_a_redis_that_is_down_does_not_fail_calls(redis_server: RunningRedis) -> None:
    quota = embedkit.RedisQuota(redis_server.url, name="down", requests_per_second=50.0)
    from .hashserver import HashServer

    with HashServer.running(dim=8) as srv:
        async with embedkit.AsyncEmbedder(
            api="tei", url=srv.url, quota=quota, limits=embedkit.Limits(max_batch_size=4)
        ) as emb:
            first = await emb.embed_many([f"a{i}" for i in range(20)])
            redis_server.kill()
            texts = [f"b{i}" for i in range(40)]
            with anyio.fail_after(20):
                rows = await emb.embed_many(texts)
    assert np.array_equal(first[0], vector_for("a0", 8))
    assert np.array_equal(rows, np.stack([vector_for(t, 8) for t in texts]))
    assert quota.counters()["errors"] >= 1


def test_a_redis_quota_pickles_without_its_connections() -> None:
    quota = embedkit.RedisQuota(
        "redis://:pw@h:1/0", name="x", requests_per_second=5, tokens_per_minute=1000
    )
    again = pickle.loads(pickle.dumps(quota))
    assert (again.url, again.name, again.requests_per_second, again.tokens_per_minute) == (
        quota.url,
        "x",
        5,
        1000,
    )
    assert "pw" not in repr(quota)
    assert isinstance(quota, embedkit._core.Quota)
    with pytest.raises(ValueError, match="requests_per_second"):
        embedkit.RedisQuota(requests_per_second=0)


@pytest.mark.asyncio
@pytest.mark.integration
async def test_a_fleet_pause_is_known_to_call_deadlines(redis_server: RunningRedis) -> None:
    a = embedkit.RedisQuota(redis_server.url, name="d", requests_per_second=100.0)
    a.attach()
    try:
        assert a.paused_for() == 0.0
        a.pause(2.0)
        assert 1.0 < a.paused_for() <= 2.0
    finally:
        await a.detach()
