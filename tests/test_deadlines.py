"""Deadlines, the retry budget and the interactive lane.

The scheduler tests run under trio with its `MockClock` (autojump): time is virtual for
everything the deadlines use (`anyio.current_time`, cancel scopes, `anyio.sleep`), so a
test of a 100 s wait takes no time and is exact. The end-to-end ones go through
`AsyncEmbedder` (an `httpx.MockTransport`, then a real loopback server).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel
import httpx
import numpy as np
import orjson
import pytest
import trio.testing

import embedkit
from embedkit import (
    Connection,
    DeadlineExceededError,
    Limits,
    ModelLoadingError,
    RateLimitError,
    RetryPolicy,
    TransportError,
)
from embedkit._config import Matrix
from embedkit._core.flow import AdaptiveConcurrency, Cooldown
from embedkit._core.policy import BatchPolicy
from embedkit._core.scheduler import Scheduler

from .fakes import vector_for, vectors_for
from .faultserver import FaultServer

Send = Callable[[list[str]], Awaitable[Matrix]]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


def scheduler(send: Send, *, slots: int = 1, **options: object) -> Scheduler:
    """A scheduler on anyio's clock (virtual under the MockClock)."""
    return Scheduler(
        send,
        concurrency=AdaptiveConcurrency(slots),
        policy=BatchPolicy(slots, clock=anyio.current_time),
        cooldown=Cooldown(clock=anyio.current_time),
        **options,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------- on a virtual clock


@pytest.mark.anyio
async def test_a_call_deadline_ends_the_call_and_leaves_its_batch_mates_right() -> None:
    batches: list[list[str]] = []
    on_the_wire = anyio.Event()

    async def send(texts: list[str]) -> Matrix:
        batches.append(sorted(texts))
        on_the_wire.set()
        await anyio.sleep(10)  # the server takes 10 s
        return vectors_for(texts)

    s = scheduler(send, retry=None)
    results: dict[str, object] = {}

    async def call(text: str, deadline: float | None) -> None:
        try:
            results[text] = await s.submit([text], deadline=deadline)
        except DeadlineExceededError as exc:
            results[text] = (anyio.current_time() - start, exc)

    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        start = anyio.current_time()
        async with anyio.create_task_group() as callers:
            # "x" goes alone; "hasty", "b", "c" then share the next batch
            callers.start_soon(call, "x", None)
            await on_the_wire.wait()
            for text, deadline in (("hasty", 12.0), ("b", None), ("c", None)):
                callers.start_soon(call, text, deadline)
        tg.cancel_scope.cancel()
    assert batches == [["x"], ["b", "c", "hasty"]]
    took, error = results["hasty"]  # type: ignore[misc]
    assert took == pytest.approx(12.0)  # at its deadline, not when its batch came back (20 s)
    assert "deadline of 12 s" in str(error)
    assert isinstance(error, TimeoutError)
    for text in ("x", "b", "c"):
        np.testing.assert_array_equal(results[text], vectors_for([text]))


@pytest.mark.anyio
async def test_max_queue_wait_fails_texts_still_queued_but_not_texts_in_flight() -> None:
    async def send(texts: list[str]) -> Matrix:
        await anyio.sleep(10)
        return vectors_for(texts)

    s = scheduler(send, retry=None, max_queue_wait=5.0, max_batch_size=1)
    outcomes: dict[str, object] = {}

    async def call(text: str) -> None:
        called = anyio.current_time()
        try:
            outcomes[text] = await s.submit([text])
        except DeadlineExceededError as exc:
            outcomes[text] = (anyio.current_time() - called, exc)

    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        async with anyio.create_task_group() as callers:
            callers.start_soon(call, "first")  # sent at once: in flight for 10 s
            await anyio.lowlevel.checkpoint()
            callers.start_soon(call, "second")  # queued behind it
        tg.cancel_scope.cancel()
    np.testing.assert_array_equal(outcomes["first"], vectors_for(["first"]))
    waited, error = outcomes["second"]  # type: ignore[misc]
    assert waited == pytest.approx(5.0)
    assert "max_queue_wait=5 s" in str(error)
    assert s.stats().texts_sent == 1  # the queued text was skipped, never sent


@pytest.mark.anyio
async def test_attempt_timeout_counts_only_the_attempt_and_is_retried() -> None:
    attempts: list[float] = []

    async def send(texts: list[str]) -> Matrix:
        attempts.append(anyio.current_time())
        if len(attempts) == 1:
            await anyio.sleep(3600)  # a hung request
        return vectors_for(texts)

    retry = RetryPolicy(attempt_timeout=2.0, backoff=1.0)
    s = scheduler(send, retry=retry)
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        started = anyio.current_time()
        out = await s.submit(["a"])
        elapsed = anyio.current_time() - started
        tg.cancel_scope.cancel()
    np.testing.assert_array_equal(out, vectors_for(["a"]))
    assert len(attempts) == 2
    assert 2.0 + 0.5 <= elapsed <= 2.0 + 1.0  # the 2 s attempt, then one backoff (0.5-1 s)


@pytest.mark.anyio
async def test_attempt_timeout_on_every_attempt_ends_in_a_transport_error() -> None:
    async def send(texts: list[str]) -> Matrix:
        await anyio.sleep(3600)
        raise AssertionError("unreachable")

    s = scheduler(send, retry=RetryPolicy(attempts=3, attempt_timeout=1.0, backoff=0.1))
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        with pytest.raises(TransportError, match=r"attempt_timeout=1 s"):
            await s.submit(["a"])
        tg.cancel_scope.cancel()
    assert s.stats().requests == 3


def too_many(retry_after: float) -> embedkit.RateLimitError:
    return RateLimitError(429, "slow down", retry_after=retry_after)


@pytest.mark.anyio
async def test_a_retry_after_beyond_the_deadline_raises_at_once_without_sleeping() -> None:
    sent: list[float] = []

    async def send(texts: list[str]) -> Matrix:
        sent.append(anyio.current_time())
        raise too_many(86400)

    s = scheduler(send, retry=RetryPolicy())
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        start = anyio.current_time()
        with pytest.raises(RateLimitError) as caught:
            await s.submit(["a"], deadline=30)
        assert anyio.current_time() == start  # no time passed: nothing slept
        assert caught.value.retry_after == 86400
        # the server's pause still holds for everyone: a call with a short deadline that
        # arrives now fails at once too, with what is left of the pause
        with pytest.raises(RateLimitError) as again:
            await s.submit(["b"], deadline=30)
        assert again.value.retry_after == 86400  # what the server said
        assert anyio.current_time() == start
        tg.cancel_scope.cancel()
    assert len(sent) == 1


@pytest.mark.anyio
async def test_a_pause_fails_the_queued_calls_it_would_outlast() -> None:
    gate = anyio.Event()
    refused: list[str] = []

    async def send(texts: list[str]) -> Matrix:
        await gate.wait()
        if texts == ["first"] and not refused:
            refused.append("first")
            raise too_many(60)
        return vectors_for(texts)

    s = scheduler(send, retry=RetryPolicy(), max_batch_size=1)
    outcomes: dict[str, object] = {}

    async def call(text: str, deadline: float | None) -> None:
        try:
            outcomes[text] = await s.submit([text], deadline=deadline)
        except RateLimitError as exc:
            outcomes[text] = (anyio.current_time(), exc.retry_after)

    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        async with anyio.create_task_group() as callers:
            callers.start_soon(call, "first", None)
            await anyio.sleep(0.1)
            callers.start_soon(call, "short", 10.0)  # queued; the pause outlasts it
            callers.start_soon(call, "long", 600.0)  # queued; it can wait
            await anyio.sleep(1)
            gate.set()
        tg.cancel_scope.cancel()
    assert outcomes["short"] == (pytest.approx(1.1), 60)  # failed when the 429 came back
    np.testing.assert_array_equal(outcomes["long"], vectors_for(["long"]))
    np.testing.assert_array_equal(outcomes["first"], vectors_for(["first"]))


@pytest.mark.anyio
async def test_a_loading_model_beyond_the_deadline_raises_at_once() -> None:
    async def send(texts: list[str]) -> Matrix:
        raise ModelLoadingError(503, "Model m is currently loading", retry_after=20.0)

    s = scheduler(send, retry=RetryPolicy())
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        start = anyio.current_time()
        with pytest.raises(ModelLoadingError) as caught:
            await s.submit(["a"], deadline=5)
        assert anyio.current_time() == start
        assert caught.value.retry_after == 20.0
        tg.cancel_scope.cancel()


# -------------------------------------------------------------------- priority lanes


def one_second_server() -> tuple[list[list[str]], Send]:
    """A send that takes 1 s a batch, and the batches it was given, in order."""
    batches: list[list[str]] = []

    async def send(texts: list[str]) -> Matrix:
        batches.append(list(texts))
        await anyio.sleep(1)
        return vectors_for(texts)

    return batches, send


@pytest.mark.anyio
async def test_an_interactive_call_goes_in_the_next_batch_ahead_of_queued_bulk_work() -> None:
    batches, send = one_second_server()
    s = scheduler(send, retry=None, max_batch_size=4)
    bulk = [f"bulk {i}" for i in range(12)]
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        tickets = [s.enqueue(bulk[i : i + 6]) for i in (0, 6)]
        await anyio.sleep(0.5)  # the first bulk batch is on the wire
        query = await s.submit(["query"])
        rows = [await t.result() for t in tickets]
        tg.cancel_scope.cancel()
    assert batches[0] == bulk[:4]
    assert batches[1] == ["query", *bulk[4:7]]  # first, and the batch is still full
    assert [t for b in batches for t in b if t != "query"] == bulk  # bulk order kept
    np.testing.assert_array_equal(query, vectors_for(["query"]))
    np.testing.assert_array_equal(np.vstack(rows), vectors_for(bulk))


@pytest.mark.anyio
async def test_priority_bulk_queues_behind_earlier_work() -> None:
    batches, send = one_second_server()
    s = scheduler(send, retry=None, max_batch_size=4)
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        ticket = s.enqueue([f"bulk {i}" for i in range(8)])
        await anyio.sleep(0.5)
        await s.submit(["late"], priority="bulk")
        await ticket.result()
        tg.cancel_scope.cancel()
    assert batches[-1] == ["late"]


# ------------------------------------------------------------ through the embedder


def hf_answer(request: httpx.Request) -> httpx.Response:
    texts = orjson.loads(request.content)["inputs"]
    return httpx.Response(200, json=[vector_for(t).tolist() for t in texts])


@pytest.mark.asyncio  # a real clock: under the MockClock a 300 s sleep would take no time
async def test_retry_policy_timeout_and_a_day_long_retry_after_raise_at_once() -> None:
    """The issue's case: RetryPolicy(timeout=5) against 429 Retry-After: 86400."""
    calls: list[int] = []

    def respond(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429, json={"error": "quota"}, headers={"Retry-After": "86400"})

    started = time.monotonic()
    async with embedkit.AsyncEmbedder(
        "m",
        url="http://hf.test/models/m",
        token="hf_secret",
        retry=RetryPolicy(timeout=5),
        connection=Connection(transport=httpx.MockTransport(respond)),
    ) as emb:
        with pytest.raises(RateLimitError) as caught:
            await emb.embed("a")
    assert caught.value.retry_after == 86400
    assert len(calls) == 1
    assert time.monotonic() - started < 1.0


@pytest.mark.asyncio
async def test_bad_deadlines_and_priorities_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="deadline"):
        Limits(deadline=0)
    with pytest.raises(ValueError, match="max_queue_wait"):
        Limits(max_queue_wait=-1)
    with pytest.raises(ValueError, match="attempt_timeout"):
        RetryPolicy(attempt_timeout=math.inf)
    sent: list[int] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(1)
        return hf_answer(request)

    async with embedkit.AsyncEmbedder(
        "m",
        url="http://hf.test/models/m",
        token="t",
        connection=Connection(transport=httpx.MockTransport(respond)),
    ) as emb:
        with pytest.raises(ValueError, match="priority"):
            await emb.embed("a", priority="urgent")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="deadline"):
            await emb.embed_many(["a"], deadline=-3)
    assert sent == []


