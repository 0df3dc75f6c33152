"""The scheduler on its own: coalescing, ordering, dedup, splitting, cancellation, retries.

No HTTP here: the scheduler's `send` seam is a plain async function.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import AsyncIterator, Callable

import anyio
import numpy as np
import pytest

from embedkit import (
    BatchTooLargeError,
    ClientClosedError,
    InputError,
    ModelLoadingError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from embedkit._config import Matrix
from embedkit._core.flow import AdaptiveConcurrency, Cooldown
from embedkit._core.scheduler import Scheduler

from .fakes import VirtualClock, vector_for, vectors_for


class Recorder:
    """A `send` that embeds deterministically and records every batch it was given."""

    def __init__(self, *, gate: anyio.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, texts: list[str]) -> Matrix:
        self.batches.append(list(texts))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await anyio.lowlevel.checkpoint()
            return vectors_for(texts)
        finally:
            self.in_flight -= 1

    @property
    def sent(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


@contextlib.asynccontextmanager
async def started(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        try:
            yield scheduler
        finally:
            scheduler.close()
            tg.cancel_scope.cancel()


async def gather(n: int, call: Callable[[int], object]) -> dict[int, object]:
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            results[i] = await call(i)  # type: ignore[misc]
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return results


@pytest.mark.asyncio
async def test_a_thousand_concurrent_calls_coalesce_into_few_full_batches() -> None:
    send = Recorder()
    scheduler = Scheduler(send, max_batch_size=32, concurrency=AdaptiveConcurrency(8))
    async with started(scheduler):
        results = await gather(1000, lambda i: scheduler.submit([f"text {i}"]))
    assert len(send.batches) <= math.ceil(1000 / 32) + 8
    assert max(len(b) for b in send.batches) <= 32
    assert sorted(send.sent) == sorted(f"text {i}" for i in range(1000))  # none lost, none twice
    for i in range(1000):
        result = results[i]
        assert isinstance(result, np.ndarray)
        np.testing.assert_array_equal(result[0], vector_for(f"text {i}"))


@pytest.mark.asyncio
async def test_a_lone_call_on_an_idle_pipe_is_sent_at_once() -> None:
    send = Recorder()
    async with started(Scheduler(send, max_batch_size=32)) as scheduler:
        out = await scheduler.submit(["alone"])
    assert send.batches == [["alone"]]
    assert out.shape == (1, 32)
    assert out.dtype == np.float32


class TaskRecorder(Recorder):
    """A `Recorder` that also notes which task sent each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.senders: list[int] = []

    async def __call__(self, texts: list[str]) -> Matrix:
        self.senders.append(anyio.get_current_task().id)
        return await super().__call__(texts)


@pytest.mark.asyncio
async def test_a_call_that_completes_a_full_batch_sends_it_from_its_own_task() -> None:
    send = TaskRecorder()
    async with started(Scheduler(send, max_batch_size=4)) as scheduler:
        me = anyio.get_current_task().id
        out = await scheduler.submit([f"t{i}" for i in range(4)])
        small = await scheduler.submit(["t9"])  # under a batch: the dispatcher sends it
    assert send.batches == [["t0", "t1", "t2", "t3"], ["t9"]]
    assert send.senders[0] == me
    assert send.senders[1] != me
    np.testing.assert_array_equal(out, vectors_for([f"t{i}" for i in range(4)]))
    np.testing.assert_array_equal(small, vectors_for(["t9"]))


@pytest.mark.asyncio
async def test_a_ticket_with_a_full_batch_queued_sends_it_from_the_awaiting_task() -> None:
    send = TaskRecorder()
    async with started(Scheduler(send, max_batch_size=4)) as scheduler:
        me = anyio.get_current_task().id
        # queued without a checkpoint in between: the dispatcher has not run yet
        first = scheduler.enqueue([f"a{i}" for i in range(4)])
        second = scheduler.enqueue([f"b{i}" for i in range(4)])
        rows = [await first.result(), await second.result()]
    assert send.batches == [[f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]]
    assert send.senders[0] == me  # the first batch left from the awaiting task
    for ticket_rows, prefix in zip(rows, "ab", strict=True):
        np.testing.assert_array_equal(ticket_rows, vectors_for([f"{prefix}{i}" for i in range(4)]))


