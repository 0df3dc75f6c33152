"""Resilience over real sockets: faults, cold starts, rate limits, splitting and bisecting.

The fault server runs on loopback in its own thread (tests/faultserver.py). No test sleeps
for backoff: `RetryPolicy(sleep=...)` is injected, and virtual clocks drive the limiters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio
import httpx
import numpy as np
import orjson
import pytest

import embedkit
from embedkit import Connection, Limits, RateLimitError, RetryPolicy
from embedkit._config import Matrix
from embedkit._core.flow import AdaptiveConcurrency, Cooldown, LearnedRate, TokenBucket
from embedkit._core.scheduler import Scheduler

from .fakes import VirtualClock, vector_for, vectors_for
from .faultserver import FaultServer

TOKEN = "hf_resilience_secret_token_123"


class RecordingSleep:
    """An injected sleep that returns at once and remembers what it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await anyio.lowlevel.checkpoint()


async def poll(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for a condition another thread (the server) will make true."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.005)


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["embedkit", "httpx"])
async def test_ten_thousand_texts_through_a_twenty_percent_faulty_server(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="embedkit")
    sleep = RecordingSleep()
    single = [f"single text {i}" for i in range(5000)]
    lists = [[f"list {j} text {i}" for i in range(1000)] for j in range(5)]
    with FaultServer.running(fault_rate=0.2, seed=7, slow_seconds=1.5) as server:
        async with embedkit.AsyncEmbedder(
            connection=Connection(
                timeout=httpx.Timeout(0.5, connect=5.0),
                transport=httpx.AsyncHTTPTransport() if transport == "httpx" else None,
            ),
            url=server.url,
            token=TOKEN,
            retry=RetryPolicy(attempts=30, sleep=sleep),
        ) as emb:
            singles: dict[int, Matrix] = {}
            many: dict[int, Matrix] = {}

            async def one(i: int) -> None:
                singles[i] = await emb.embed(single[i])

            async def batch(j: int) -> None:
                many[j] = await emb.embed_many(lists[j])

            async with anyio.create_task_group() as tg:
                for j in range(5):
                    tg.start_soon(batch, j)
                for i in range(5000):
                    tg.start_soon(one, i)
            stats = emb.stats()
        counters = server.counters

    # every vector is exactly the server's vector for that text: none lost or misplaced
    assert len(singles) == 5000
    for i, vector in singles.items():
        np.testing.assert_array_equal(vector, vector_for(single[i]))
    for j in range(5):
        np.testing.assert_array_equal(many[j], vectors_for(lists[j]))
    # the faults really happened, and each cost exactly one retry
    assert set(counters.faults) == {"loading", "ratelimit", "500", "502", "cut", "slow"}
    assert sum(counters.faults.values()) >= 0.15 * counters.requests
    assert sum(stats.retries.values()) == sum(counters.faults.values())
    assert stats.failed_texts == 0
    # none duplicated: each text answered successfully once (no dedup hits: all unique)
    assert counters.texts_answered == 10_000
    assert TOKEN not in caplog.text


@pytest.mark.asyncio
async def test_cold_start_waits_as_told_then_holds_one_probe_with_wait_for_model(
    http_transport: httpx.AsyncBaseTransport | None,
) -> None:
    sleep = RecordingSleep()
    texts = [f"cold text {i}" for i in range(300)]
    with FaultServer.running(cold=True) as server:
        async with embedkit.AsyncEmbedder(
            connection=Connection(transport=http_transport),
            url=server.url,
            retry=RetryPolicy(sleep=sleep),
        ) as emb:
            results: dict[int, Matrix] = {}

            async def one(i: int) -> None:
                results[i] = await emb.embed(texts[i])

            async with anyio.create_task_group() as tg:
                for i in range(len(texts)):
                    tg.start_soon(one, i)
                await poll(lambda: server.counters.held_for_model >= 1)
                server.finish_loading()
        counters = server.counters
    for i, vector in results.items():
        np.testing.assert_array_equal(vector, vector_for(texts[i]))
    assert len(results) == len(texts)
    # it waited what the server estimated (20 s, with 10% jitter), without really sleeping
    assert any(18.0 <= w <= 22.0 for w in sleep.waits)
    # requests spent while the model loaded: the first wave, then one held probe
    assert 1 <= counters.loading_answers <= embedkit.DEFAULT_MAX_CONCURRENCY
    assert counters.held_for_model == 1
    assert counters.wait_header_seen >= 1


@pytest.mark.asyncio
async def test_wait_for_model_can_be_forced_off(
    http_transport: httpx.AsyncBaseTransport | None,
) -> None:
    sleep = RecordingSleep()
    with FaultServer.running(cold=True) as server:
        async with embedkit.AsyncEmbedder(
            connection=Connection(transport=http_transport, wait_for_model=False),
            url=server.url,
            retry=RetryPolicy(loading_timeout=100, sleep=sleep),
        ) as emb:
            with pytest.raises(embedkit.ModelLoadingError, match="gave up after waiting"):
                await emb.embed("never loads")
        assert server.counters.wait_header_seen == 0
        assert server.counters.loading_answers >= 4


