"""When batches leave: the server model, the open-loop curve, and callers sending full batches.

No HTTP and no real waiting: the server model is fed numbers, the open-loop runs use trio's
virtual clock against a fake server with a cost model (4 slots, 10 ms + 0.2 ms per text).
"""

from __future__ import annotations

import gc
import math
import random

import anyio
import numpy as np
import pytest
import trio
import trio.testing

from embedkit._config import Matrix
from embedkit._core.flow import AdaptiveConcurrency, TokenBucket
from embedkit._core.policy import BatchPolicy
from embedkit._core.scheduler import Scheduler

from .fakes import VirtualClock, vectors_for

FIXED, PER_TEXT, SLOTS = 0.010, 0.0002, 4


def learned(parallel: int = 8) -> BatchPolicy:
    """A model that has seen unqueued answers for 1 and 32 texts from the cost model."""
    model = BatchPolicy(parallel, clock=lambda: 0.0)
    model.observe(1, FIXED + PER_TEXT, 1)
    model.observe(32, FIXED + 32 * PER_TEXT, 1)
    return model


def test_the_model_learns_the_fixed_and_per_text_cost() -> None:
    model = learned()
    assert model.fixed == pytest.approx(FIXED)
    assert model.per_text == pytest.approx(PER_TEXT)


def test_answers_that_queued_in_the_server_lower_its_parallelism() -> None:
    model = learned(parallel=8)
    for _ in range(3):
        model.observe(16, FIXED + 16 * PER_TEXT, 4)  # on time with 4 out: no change
    assert model.parallel == 8
    for _ in range(3):
        model.observe(16, 2 * (FIXED + 16 * PER_TEXT), 5)  # a whole service time late
    assert model.parallel == 4
    assert model.queued_answers == 3


def test_one_late_answer_is_a_stall_not_a_queue() -> None:
    model = learned(parallel=8)
    for out in (2, 3, 4):
        for _ in range(5):
            model.observe(16, FIXED + 16 * PER_TEXT, out)
    model.observe(16, 3 * (FIXED + 16 * PER_TEXT), 3)  # a garbage collection, say
    assert model.parallel == 8
    model.observe(16, 3 * (FIXED + 16 * PER_TEXT), 5)  # a new level's first answer, late
    assert model.parallel == 8


def test_a_busy_event_loop_that_slows_every_answer_is_not_a_queueing_server() -> None:
    model = learned(parallel=8)
    for _ in range(60):
        for out in range(1, 9):  # every level 1.6x slower than the floor, alike
            model.observe(16, 1.6 * (FIXED + 16 * PER_TEXT), out)
    assert model.parallel == 8


def test_parallelism_rises_again_when_the_level_stops_queueing() -> None:
    model = learned(parallel=8)
    for _ in range(3):
        model.observe(16, FIXED + 16 * PER_TEXT, 4)
        model.observe(16, 2 * (FIXED + 16 * PER_TEXT), 5)
    assert model.parallel == 4
    for _ in range(40):  # the server got more slots: 5 out no longer queue
        model.observe(16, FIXED + 16 * PER_TEXT, 5)
    assert model.parallel == 8


def test_a_level_last_heard_from_while_idle_does_not_set_the_reference() -> None:
    model = learned(parallel=8)
    for _ in range(5):  # the warm-up: one request at a time on an idle client
        model.observe(1, FIXED + PER_TEXT, 1)
    rng = random.Random(3)
    for _ in range(400):  # then load: a busy event loop adds ~30% to every answer
        out = rng.randint(2, 6)
        late = 1.3 if out <= 4 else 1.3 + 0.6  # 5 and 6 out also queue in the server
        model.observe(16, late * (FIXED + 16 * PER_TEXT), out)
    assert model.parallel == 4