@pytest.mark.asyncio
async def test_texts_accumulate_while_every_slot_is_busy() -> None:
    gate = anyio.Event()
    send = Recorder(gate=gate)
    scheduler = Scheduler(send, max_batch_size=16, concurrency=AdaptiveConcurrency(1))
    async with started(scheduler), anyio.create_task_group() as tg:
        tg.start_soon(scheduler.submit, ["first"])
        while not send.batches:  # wait until the first batch holds the only slot
            await anyio.lowlevel.checkpoint()
        for i in range(40):
            tg.start_soon(scheduler.submit, [f"queued {i}"])
        await wait_until(lambda: scheduler.stats().queue_depth == 40)
        gate.set()
    assert [len(b) for b in send.batches] == [1, 16, 16, 8]
    assert send.max_in_flight == 1


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():
            await anyio.lowlevel.checkpoint()


@pytest.mark.asyncio
async def test_embed_many_sized_lists_come_back_in_input_order() -> None:
    send = Recorder()
    texts = [f"document number {i}" for i in range(1000)]
    async with started(Scheduler(send, max_batch_size=32)) as scheduler:
        out = await scheduler.submit(texts)
    np.testing.assert_array_equal(out, vectors_for(texts))
    assert out.flags.c_contiguous
    assert [len(b) for b in send.batches[:-1]] == [32] * (len(send.batches) - 1)


@pytest.mark.asyncio
async def test_character_budget_closes_a_batch_early() -> None:
    send = Recorder()
    texts = ["x" * 40 for _ in range(10)]
    texts = [t + str(i) for i, t in enumerate(texts)]
    scheduler = Scheduler(send, max_batch_size=32, max_batch_chars=100)
    async with started(scheduler):
        out = await scheduler.submit(texts)
    assert all(sum(len(t) for t in b) <= 100 for b in send.batches)
    np.testing.assert_array_equal(out, vectors_for(texts))


@pytest.mark.asyncio
async def test_identical_texts_in_flight_are_sent_once() -> None:
    send = Recorder()
    async with started(Scheduler(send)) as scheduler:
        results = await gather(200, lambda i: scheduler.submit([f"same {i % 5}"]))
        stats = scheduler.stats()
    assert sorted(send.sent) == sorted({f"same {i}" for i in range(5)})
    assert stats.dedup_hits == 195
    for i in range(200):
        np.testing.assert_array_equal(results[i][0], vector_for(f"same {i % 5}"))  # type: ignore[index]


@pytest.mark.asyncio
async def test_duplicates_inside_one_list_are_embedded_once() -> None:
    send = Recorder()
    texts = ["a", "b", "a", "c", "b", "a"]
    async with started(Scheduler(send)) as scheduler:
        out = await scheduler.submit(texts)
    assert sorted(send.sent) == ["a", "b", "c"]
    np.testing.assert_array_equal(out, vectors_for(texts))


@pytest.mark.asyncio
async def test_lru_cache_answers_repeated_texts_without_sending() -> None:
    send = Recorder()
    async with started(Scheduler(send, cache_size=2)) as scheduler:
        await scheduler.submit(["a", "b"])
        again = await scheduler.submit(["a", "b"])
        await scheduler.submit(["c"])  # evicts "a", the least recently used
        await scheduler.submit(["a"])
        stats = scheduler.stats()
    assert send.sent == ["a", "b", "c", "a"]
    assert stats.cache_hits == 2
    np.testing.assert_array_equal(again, vectors_for(["a", "b"]))