def _tei_like(max_batch: int, bad: str | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        inputs = orjson.loads(request.content)["inputs"]
        if len(inputs) > max_batch:
            return httpx.Response(
                422,
                json={
                    "error": f"batch size {len(inputs)} > maximum allowed batch size {max_batch}",
                    "error_type": "Validation",
                },
            )
        if bad is not None and bad in inputs:
            return httpx.Response(
                422,
                json={
                    "error": "`inputs` must have less than 512 tokens. Given: 900",
                    "error_type": "Validation",
                },
            )
        return httpx.Response(200, json=vectors_for(inputs).tolist())

    return httpx.MockTransport(handler)


@pytest.mark.asyncio
async def test_a_size_refusal_over_http_splits_and_lowers_the_batch_size() -> None:
    texts = [f"t{i}" for i in range(200)]
    async with embedkit.AsyncEmbedder(
        connection=Connection(transport=_tei_like(8)), url="http://tei/embed"
    ) as emb:
        out = await emb.embed_many(texts)
        stats = emb.stats()
    np.testing.assert_array_equal(out, vectors_for(texts))
    assert stats.max_batch_size == 8
    assert stats.failed_texts == 0


@pytest.mark.asyncio
async def test_one_too_long_input_fails_alone_over_http() -> None:
    texts = [f"fine {i}" for i in range(40)]
    async with embedkit.AsyncEmbedder(
        connection=Connection(transport=_tei_like(64, bad="way too long")), url="http://tei/embed"
    ) as emb:
        results: dict[int, object] = {}

        async def one(i: int, text: str) -> None:
            try:
                results[i] = await emb.embed(text)
            except embedkit.InputError as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i, text in enumerate(texts):
                tg.start_soon(one, i, text)
            tg.start_soon(one, 999, "way too long")
    error = results.pop(999)
    assert isinstance(error, embedkit.InputError)
    assert "less than 512 tokens" in str(error)
    for i, vector in results.items():
        np.testing.assert_array_equal(vector, vector_for(texts[i]))


@pytest.mark.asyncio
async def test_a_request_rate_limit_smooths_a_burst_of_ten_thousand_calls() -> None:
    clock = VirtualClock()
    sent_at: list[float] = []

    async def send(texts: list[str]) -> Matrix:
        sent_at.append(clock.now)
        await anyio.lowlevel.checkpoint()
        return vectors_for(texts)

    scheduler = Scheduler(
        send,
        max_batch_size=32,
        concurrency=AdaptiveConcurrency(64),
        request_rate=TokenBucket(20.0, clock=clock, sleep=clock.sleep),
    )
    texts = [f"burst {i}" for i in range(10_000)]
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        results: dict[int, Matrix] = {}

        async def one(i: int) -> None:
            results[i] = await scheduler.submit([texts[i]])

        async with anyio.create_task_group() as callers:
            for i in range(len(texts)):
                callers.start_soon(one, i)
        scheduler.close()
        tg.cancel_scope.cancel()
    # never more than burst + rate * elapsed requests, at any moment
    for k, at in enumerate(sent_at):
        assert k + 1 <= 2 + 20.0 * at + 1e-9
    assert len(sent_at) <= math.ceil(10_000 / 32) + 64
    assert all(np.array_equal(results[i][0], vector_for(texts[i])) for i in range(0, 10_000, 97))


@pytest.mark.asyncio
async def test_an_inputs_per_second_limit_paces_texts_not_requests() -> None:
    clock = VirtualClock()
    sent: list[tuple[float, int]] = []

    async def send(texts: list[str]) -> Matrix:
        sent.append((clock.now, len(texts)))
        await anyio.lowlevel.checkpoint()
        return vectors_for(texts)

    scheduler = Scheduler(
        send,
        max_batch_size=10,
        input_rate=TokenBucket(100.0, burst=10.0, clock=clock, sleep=clock.sleep),
    )
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        await scheduler.submit([f"x{i}" for i in range(500)])
        scheduler.close()
        tg.cancel_scope.cancel()
    total = 0
    for at, n in sent:
        total += n
        assert total <= 10 + 100.0 * at + 1e-9
    assert total == 500
    assert clock.now >= (500 - 10) / 100.0 - 1e-9


@pytest.mark.asyncio
async def test_token_bucket_returns_tokens_when_cancelled() -> None:
    clock = VirtualClock()

    async def never(seconds: float) -> None:
        await anyio.sleep_forever()

    bucket = TokenBucket(1.0, burst=1.0, clock=clock, sleep=never)
    await bucket.acquire()
    with anyio.move_on_after(0.01):
        await bucket.acquire()
    clock.now += 1.0
    # the cancelled reservation was given back: one token is available again
    with anyio.fail_after(1):
        await bucket.acquire()


@pytest.mark.asyncio
async def test_tei_info_limits_are_obeyed() -> None:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(
                200,
                json={"model_id": "m", "max_client_batch_size": 4, "max_concurrent_requests": 8},
            )
        inputs = orjson.loads(request.content)["inputs"]
        seen.append(len(inputs))
        return httpx.Response(200, json=vectors_for(inputs).tolist())

    async with embedkit.AsyncEmbedder(
        connection=Connection(transport=httpx.MockTransport(handler)),
        limits=Limits(max_concurrency=8),
        api="tei",
        url="http://tei",
    ) as emb:
        out = await emb.embed_many([f"t{i}" for i in range(50)])
        stats = emb.stats()
    assert max(seen) <= 4
    assert stats.concurrency_limit <= 2  # 8 inputs in flight / 4 per batch
    assert out.shape == (50, 32)


@pytest.mark.asyncio
async def test_a_client_told_no_quota_learns_the_servers_rate_from_429s() -> None:
    clock = VirtualClock()
    rate = 20.0
    server = {"tokens": 2.0, "last": 0.0}
    log: list[tuple[float, bool]] = []

    async def send(texts: list[str]) -> Matrix:
        await anyio.lowlevel.checkpoint()
        now = clock.now
        server["tokens"] = min(2.0, server["tokens"] + (now - server["last"]) * rate)
        server["last"] = now
        if server["tokens"] < 1.0:
            log.append((now, False))
            wait = (1.0 - server["tokens"]) / rate
            raise RateLimitError(429, "rate limit", retry_after=wait)  # exact, as retry-after-ms
        server["tokens"] -= 1.0
        log.append((now, True))
        return vectors_for(texts)

    scheduler = Scheduler(
        send,
        max_batch_size=1,
        concurrency=AdaptiveConcurrency(8),
        retry=RetryPolicy(attempts=100, timeout=1e9, sleep=clock.sleep),
        cooldown=Cooldown(clock=clock, sleep=clock.sleep),
    )
    texts = [f"q{i}" for i in range(3000)]
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        out = await scheduler.submit(texts)
        learned = scheduler.stats().request_rate
        scheduler.close()
        tg.cancel_scope.cancel()
    np.testing.assert_array_equal(out[::100], vectors_for(texts[::100]))
    settled = [ok for at, ok in log if at >= 20.0]  # after the first 20 s of learning
    ok_times = [at for at, ok in log if ok and at >= 20.0]
    assert len(settled) > 1000
    assert settled.count(False) / len(settled) <= 0.05
    achieved = len(ok_times) / (ok_times[-1] - ok_times[0])
    assert achieved >= 0.95 * rate
    assert learned is not None
    assert 0.8 * rate <= learned <= 1.2 * rate


def test_an_answer_from_before_an_idle_moment_sets_no_pace() -> None:
    clock = VirtualClock()  # moved by hand here
    learned = LearnedRate(clock=clock)
    learned.on_success()  # a warm-up answer
    clock.now = 0.1  # idle, then a burst the server refuses at once
    learned.on_rate_limited(ticket=1, issued=8)
    assert learned.rate is None  # one answer over 0.1 s is no rate: nothing learned yet
    # the burst's admitted answers arrive; the next round trip's 429 has a rate to read
    for i in range(5):
        clock.now = 0.11 + i * 0.004
        learned.on_success()
    clock.now = 0.13
    learned.on_rate_limited(ticket=9, issued=16)
    assert learned.rate == pytest.approx(6 / 0.13 * 0.97, rel=1e-6)


def test_the_429_that_ends_a_slow_start_paces_at_the_last_moments_rate_not_the_ramps() -> None:
    clock = VirtualClock()  # moved by hand here
    learned = LearnedRate(clock=clock)
    for i in range(3):  # a few answers, then a 429: a first, unsure pace
        clock.now = i * 0.1
        learned.on_success()
    learned.on_rate_limited(ticket=1, issued=2)
    assert learned.rate is not None
    assert learned.rate < 15
    # the slow start: answers at 10/s for 1.5 s, then at the server's 50/s for 0.4 s
    for i in range(15):
        clock.now = 0.3 + i * 0.1
        learned.on_success()
    for i in range(20):
        clock.now = 1.8 + i * 0.02
        learned.on_success()
    clock.now = 2.2
    learned.on_rate_limited(ticket=3, issued=4)
    window_average = 35 / 2.0  # what the two seconds add up to: the ramp's average
    assert learned.rate is not None
    assert learned.rate > 2.5 * window_average
    assert learned.rate == pytest.approx(15 / 0.3 * 0.97, rel=0.05)  # the last 0.3 s
    # that estimate rested on enough answers: the pace now grows by 2% a second, no faster
    before = learned.rate
    clock.now = 2.22
    learned.on_success()
    assert learned.rate == pytest.approx(before + 0.02)