def test_the_parallelism_estimate_holds_steady_under_noisy_answers() -> None:
    model = learned(parallel=8)
    rng = random.Random(11)
    estimates = []
    for i in range(3000):
        out = rng.randint(1, 8)
        size = rng.choice((1, 4, 16, 32))
        ratio = 1.0 + rng.expovariate(1 / 0.08)  # the event loop's jitter
        if rng.random() < 0.04:
            ratio += rng.uniform(1.0, 3.0)  # a stall: a collection, another process
        if out > SLOTS:
            ratio += rng.uniform(0.3, 1.0)  # waited for one of the server's 4 slots
        model.observe(size, ratio * (FIXED + size * PER_TEXT), out)
        if i >= 200:
            estimates.append(model.parallel)
    assert set(estimates) == {SLOTS}


def test_an_idle_pipe_never_holds_a_text_back() -> None:
    model = learned(parallel=4)
    for t in range(100):
        model.arrived(t * 0.001, 1)  # 1,000 texts/s: a busy arrival rate
    assert model.hold(1, 32, 0, 0.0, 0.1) is None
    assert model.hold(1, 32, 2, 0.0, 0.1) is None  # a slot stays in reserve behind it


def test_a_full_batch_always_leaves() -> None:
    model = learned(parallel=4)
    assert model.hold(32, 32, 7, 0.0, 0.0) is None


def test_with_every_server_slot_busy_a_small_batch_waits_for_an_answer() -> None:
    model = learned(parallel=4)
    assert model.hold(5, 32, 4, 0.0, 0.0) == math.inf


def test_the_last_slot_waits_for_company_at_most_one_fixed_cost() -> None:
    model = learned(parallel=4)
    rate = 6000.0  # texts/s, ~80% of the cost model's capacity at batch 32
    for i in range(300):
        model.arrived(i / rate, 1)
    now = 300 / rate
    delay = model.hold(5, 32, 3, 0.002, now)
    assert delay == pytest.approx(FIXED - 0.002)
    assert model.hold(5, 32, 3, FIXED, now) is None  # waited a whole fixed cost: go
    assert model.hold(31, 32, 3, 0.0, now) is None  # big enough for the arrival rate


def test_enough_is_the_queue_at_which_the_hold_ends() -> None:
    model = learned(parallel=4)
    rate = 6000.0
    for i in range(300):
        model.arrived(i / rate, 1)
    now = 300 / rate
    assert model.enough(32, 4, now) == 32  # every server slot busy: only a full batch
    assert model.enough(32, 1, now) == 1  # slots in reserve: anything
    k = model.enough(32, 3, now)  # the last slot: big enough for the arrival rate
    assert 1 < k < 32
    assert model.hold(k, 32, 3, 0.0, now) is None
    assert model.hold(k - 1, 32, 3, 0.0, now) is not None


def test_at_a_low_arrival_rate_the_last_slot_takes_a_small_batch() -> None:
    model = learned(parallel=4)
    model.arrived(0.0, 1)
    assert model.hold(1, 32, 3, 0.0, 0.001) is None


class _FormWhenASlotFrees(BatchPolicy):
    """The dispatch rule before the server model: any free slot takes what is queued."""

    def hold(self, *args: float) -> float | None:
        return None


