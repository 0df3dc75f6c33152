"""The library under trio: embedkit uses anyio primitives only, so it runs on either loop.

These run through anyio's pytest plugin with the trio backend (pytest-asyncio drives the
rest of the suite on asyncio).
"""

from __future__ import annotations

import anyio
import httpx
import numpy as np
import orjson
import pytest

import embedkit
from embedkit import Connection, RetryPolicy
from embedkit._config import Matrix
from embedkit._core.flow import AdaptiveConcurrency, Cooldown
from embedkit._core.scheduler import Scheduler

from .fakes import VirtualClock, vector_for, vectors_for
from .faultserver import FaultServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def test_runs_on_trio() -> None:
    import sniffio

    assert sniffio.current_async_library() == "trio"


async def test_coalescing_under_trio() -> None:
    batches: list[int] = []

    async def send(texts: list[str]) -> Matrix:
        batches.append(len(texts))
        await anyio.lowlevel.checkpoint()
        return vectors_for(texts)

    scheduler = Scheduler(send, max_batch_size=32, concurrency=AdaptiveConcurrency(8))
    results: dict[int, Matrix] = {}
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)

        async def one(i: int) -> None:
            results[i] = await scheduler.submit([f"trio {i}"])

        async with anyio.create_task_group() as callers:
            for i in range(500):
                callers.start_soon(one, i)
        scheduler.close()
        tg.cancel_scope.cancel()
    assert len(batches) <= 500 // 32 + 1 + 8
    for i in range(500):
        np.testing.assert_array_equal(results[i][0], vector_for(f"trio {i}"))


async def test_cooldown_and_retries_under_trio() -> None:
    clock = VirtualClock()
    answers = [embedkit.RateLimitError(429, "slow down", retry_after=3.0), None]
    sent_at: list[float] = []

    async def send(texts: list[str]) -> Matrix:
        sent_at.append(clock.now)
        await anyio.lowlevel.checkpoint()
        error = answers.pop(0)
        if error is not None:
            raise error
        return vectors_for(texts)

    scheduler = Scheduler(
        send,
        retry=RetryPolicy(sleep=clock.sleep),
        cooldown=Cooldown(clock=clock, sleep=clock.sleep),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        out = await scheduler.submit(["x"])
        scheduler.close()
        tg.cancel_scope.cancel()
    assert sent_at == [0.0, 3.0]
    np.testing.assert_array_equal(out, vectors_for(["x"]))


async def test_real_sockets_and_faults_under_trio(
    http_transport: httpx.AsyncBaseTransport | None,
) -> None:
    async def no_wait(seconds: float) -> None:
        await anyio.lowlevel.checkpoint()

    texts = [f"trio socket {i}" for i in range(600)]
    with FaultServer.running(
        fault_rate=0.15, faults=("500", "502", "cut", "ratelimit"), seed=3
    ) as server:
        async with embedkit.AsyncEmbedder(
            connection=Connection(transport=http_transport),
            url=server.url,
            retry=RetryPolicy(attempts=20, sleep=no_wait),
        ) as emb:
            many = await emb.embed_many(texts[:300])
            single: dict[int, Matrix] = {}

            async def one(i: int) -> None:
                single[i] = await emb.embed(texts[i])

            async with anyio.create_task_group() as tg:
                for i in range(300, 600):
                    tg.start_soon(one, i)
        assert sum(server.counters.faults.values()) > 0
    np.testing.assert_array_equal(many, vectors_for(texts[:300]))
    for i, vector in single.items():
        np.testing.assert_array_equal(vector, vector_for(texts[i]))
    assert len(single) == 300


async def test_mock_transport_client_under_trio() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        inputs = orjson.loads(request.content)["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors_for(inputs))
        ]
        return httpx.Response(200, json={"object": "list", "data": data})

    async with embedkit.AsyncEmbedder(
        "m",
        connection=Connection(encoding_format="float", transport=httpx.MockTransport(handler)),
        api="openai",
        url="http://oai/v1",
        token="sk-x",
    ) as emb:
        out = await emb.embed_many(["a", "b", "c"])
    np.testing.assert_array_equal(out, vectors_for(["a", "b", "c"]))


async def test_replicas_and_failover_under_trio() -> None:
    seen: list[str] = []

    def replica(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(404)
        seen.append(request.url.host)
        if request.url.host == "down.test":
            return httpx.Response(502, text="bad gateway")
        texts = orjson.loads(request.content)["inputs"]
        return httpx.Response(200, json=vectors_for(texts).tolist())

    texts = [f"trio replica {i}" for i in range(300)]
    async with embedkit.AsyncEmbedder(
        connection=Connection(transport=httpx.MockTransport(replica)),
        api="tei",
        url=["http://down.test", "http://up.test"],
        retry=RetryPolicy(attempts=1),
    ) as emb:
        matrix = await emb.embed_many(texts)
        down, up = emb.stats().endpoints
    np.testing.assert_array_equal(matrix, vectors_for(texts))
    assert down.state == "ejected"
    assert down.failovers >= 1
    assert up.texts == len(texts)


async def test_callers_sharing_a_wake_up_and_one_cancelled_under_trio() -> None:
    gate = anyio.Event()
    sent: list[list[str]] = []

    async def send(texts: list[str]) -> Matrix:
        sent.append(texts)
        await gate.wait()
        return vectors_for(texts)

    scheduler = Scheduler(send, max_batch_size=8, concurrency=AdaptiveConcurrency(1))
    results: dict[int, Matrix] = {}
    scopes: dict[int, anyio.CancelScope] = {}

    async def one(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            results[i] = await scheduler.submit([f"trio {i}"])

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        async with anyio.create_task_group() as callers:
            callers.start_soon(one, 0)  # holds the only slot
            with anyio.fail_after(5):
                while not sent:
                    await anyio.lowlevel.checkpoint()
                for i in range(1, 17):  # 16 queue behind it, in two cohorts
                    callers.start_soon(one, i)
                while scheduler.stats().queue_depth < 16:
                    await anyio.lowlevel.checkpoint()
            assert len({id(job.done) for job in scheduler._urgent}) == 2
            scopes[5].cancel()
            gate.set()
        scheduler.close()
        tg.cancel_scope.cancel()
    assert set(results) == set(range(17)) - {5}
    for i in results:
        np.testing.assert_array_equal(results[i][0], vector_for(f"trio {i}"))