@pytest.mark.asyncio
async def test_cancelled_callers_leave_the_others_correct_and_leak_no_slot() -> None:
    gate = anyio.Event()
    send = Recorder(gate=gate)
    concurrency = AdaptiveConcurrency(2)
    scheduler = Scheduler(send, max_batch_size=8, concurrency=concurrency)
    results: dict[int, Matrix] = {}
    scopes: dict[int, anyio.CancelScope] = {}

    async def caller(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            results[i] = await scheduler.submit([f"t{i}"])

    async with started(scheduler):
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(caller, i)
            await wait_until(lambda: len(send.batches) == 2 and len(scopes) == 60)
            cancelled = set(range(0, 60, 3))  # some in flight, most still queued
            for i in cancelled:
                scopes[i].cancel()
            gate.set()
        assert concurrency.in_flight == 0
        assert scheduler.stats().in_flight == 0
        # the scheduler still works after the cancellations
        np.testing.assert_array_equal(await scheduler.submit(["after"]), vectors_for(["after"]))
    assert set(results) == set(range(60)) - cancelled
    for i, out in results.items():
        np.testing.assert_array_equal(out[0], vector_for(f"t{i}"))
    in_flight_at_cancel = {t for batch in send.batches[:2] for t in batch}
    never_needed = {f"t{i}" for i in cancelled} - in_flight_at_cancel
    assert never_needed.isdisjoint(send.sent[16:])  # queued texts of cancelled callers not sent


@pytest.mark.asyncio
async def test_an_error_reaches_only_the_callers_of_that_batch() -> None:
    async def send(texts: list[str]) -> Matrix:
        await anyio.lowlevel.checkpoint()
        if "poison" in texts:
            raise ServerError(500, "boom")
        return vectors_for(texts)

    scheduler = Scheduler(send, max_batch_size=4, retry=None)
    async with started(scheduler):
        good = await scheduler.submit(["a", "b"])
        with pytest.raises(ServerError, match="boom"):
            await scheduler.submit(["x", "poison", "y"])
        after = await scheduler.submit(["c"])
        assert scheduler.stats().failed_texts == 3
    np.testing.assert_array_equal(good, vectors_for(["a", "b"]))
    np.testing.assert_array_equal(after, vectors_for(["c"]))


@pytest.mark.asyncio
async def test_one_bad_input_is_bisected_out_and_everyone_else_is_embedded() -> None:
    calls: list[int] = []

    async def send(texts: list[str]) -> Matrix:
        calls.append(len(texts))
        await anyio.lowlevel.checkpoint()
        if any(t.startswith("bad") for t in texts):
            raise InputError(422, "input is too long")
        return vectors_for(texts)

    scheduler = Scheduler(send, max_batch_size=32, retry=None)
    async with started(scheduler):
        results = await gather(32, lambda i: scheduler.submit(["bad 7" if i == 7 else f"good {i}"]))
        stats = scheduler.stats()
    assert isinstance(results[7], InputError)
    for i in range(32):
        if i != 7:
            np.testing.assert_array_equal(results[i][0], vector_for(f"good {i}"))  # type: ignore[index]
    assert stats.bisections >= 1
    assert len(calls) <= 2 * math.ceil(math.log2(32)) + 3


@pytest.mark.asyncio
async def test_a_batch_refused_for_its_size_is_split_and_the_size_lowered() -> None:
    sizes: list[int] = []

    async def send(texts: list[str]) -> Matrix:
        sizes.append(len(texts))
        await anyio.lowlevel.checkpoint()
        if len(texts) > 8:
            raise BatchTooLargeError(
                422, f"batch size {len(texts)} > maximum allowed batch size 8", max_batch_size=8
            )
        return vectors_for(texts)

    texts = [f"t{i}" for i in range(100)]
    scheduler = Scheduler(send, max_batch_size=32, retry=None)
    async with started(scheduler):
        out = await scheduler.submit(texts)
        stats = scheduler.stats()
    np.testing.assert_array_equal(out, vectors_for(texts))
    assert stats.max_batch_size == 8
    assert stats.splits >= 1
    assert sizes.count(32) <= 8  # only batches formed before the first refusal were too big


@pytest.mark.asyncio
async def test_a_text_asked_again_while_its_batch_is_split_joins_the_part_that_sends_it() -> None:
    # [a, b, c, d] is refused for its size and sent as [a, b] then [c, d]. While [a, b] is
    # out, "a" is asked again (its copy is in the part now being sent) and so is "d" (its
    # part is not formed yet): both are answered from those sends, none is sent twice.
    sent: list[list[str]] = []
    first_part_out = anyio.Event()
    release = anyio.Event()

    async def send(texts: list[str]) -> Matrix:
        sent.append(list(texts))
        if len(texts) > 2:
            await anyio.lowlevel.checkpoint()
            raise BatchTooLargeError(422, "batch size 4 > 2", max_batch_size=2)
        if texts == ["a", "b"]:
            first_part_out.set()
            await release.wait()
        else:
            await anyio.lowlevel.checkpoint()
        return vectors_for(texts)

    scheduler = Scheduler(send, max_batch_size=4, retry=None)
    results: dict[str, Matrix] = {}

    async def ask(key: str, texts: list[str]) -> None:
        results[key] = await scheduler.submit(texts)

    async with started(scheduler), anyio.create_task_group() as tg:
        tg.start_soon(ask, "all", ["a", "b", "c", "d"])
        await first_part_out.wait()
        tg.start_soon(ask, "a again", ["a"])
        tg.start_soon(ask, "d again", ["d"])
        await wait_until(lambda: scheduler.stats().dedup_hits == 2)
        release.set()
    assert sent == [["a", "b", "c", "d"], ["a", "b"], ["c", "d"]]
    np.testing.assert_array_equal(results["all"], vectors_for(["a", "b", "c", "d"]))
    np.testing.assert_array_equal(results["a again"], vectors_for(["a"]))
    np.testing.assert_array_equal(results["d again"], vectors_for(["d"]))


@pytest.mark.asyncio
async def test_a_text_in_flight_keeps_no_tracked_object_of_its_own() -> None:
    # A batch is out for a service time, long enough for an object per text to outlive the
    # collector's young passes: its callers and rows are parallel lists, not a pair per text.
    n = 2000
    send = _GatedOn("t")
    scheduler = Scheduler(send, max_batch_size=n, concurrency=AdaptiveConcurrency(1))
    texts = [f"t{i}" for i in range(n)]

    def tracked() -> int:
        gc.collect()
        return len(gc.get_objects())

    async with started(scheduler), anyio.create_task_group() as tg:

        async def ask() -> None:
            await scheduler.submit(texts)

        before = tracked()
        tg.start_soon(ask)
        await wait_until(lambda: len(send.batches) == 1)
        during = tracked()
        send.gate.set()
    assert sum(len(b) for b in send.batches) == n
    assert (during - before) / n < 0.1, (during - before) / n


@pytest.mark.asyncio
async def test_transient_failures_are_retried_with_injected_waits() -> None:
    clock = VirtualClock()
    failures = [ServerError(502, "bad gateway"), TransportError("cut"), None]

    async def send(texts: list[str]) -> Matrix:
        await anyio.lowlevel.checkpoint()
        error = failures.pop(0)
        if error is not None:
            raise error
        return vectors_for(texts)

    retry = RetryPolicy(attempts=5, backoff=1.0, sleep=clock.sleep)
    scheduler = Scheduler(send, retry=retry, cooldown=Cooldown(clock=clock, sleep=clock.sleep))
    async with started(scheduler):
        out = await scheduler.submit(["hello"])
        stats = scheduler.stats()
    np.testing.assert_array_equal(out, vectors_for(["hello"]))
    assert stats.retries == {"502": 1, "TransportError": 1}
    assert stats.requests == 3
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 1.0  # equal jitter around the first backoff
    assert 1.0 <= clock.sleeps[1] <= 2.0


@pytest.mark.asyncio
async def test_retries_stop_after_the_attempt_budget() -> None:
    clock = VirtualClock()
    sent = 0

    async def send(texts: list[str]) -> Matrix:
        nonlocal sent
        sent += 1
        await anyio.lowlevel.checkpoint()
        raise ServerError(500, "still broken")

    scheduler = Scheduler(send, retry=RetryPolicy(attempts=3, sleep=clock.sleep))
    async with started(scheduler):
        with pytest.raises(ServerError, match="still broken"):
            await scheduler.submit(["x"])
    assert sent == 3


@pytest.mark.asyncio
async def test_a_429_pauses_the_whole_client_until_retry_after() -> None:
    clock = VirtualClock()
    sent_at: list[tuple[float, str]] = []
    limited = {"once": True}

    async def send(texts: list[str]) -> Matrix:
        sent_at.append((clock.now, texts[0]))
        await anyio.lowlevel.checkpoint()
        if limited["once"]:
            limited["once"] = False
            raise RateLimitError(429, "slow down", retry_after=7.0)
        return vectors_for(texts)

    cooldown = Cooldown(clock=clock, sleep=clock.sleep)
    scheduler = Scheduler(
        send,
        max_batch_size=1,
        retry=RetryPolicy(sleep=clock.sleep),
        cooldown=cooldown,
        concurrency=AdaptiveConcurrency(1),
    )
    async with started(scheduler):
        first = await scheduler.submit(["first"])
        second = await scheduler.submit(["second"])
    assert sent_at[0] == (0.0, "first")
    assert all(at >= 7.0 for at, _ in sent_at[1:])  # nothing at all before Retry-After
    assert [t for _, t in sent_at] == ["first", "first", "second"]
    assert cooldown.count == 1
    np.testing.assert_array_equal(first, vectors_for(["first"]))
    np.testing.assert_array_equal(second, vectors_for(["second"]))


@pytest.mark.asyncio
async def test_concurrency_halves_on_429_and_recovers_on_success() -> None:
    clock = VirtualClock()
    overloaded = {"on": True}

    async def send(texts: list[str]) -> Matrix:
        await anyio.lowlevel.checkpoint()
        if overloaded["on"]:
            raise RateLimitError(429, "overloaded", retry_after=1.0)
        return vectors_for(texts)

    concurrency = AdaptiveConcurrency(16)
    scheduler = Scheduler(
        send,
        max_batch_size=1,
        concurrency=concurrency,
        retry=RetryPolicy(attempts=50, timeout=1e9, sleep=clock.sleep),
        cooldown=Cooldown(clock=clock, sleep=clock.sleep),
    )
    async with started(scheduler):
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(scheduler.submit, [f"t{i}"])
            await wait_until(lambda: concurrency.decreases >= 3)
            lowest = concurrency.limit
            overloaded["on"] = False
        assert lowest <= 4
        await scheduler.submit([f"more {i}" for i in range(400)])
        assert concurrency.limit == 16


@pytest.mark.asyncio
async def test_a_loading_model_is_waited_for_within_its_own_budget() -> None:
    clock = VirtualClock()

    async def send(texts: list[str]) -> Matrix:
        await anyio.lowlevel.checkpoint()
        if clock.now < 100:
            raise ModelLoadingError(503, "Model x is currently loading", retry_after=20.0)
        return vectors_for(texts)

    retry = RetryPolicy(attempts=3, loading_timeout=600, sleep=clock.sleep)
    scheduler = Scheduler(send, retry=retry, cooldown=Cooldown(clock=clock, sleep=clock.sleep))
    async with started(scheduler):
        out = await scheduler.submit(["cold"])
        stats = scheduler.stats()
    np.testing.assert_array_equal(out, vectors_for(["cold"]))
    assert stats.retries["503"] >= 4  # more than `attempts`: loading has its own budget
    assert stats.requests <= 8


@pytest.mark.asyncio
async def test_giving_up_on_a_loading_model_says_how_long_it_waited() -> None:
    clock = VirtualClock()

    async def send(texts: list[str]) -> Matrix:
        await anyio.lowlevel.checkpoint()
        raise ModelLoadingError(503, "Model x is currently loading", retry_after=20.0)

    retry = RetryPolicy(loading_timeout=60, sleep=clock.sleep)
    scheduler = Scheduler(send, retry=retry, cooldown=Cooldown(clock=clock, sleep=clock.sleep))
    async with started(scheduler):
        with pytest.raises(ModelLoadingError, match=r"gave up after waiting \d+ s"):
            await scheduler.submit(["cold"])


@pytest.mark.asyncio
async def test_cancelling_a_caller_during_backoff_stops_the_retries() -> None:
    in_backoff = anyio.Event()
    release_backoff = anyio.Event()
    sent = 0

    async def blocking_sleep(seconds: float) -> None:
        in_backoff.set()
        await release_backoff.wait()

    async def send(texts: list[str]) -> Matrix:
        nonlocal sent
        sent += 1
        await anyio.lowlevel.checkpoint()
        raise ServerError(503, "unavailable")

    concurrency = AdaptiveConcurrency(4)
    scheduler = Scheduler(send, retry=RetryPolicy(sleep=blocking_sleep), concurrency=concurrency)
    async with started(scheduler):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(scheduler.submit, ["doomed"])
                await in_backoff.wait()
                scope.cancel()
        assert scope.cancelled_caught
        release_backoff.set()
        await wait_until(lambda: scheduler.stats().in_flight == 0)
        assert concurrency.in_flight == 0
        stats = scheduler.stats()
    assert sent == 1  # the batch noticed nobody waits any more and did not try again
    assert stats.abandoned == 1


@pytest.mark.asyncio
async def test_closing_fails_pending_callers_with_client_closed() -> None:
    gate = anyio.Event()
    send = Recorder(gate=gate)
    scheduler = Scheduler(send, max_batch_size=2, concurrency=AdaptiveConcurrency(1))
    outcomes: list[BaseException] = []

    async def caller(text: str) -> None:
        try:
            await scheduler.submit([text])
        except ClientClosedError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as outer, anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        for i in range(5):
            outer.start_soon(caller, f"t{i}")
        await wait_until(lambda: len(send.batches) == 1 and scheduler.stats().queue_depth == 3)
        scheduler.close()
        tg.cancel_scope.cancel()
    assert len(outcomes) == 5
    with pytest.raises(ClientClosedError):
        await scheduler.submit(["late"])


class _GatedOn:
    """A `send` whose batches holding a text starting with `prefix` wait for `gate`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.gate = anyio.Event()
        self.batches: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> Matrix:
        self.batches.append(list(texts))
        if any(t.startswith(self.prefix) for t in texts):
            await self.gate.wait()
        else:
            await anyio.lowlevel.checkpoint()
        return vectors_for(texts)


async def _queue_behind_a_held_slot(
    scheduler: Scheduler, send: _GatedOn, tg: anyio.abc.TaskGroup, texts: list[str], call: object
) -> None:
    """Occupy the only slot with a gated batch, then queue one single-text call per text."""
    tg.start_soon(call, send.prefix)  # type: ignore[arg-type]
    await wait_until(lambda: len(send.batches) == 1)
    for text in texts:
        tg.start_soon(call, text)  # type: ignore[arg-type]
    await wait_until(lambda: scheduler.stats().queue_depth == len(texts))


@pytest.mark.asyncio
async def test_single_text_callers_queued_together_share_one_wake_up_per_batch() -> None:
    send = _GatedOn("hold")
    scheduler = Scheduler(send, max_batch_size=8, concurrency=AdaptiveConcurrency(1))
    results: dict[str, Matrix] = {}

    async def call(text: str) -> None:
        results[text] = await scheduler.submit([text])

    texts = [f"t{i}" for i in range(16)]
    async with started(scheduler), anyio.create_task_group() as tg:
        await _queue_behind_a_held_slot(scheduler, send, tg, texts, call)
        wake_ups = {id(job.done) for job in scheduler._urgent}
        assert len(wake_ups) == 2  # 16 waiting callers, two cohorts of a batch each
        send.gate.set()
    assert [len(b) for b in send.batches] == [1, 8, 8]
    for text in texts:
        np.testing.assert_array_equal(results[text], vectors_for([text]))


@pytest.mark.asyncio
async def test_a_waiting_single_text_caller_costs_about_two_tracked_objects() -> None:
    # The collector's full passes are paced by tracked objects that outlive young passes,
    # and waiting callers are most of them. Net of a task that waits on an event of its
    # own, a caller waiting in the queue keeps its Job and one coroutine (the shared
    # cohort's event is one per batch); a tuple per arrival or a list per text would show.
    n = 1000
    send = _GatedOn("hold")
    scheduler = Scheduler(send, max_batch_size=32, concurrency=AdaptiveConcurrency(1))
    events = [anyio.Event() for _ in range(n)]

    async def own_event(event: anyio.Event) -> None:
        await event.wait()

    async def call(text: str) -> None:
        await scheduler.submit((text,))

    def tracked() -> int:
        gc.collect()  # as a young pass would: untracks the tuples that hold only strings
        return len(gc.get_objects())

    async with started(scheduler), anyio.create_task_group() as tg:
        tg.start_soon(call, "hold")
        await wait_until(lambda: len(send.batches) == 1)
        before = tracked()
        for event in events:
            tg.start_soon(own_event, event)
        await anyio.wait_all_tasks_blocked()
        middle = tracked()
        for i in range(n):
            tg.start_soon(call, f"t{i}")
        await anyio.wait_all_tasks_blocked()
        after = tracked()
        assert scheduler.stats().queue_depth == n
        for event in events:
            event.set()
        send.gate.set()
    assert sum(len(b) for b in send.batches) == n + 1  # all answered
    per_caller = (after - middle) / n - (middle - before) / n
    assert per_caller <= 2.5, per_caller


@pytest.mark.asyncio
async def test_a_cohort_member_wakes_with_its_batch_not_the_cohorts_last() -> None:
    # a 10-character budget closes batches of two 4-character texts: the cohort of four
    # callers spans two batches, and the second batch is held
    send = _GatedOn("hold")
    scheduler = Scheduler(
        send, max_batch_size=8, max_batch_chars=10, concurrency=AdaptiveConcurrency(1)
    )
    woke: list[str] = []

    async def call(text: str) -> None:
        await scheduler.submit([text])
        woke.append(text)

    async with started(scheduler), anyio.create_task_group() as tg:
        await _queue_behind_a_held_slot(scheduler, send, tg, ["aaaa", "bbbb", "cccc"], call)
        assert len({id(job.done) for job in scheduler._urgent}) == 1
        send.prefix = "cc"  # the batch of "cccc" waits for a second gate
        first_gate, send.gate = send.gate, anyio.Event()
        first_gate.set()
        await wait_until(lambda: "bbbb" in woke)
        assert sorted(woke) == ["aaaa", "bbbb", "hold"]  # before their cohort's last member
        assert send.batches[-1] == ["cccc"]
        send.gate.set()
    assert sorted(woke) == ["aaaa", "bbbb", "cccc", "hold"]


@pytest.mark.asyncio
async def test_a_cancelled_cohort_member_never_blocks_the_others() -> None:
    send = _GatedOn("hold")
    scheduler = Scheduler(send, max_batch_size=8, concurrency=AdaptiveConcurrency(1))
    results: dict[str, Matrix] = {}
    scopes: dict[str, anyio.CancelScope] = {}

    async def call(text: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[text] = scope
            results[text] = await scheduler.submit([text])

    texts = [f"t{i}" for i in range(6)]
    async with started(scheduler), anyio.create_task_group() as tg:
        await _queue_behind_a_held_slot(scheduler, send, tg, texts, call)
        for text in ("t0", "t3"):  # the cohort's first member, and one in the middle
            scopes[text].cancel()
        await wait_until(lambda: scheduler.stats().queue_depth == 4)
        send.gate.set()
    assert set(results) == {"hold", "t1", "t2", "t4", "t5"}
    for text in ("t1", "t2", "t4", "t5"):
        np.testing.assert_array_equal(results[text], vectors_for([text]))
    assert "t0" not in send.batches[1]
    assert "t3" not in send.batches[1]
    assert scheduler.concurrency.in_flight == 0