# ------------------------------------------------------------ on a real loopback server


@pytest.mark.asyncio
async def test_the_three_deadlines_on_a_real_server() -> None:
    with FaultServer.running(fault_rate=1.0, faults=("slow",), slow_seconds=5.0) as server:
        quick = RetryPolicy(attempts=2, backoff=0.05, attempt_timeout=0.3)
        async with embedkit.AsyncEmbedder(
            url=server.url, token="t", retry=quick, limits=Limits(max_concurrency=1)
        ) as emb:
            # attempt: each attempt is cut at 0.3 s, twice, then the transport error
            started = time.monotonic()
            with pytest.raises(TransportError, match="attempt_timeout"):
                await emb.embed("attempt")
            assert 0.6 <= time.monotonic() - started < 2.0

        limits = Limits(max_concurrency=1, max_batch_size=1, max_queue_wait=0.3)
        outcomes: dict[str, tuple[float, BaseException]] = {}
        async with embedkit.AsyncEmbedder(
            url=server.url, token="t", retry=None, limits=limits
        ) as emb:

            async def call(text: str, deadline: float | None) -> None:
                try:
                    await emb.embed(text, deadline=deadline)
                except DeadlineExceededError as exc:
                    outcomes[text] = (time.monotonic() - started, exc)

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "in flight", 0.5)  # call: ends while on the wire
                await anyio.lowlevel.checkpoint()
                tg.start_soon(call, "queued", None)  # queue: never sent, fails at 0.3 s
        queued_at, queued = outcomes["queued"]
        assert 0.3 <= queued_at < 1.5
        assert "max_queue_wait=0.3 s" in str(queued)
        flight_at, flight = outcomes["in flight"]
        assert 0.5 <= flight_at < 1.5
        assert "deadline of 0.5 s" in str(flight)
        assert server.counters.requests == 3  # two attempts, one call in flight