def _open_loop(
    model_class: type[BatchPolicy],
    load: float,
    seconds: float,
    *,
    seed: int = 7,
    warm_up: int = 0,
) -> dict[str, float]:
    """Poisson single-text calls against a 4-slot cost-model server, on virtual time
    (after `warm_up` calls one at a time on the idle client, as a benchmark warms up)."""

    async def main() -> dict[str, float]:
        slots = trio.Semaphore(SLOTS)
        sizes: list[int] = []

        async def send(texts: list[str]) -> Matrix:
            sizes.append(len(texts))
            async with slots:
                await trio.sleep(FIXED + PER_TEXT * len(texts))
            return vectors_for(texts)

        model = model_class(8, clock=trio.current_time, sleep=trio.sleep)
        scheduler = Scheduler(send, concurrency=AdaptiveConcurrency(8), policy=model)
        capacity = SLOTS * 32 / (FIXED + 32 * PER_TEXT)
        rng = random.Random(seed)
        latencies: list[float] = []

        async def call(i: int, at: float) -> None:
            out = await scheduler.submit([f"text {i}"])
            np.testing.assert_array_equal(out, vectors_for([f"text {i}"]))
            latencies.append(trio.current_time() - at)

        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            for k in range(warm_up):
                await scheduler.submit([f"warm-up {k}"])
                await trio.sleep(0.05)
            async with trio.open_nursery() as callers:
                start = trio.current_time()
                t, i = 0.0, 0
                while t < seconds:
                    t += rng.expovariate(load * capacity)
                    await trio.sleep_until(start + t)
                    callers.start_soon(call, i, trio.current_time())
                    i += 1
            nursery.cancel_scope.cancel()
        steady = np.array(latencies[len(latencies) // 5 :])
        return {
            "p50": float(np.percentile(steady, 50)),
            "p99": float(np.percentile(steady, 99)),
            "batch": float(np.mean(sizes)),
            "parallel": float(model.parallel),
        }

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_under_moderate_load_small_batches_no_longer_queue_in_the_server() -> None:
    one_text, full = FIXED + PER_TEXT, FIXED + 32 * PER_TEXT
    before = _open_loop(_FormWhenASlotFrees, 0.5, 1.0)
    now = _open_loop(BatchPolicy, 0.5, 1.0)
    # Before: 8 requests out against 4 slots, every text waited a second service time.
    assert before["p50"] > 2 * one_text
    # Now: the model finds the server's 4 slots and keeps one in reserve.
    assert now["parallel"] == SLOTS
    assert now["p99"] < 1.5 * full
    assert now["p50"] < before["p50"] / 1.5


@pytest.mark.parametrize("seed", [7, 107])
def test_after_an_idle_warm_up_the_model_still_finds_the_servers_slots(seed: int) -> None:
    # The warm-up's one-text answers leave a level-1 reference from an idle client and a
    # rough early floor; levels read against that floor are read again as it is learned
    # (seed 7 locks at 2 without that; seed 107 locked at 2 with the moving averages).
    now = _open_loop(BatchPolicy, 0.5, 1.0, seed=seed, warm_up=20)
    assert now["parallel"] == SLOTS
    assert now["p99"] < 1.5 * (FIXED + 32 * PER_TEXT)


def test_at_low_load_a_text_pays_about_one_service_time() -> None:
    now = _open_loop(BatchPolicy, 0.1, 1.0)
    assert now["p50"] < 1.2 * (FIXED + PER_TEXT)


class _Recorder:
    def __init__(self, scheduler_texts: list[int]) -> None:
        self.seen = scheduler_texts
        self.batches: list[list[str]] = []
        self.gate: anyio.Event | None = None
        self.scheduler: Scheduler | None = None

    async def __call__(self, texts: list[str]) -> Matrix:
        assert self.scheduler is not None
        self.batches.append(list(texts))
        self.seen.append(self.scheduler.stats().texts)  # callers that had arrived by now
        if self.gate is not None:
            await self.gate.wait()
        else:
            await anyio.lowlevel.checkpoint()
        return vectors_for(texts)


@pytest.mark.asyncio
async def test_a_burst_has_full_batches_on_the_wire_while_callers_still_arrive() -> None:
    seen: list[int] = []
    send = _Recorder(seen)
    scheduler = Scheduler(send, max_batch_size=32, concurrency=AdaptiveConcurrency(8))
    send.scheduler = scheduler
    results: dict[int, Matrix] = {}

    async def caller(i: int) -> None:
        results[i] = await scheduler.submit([f"t{i}"])

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        async with anyio.create_task_group() as callers:
            for i in range(1000):
                callers.start_soon(caller, i)
        tg.cancel_scope.cancel()
    # The first request left when the 32nd caller queued its text, not after the 1,000th.
    assert seen[0] == 32
    assert send.batches[0] == [f"t{i}" for i in range(32)]
    assert sorted(t for b in send.batches for t in b) == sorted(f"t{i}" for i in range(1000))
    for i in range(1000):
        np.testing.assert_array_equal(results[i], vectors_for([f"t{i}"]))


@pytest.mark.asyncio
async def test_a_cancelled_caller_that_was_sending_hands_the_batch_to_the_others() -> None:
    seen: list[int] = []
    send = _Recorder(seen)
    send.gate = anyio.Event()
    concurrency = AdaptiveConcurrency(8)
    scheduler = Scheduler(send, max_batch_size=4, concurrency=concurrency)
    send.scheduler = scheduler
    results: dict[int, Matrix] = {}

    async def caller(i: int) -> None:
        results[i] = await scheduler.submit([f"t{i}"])

    driver = anyio.CancelScope()
    driver_outcome: list[str] = []

    async def driving_caller() -> None:
        with driver:
            await scheduler.submit(["t3"])  # its text completes the batch: it sends it
            driver_outcome.append("returned")
        driver_outcome.append("cancelled" if driver.cancelled_caught else "not cancelled")

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        async with anyio.create_task_group() as callers:
            for i in range(3):
                callers.start_soon(caller, i)
            callers.start_soon(driving_caller)
            while not send.batches:
                await anyio.lowlevel.checkpoint()
            assert send.batches == [["t0", "t1", "t2", "t3"]]
            driver.cancel()
            while len(send.batches) < 2:  # the dispatcher sends it again for the others
                await anyio.lowlevel.checkpoint()
            send.gate.set()
        tg.cancel_scope.cancel()
    assert driver_outcome == ["cancelled"]
    assert send.batches[1] == ["t0", "t1", "t2", "t3"]
    for i in range(3):
        np.testing.assert_array_equal(results[i], vectors_for([f"t{i}"]))
    assert concurrency.in_flight == 0  # no slot leaked


@pytest.mark.asyncio
async def test_an_answered_slot_sends_the_next_batch_before_its_callers_wake() -> None:
    log: list[tuple[str, str]] = []

    async def send(texts: list[str]) -> Matrix:
        log.append(("send", texts[0]))
        await anyio.lowlevel.checkpoint()
        return vectors_for(texts)

    scheduler = Scheduler(send, max_batch_size=4, concurrency=AdaptiveConcurrency(1))

    async def caller(i: int) -> None:
        out = await scheduler.submit([f"t{i}"])
        np.testing.assert_array_equal(out, vectors_for([f"t{i}"]))
        log.append(("done", f"t{i}"))

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        async with anyio.create_task_group() as callers:
            for i in range(16):
                callers.start_soon(caller, i)
        tg.cancel_scope.cancel()
    sends = [text for kind, text in log if kind == "send"]
    assert sends == ["t0", "t4", "t8", "t12"]  # four full batches, in order
    # Batch k's callers resume only after batch k + 1 is on its way, whether batch k was
    # sent by a caller (the first) or by the slot's own task (the others).
    for k in range(3):
        next_send = log.index(("send", f"t{4 * (k + 1)}"))
        for i in range(4 * k, 4 * k + 4):
            assert log.index(("done", f"t{i}")) > next_send
    assert scheduler.concurrency.in_flight == 0


@pytest.mark.asyncio
async def test_an_answered_slot_is_refilled_only_within_the_request_rate() -> None:
    clock = VirtualClock()
    sent_at: list[tuple[str, float]] = []

    async def send(texts: list[str]) -> Matrix:
        sent_at.append((texts[0], clock()))
        await anyio.lowlevel.checkpoint()
        return vectors_for(texts)

    scheduler = Scheduler(
        send,
        max_batch_size=4,
        concurrency=AdaptiveConcurrency(1),
        request_rate=TokenBucket(1.0, burst=1.0, clock=clock, sleep=clock.sleep),
    )
    results: dict[int, Matrix] = {}

    async def caller(i: int) -> None:
        results[i] = await scheduler.submit([f"t{i}"])

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        async with anyio.create_task_group() as callers:
            for i in range(12):
                callers.start_soon(caller, i)
        tg.cancel_scope.cancel()
    # One request a second, although each answer found a full batch waiting.
    assert sent_at == [("t0", 0.0), ("t4", 1.0), ("t8", 2.0)]
    for i in range(12):
        np.testing.assert_array_equal(results[i], vectors_for([f"t{i}"]))


class _FirstHeld:
    """A send whose first batch (`["t0"]`) waits for `gate`; every other answers at once."""

    def __init__(self) -> None:
        self.gate = anyio.Event()
        self.batches: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> Matrix:
        self.batches.append(list(texts))
        if texts == ["t0"]:
            await self.gate.wait()
        return vectors_for(texts)


class _CountingModel(BatchPolicy):
    """The server model, counting how often the dispatcher asks it whether to hold."""

    asked = 0

    def hold(
        self, queued: int, max_batch: int, in_flight: int, waited: float, now: float
    ) -> float | None:
        self.asked += 1
        return super().hold(queued, max_batch, in_flight, waited, now)


@pytest.mark.asyncio
async def test_arrivals_that_cannot_change_a_hold_do_not_wake_the_dispatcher() -> None:
    model = _CountingModel(8)
    model.parallel = 1  # one request out keeps every sub-full batch waiting for an answer
    send = _FirstHeld()
    scheduler = Scheduler(send, max_batch_size=8, concurrency=AdaptiveConcurrency(8), policy=model)
    results: dict[int, Matrix] = {}

    async def caller(i: int) -> None:
        results[i] = await scheduler.submit([f"t{i}"])

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        async with anyio.create_task_group() as callers:
            for i in range(17):  # one at a time, each given the chance to wake the dispatcher
                callers.start_soon(caller, i)
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()
            send.gate.set()
        tg.cancel_scope.cancel()
    assert [len(b) for b in send.batches] == [1, 8, 8]
    # Asked as each batch started waiting and once its queue was full, not once an arrival:
    # with every server slot busy, only a full batch (or an answer) can change the answer.
    assert model.asked <= 2 * len(send.batches) + 1
    for i in range(17):
        np.testing.assert_array_equal(results[i], vectors_for([f"t{i}"]))


@pytest.mark.asyncio
async def test_holding_for_company_leaves_no_cyclic_garbage() -> None:
    """Each hold used to start an alarm task and cancel it when an arrival or an answer
    ended the hold: a cancelled task, its exception and traceback, left for the cycle
    collector, whose full passes then stalled a busy client for tens of milliseconds."""
    model = BatchPolicy(8)
    model.parallel = 2  # with one request out, a sub-full batch holds for the last slot
    model.fixed = 3600.0  # ... for up to an hour, so only arrivals and answers end holds
    send = _FirstHeld()
    scheduler = Scheduler(send, max_batch_size=8, concurrency=AdaptiveConcurrency(8), policy=model)
    results: dict[int, Matrix] = {}

    async def caller(i: int) -> None:
        results[i] = await scheduler.submit([f"t{i}"])

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        gc.collect()
        gc.disable()
        try:
            async with anyio.create_task_group() as callers:
                for i in range(401):
                    callers.start_soon(caller, i)
                    for _ in range(5):
                        await anyio.lowlevel.checkpoint()
                send.gate.set()
            found = gc.collect()  # what 401 calls and their holds left for the collector
        finally:
            gc.enable()
        tg.cancel_scope.cancel()
    assert sorted(t for b in send.batches for t in b) == sorted(f"t{i}" for i in range(401))
    for i in range(401):
        np.testing.assert_array_equal(results[i], vectors_for([f"t{i}"]))
    assert found < 20  # the old alarm task left ~250 objects here
