"""`embedkit.ray` without a cluster: the fleet quota's arithmetic and a worker's batches.

The quota actor is a plain class; here it is called in-process through a stand-in for Ray's
actor handle, and four schedulers share it the way four Ray actors do.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pytest

from embedkit._auth import Secret
from embedkit.ray import BadRowError, FleetQuota, QuotaActor
from embedkit.ray.dataset import _actor_cpus
from embedkit.ray.quota import _FleetPace
from embedkit.ray.worker import _EmbedBatches

from .fakes import DIM, FakeBackend, vectors_for


class _Ready:
    """An already-resolved awaitable, like an `ObjectRef` whose task has run."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # pragma: no cover - makes this a generator


class _Method:
    def __init__(self, function: Any) -> None:
        self.function = function
        self.calls = 0

    def remote(self, *args: Any) -> _Ready:
        self.calls += 1
        return _Ready(self.function(*args))


class FakeHandle:
    """Stands in for a Ray actor handle: `handle.sync.remote(...)` runs the actor's method."""

    def __init__(self, actor: QuotaActor) -> None:
        self.actor = actor
        self.sync = _Method(actor.sync)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------- the quota actor


def test_leases_hand_out_the_fleet_rate_whoever_asks() -> None:
    clock = FakeClock()
    actor = QuotaActor(requests_per_second=10.0, clock=clock)
    dues: list[float] = []
    for k in range(20):  # five workers lease permits in turn at the same instant
        dues += actor.sync(4, worker=f"w{k % 5}")[0]
    # the burst (1 token at 10/s) is free, then one permit every 0.1 s, never two at once
    assert dues[0] == 0.0
    assert dues == pytest.approx([0.1 * k for k in range(20)])


def test_a_lease_is_a_tenth_of_a_second_of_the_workers_share() -> None:
    clock = FakeClock()
    actor = QuotaActor(requests_per_second=400.0, clock=clock)
    assert len(actor.sync(64, worker="a")[0]) == 40  # alone: 0.1 s of the whole rate
    for name in "bcd":
        actor.sync(0, worker=name)
    # four workers: 0.1 s of a quarter each, so a cut of the pace reaches every worker
    # within about 0.1 s, not within the 0.4 s a block of the whole rate would last one
    assert len(actor.sync(64, worker="a")[0]) == 10
    clock.now += 1.5  # b, c and d went quiet: a has the whole rate again
    assert len(actor.sync(64, worker="a")[0]) == 40


def test_a_pause_holds_every_later_lease_and_is_counted_once() -> None:
    clock = FakeClock()
    actor = QuotaActor(requests_per_second=100.0, clock=clock)
    actor.sync(0, 0, 0, 1, 2.0)  # a worker got 429 with Retry-After: 2
    dues, _, left, _, pauses = actor.sync(3)
    assert left == pytest.approx(2.0)
    assert min(dues) >= 2.0
    assert pauses == 1
    clock.now += 3.0
    dues, _, left, _, _ = actor.sync(1)
    assert left == 0.0
    assert dues[0] < 0.05


def test_permits_given_back_are_leased_again() -> None:
    clock = FakeClock()
    actor = QuotaActor(requests_per_second=10.0, clock=clock)
    first = actor.sync(5)[0]
    actor.sync(0, 0, 0, 0, 0.0, 5)  # a worker dropped them unused (a 429 came)
    assert actor.sync(5)[0] == pytest.approx(first)  # the fleet did not lose them


def test_unpaced_until_a_429_then_every_worker_gets_the_learned_pace() -> None:
    clock = FakeClock()
    actor = QuotaActor(clock=clock)
    assert actor.sync(8)[0] == []  # no rate, no 429 yet: send freely
    for _ in range(20):  # 400 answers/s reported by the fleet over a second
        clock.now += 0.05
        actor.sync(0, 0, 20)
    clock.now += 0.01
    actor.sync(0, 0, 0, 1)  # one worker's 429
    dues, _, _, rate, _ = actor.sync(4)  # another worker's next lease
    assert rate is not None
    assert 300 < rate < 450
    assert dues
    assert dues[-1] > 0
    # 429s answering requests sent before the cut do not cut again
    actor.sync(0, 0, 0, 5)
    assert actor.counters()["learned_cuts"] == 1


def test_an_input_rate_is_for_the_fleet_too() -> None:
    clock = FakeClock()
    actor = QuotaActor(inputs_per_second=100.0, clock=clock)
    first = actor.sync(0, 64)[1]
    second = actor.sync(0, 64)[1]
    assert second[-1] == pytest.approx((128 - 10) / 100.0)  # burst 10, then 100 texts/s
    assert first[-1] < second[0]


async def _for_a_second(
    quotas: list[FleetQuota], one: Callable[[FleetQuota], Awaitable[int]]
) -> tuple[int, float]:
    """Every quota's worker calls `one` in a loop for a second: (what they took, seconds)."""
    taken = 0

    async def forever(quota: FleetQuota) -> None:
        nonlocal taken
        while True:
            got = await one(quota)  # (not `taken += await ...`: that reads `taken` first)
            taken += got

    started = time.monotonic()
    with anyio.move_on_after(1.0):
        async with anyio.create_task_group() as tg:
            for quota in quotas:
                tg.start_soon(forever, quota)
    return taken, time.monotonic() - started


def test_a_tokens_per_minute_is_for_the_fleet_too() -> None:
    clock = FakeClock()
    # 60,000 tokens a minute: 1,000 a second, a second of it in a burst
    actor = QuotaActor(tokens_per_minute=60_000.0, clock=clock)
    assert actor.take_tokens(1_000) == 0.0  # the burst
    assert actor.take_tokens(500) == pytest.approx(0.5)  # whoever asks next waits its share
    assert actor.take_tokens(500) == pytest.approx(1.0)
    clock.now += 1.0
    assert actor.take_tokens(100) == pytest.approx(0.1)
    assert QuotaActor(clock=clock).take_tokens(10**9) == 0.0  # no token rate: never waits


@pytest.mark.asyncio
async def test_four_workers_share_one_token_rate() -> None:
    actor = QuotaActor(tokens_per_minute=600_000.0)  # 10,000 tokens/s for the fleet
    handle = FakeHandle(actor)
    handle.take_tokens = _Method(actor.take_tokens)  # type: ignore[attr-defined]
    quotas = [FleetQuota(handle, tokens=True) for _ in range(4)]

    async def one(quota: FleetQuota) -> int:
        await quota.take_tokens(500)
        return 500

    taken, elapsed = await _for_a_second(quotas, one)
    # one rate for the four (plus the burst of one second), not four times it
    assert taken <= 10_000 * elapsed + 10_000 + 4 * 500
    assert taken >= 10_000 * 0.5
    # a fleet quota without a token rate does not call the actor for tokens
    idle = FleetQuota(handle)
    calls = handle.take_tokens.calls  # type: ignore[attr-defined]
    await idle.take_tokens(500)
    assert handle.take_tokens.calls == calls  # type: ignore[attr-defined]


# ------------------------------------------------------- four schedulers, one quota


@pytest.mark.asyncio
async def test_four_workers_share_one_rate_and_lease_permits_in_blocks() -> None:
    handle = FakeHandle(QuotaActor(requests_per_second=200.0))
    quotas = [FleetQuota(handle) for _ in range(4)]

    async def one(quota: FleetQuota) -> int:
        await quota.wait()
        await quota.pace()
        return 1

    taken, elapsed = await _for_a_second(quotas, one)
    # one rate for the four (plus the bucket's burst of 20), not four times it
    assert taken <= 200 * elapsed + 20 + 1
    assert taken >= 200 * 0.5
    assert handle.sync.calls <= taken / 4  # leases of several permits, not one call each
    assert all(quota.rate == 200.0 for quota in quotas)


@pytest.mark.asyncio
async def test_a_pace_learned_from_one_workers_429_paces_another() -> None:
    actor = QuotaActor()
    handle = FakeHandle(actor)
    first, second = FleetQuota(handle), FleetQuota(handle)
    await second.pace()  # unpaced: returns at once
    assert second.rate is None
    for _ in range(40):
        first.on_success()
    await first.pace()  # reports the successes
    first.on_rate_limited(1, 1)  # the 429 reaches the actor at once
    first.pause(0.01)
    await anyio.sleep(0.11)  # past the unpaced worker's refresh interval (a real clock)
    await second.pace()
    assert second.rate is not None  # learned from the first worker's 429
    assert actor.counters()["learned_cuts"] == 1
    assert actor.counters()["pauses"] == 1


# ----------------------------------------------------------------- a worker's batches


def _worker(on_bad: str, refuse: frozenset[str] = frozenset()) -> _EmbedBatches:
    return _EmbedBatches(
        column="text",
        output_column="embedding",
        flag_column="embedding_ok" if on_bad == "skip" else None,
        on_bad=on_bad,  # type: ignore[arg-type]
        options={"backend": FakeBackend(refuse)},
        token=None,
        quota=None,
        inputs_quota=False,
    )


TABLE = pa.table(
    {
        "id": [10, 11, 12, 13, 14],
        "text": ["alpha", "", None, "delta", "refused one"],
    }
)


@pytest.mark.asyncio
async def test_a_batch_keeps_its_columns_and_gets_fixed_size_float32_vectors() -> None:
    worker = _worker("fail")
    table = pa.table({"id": [1, 2, 3], "text": ["a", "b", "a"], "lang": ["en", "fr", "en"]})
    out = await worker(table)
    assert out.column_names == ["id", "text", "lang", "embedding"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    matrix = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(matrix, vectors_for(["a", "b", "a"]))


@pytest.mark.asyncio
async def test_on_bad_fail_names_the_row() -> None:
    worker = _worker("fail")
    with pytest.raises(BadRowError, match=r"id=11.*empty string") as info:
        await worker(TABLE)
    assert isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))  # Ray ships it to the driver pickled
    assert again.row == {"id": "11"}
    assert "empty" in again.reason


@pytest.mark.asyncio
async def test_on_bad_fail_names_a_row_the_server_refuses() -> None:
    worker = _worker("fail", frozenset({"refused one"}))
    table = TABLE.filter(pa.array([True, False, False, True, True]))
    with pytest.raises(BadRowError, match=r"id=14.*refused by the server"):
        await worker(table)


@pytest.mark.asyncio
async def test_on_bad_skip_gives_null_vectors_and_a_flag() -> None:
    worker = _worker("skip", frozenset({"refused one"}))
    out = await worker(TABLE)
    assert out.column("embedding_ok").to_pylist() == [True, False, False, True, False]
    vectors = out.column("embedding").to_pylist()
    assert [v is None for v in vectors] == [False, True, True, False, True]
    np.testing.assert_array_equal(
        np.asarray(vectors[3], dtype=np.float32), vectors_for(["delta"])[0]
    )
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), DIM)


def test_a_pickled_secret_does_not_hold_the_token() -> None:
    token = "hf_" + "PickledTokenValue" * 2
    data = pickle.dumps(Secret(token))
    assert token.encode() not in data
    assert pickle.loads(data).reveal() == token
    assert math.isfinite(len(data))


def test_http_workers_ask_for_a_fraction_of_a_cpu_and_local_ones_for_a_whole_one() -> None:
    assert _actor_cpus("tei", None, None) == 0.25  # never starves Ray's read tasks
    assert _actor_cpus("openai", None, None) == 0.25
    assert _actor_cpus("local", None, None) == 1.0
    assert _actor_cpus("local", None, 1.0) == 0.25  # the GPU does the work
    assert _actor_cpus("tei", 2.0, None) == 2.0


# ------------------------------------------------------------------ the learned pace


def _report_steadily(
    pace: _FleetPace, workers: dict[str, float], start: float, stop: float, every: float
) -> None:
    """Each worker answers `rate` requests/s and reports every `every` seconds, all out of step."""
    names = sorted(workers)
    offsets = {name: k * every / len(names) for k, name in enumerate(names)}
    events = sorted(
        (start + offsets[name] + k * every, name)
        for name in names
        for k in range(1, round((stop - start) / every) + 1)
    )
    for when, name in events:
        pace.on_report(when, round(workers[name] * every), every, name)


def test_the_fleet_rate_counts_no_worker_twice_and_misses_no_unreported_tail() -> None:
    pace = _FleetPace(window=1.0)
    _report_steadily(pace, {"a": 25.0, "b": 25.0, "c": 25.0, "d": 25.0}, 0.0, 3.0, 0.2)
    rate, samples = pace.observed(3.2)
    assert rate == pytest.approx(100.0, rel=0.05)
    assert samples >= 90


def test_reports_that_arrive_bunched_are_not_counted_as_a_faster_rate() -> None:
    pace = _FleetPace(window=1.0)
    # one worker, 100/s, reporting every 0.1 s; the actor was busy and got the last
    # half second of reports all at once (arrival times 2.5 s, 2.5001 s, ...)
    for k in range(1, 21):
        pace.on_report(0.1 * k, 10, 0.1, "a")
    for k in range(5):
        pace.on_report(2.5 + 1e-4 * k, 10, 0.1, "a")
    rate, _ = pace.observed(2.5005)
    assert rate == pytest.approx(100.0, rel=0.1)


def test_a_worker_alone_before_others_joined_is_not_taken_for_the_fleet() -> None:
    pace = _FleetPace(window=1.0)
    # "a" had the server's 100/s to itself, then "b", "c" and "d" joined and all four share it
    _report_steadily(pace, {"a": 100.0}, 0.0, 1.0, 0.2)
    _report_steadily(pace, {"a": 25.0, "b": 25.0, "c": 25.0, "d": 25.0}, 1.0, 2.0, 0.2)
    rate, _ = pace.observed(2.2)
    # a rate per worker, summed, would give a's 40/s (its time alone in the window) + 3 × 25
    assert rate == pytest.approx(100.0, rel=0.1)


def test_the_burst_of_a_full_server_bucket_does_not_set_the_pace() -> None:
    pace = _FleetPace(window=1.0)
    pace.on_report(0.05, 20, 0.05, "a")  # a full bucket let 20 through at once
    pace.on_rate_limited(0.05)  # then the server refused
    assert pace.rate is not None
    assert pace.rate > 150  # a first guess, from the burst
    for k in range(2, 12):  # from the first refusal on, 100/s got through
        pace.on_report(0.05 * k, 5, 0.05, "a")
    pace.on_rate_limited(0.55)
    assert pace.rate == pytest.approx(97.0, rel=0.05)  # just under the quota


def test_the_pace_does_not_grow_while_the_server_refuses() -> None:
    pace = _FleetPace(window=1.0)
    for k in range(1, 11):
        pace.on_report(0.1 * k, 10, 0.1, "a")
    pace.on_rate_limited(1.0)
    cut = pace.rate
    assert cut is not None
    pace.on_rate_limited(1.05)  # still refusing
    pace.on_report(1.1, 10, 0.1, "a")
    assert pace.rate == cut
    pace.on_report(1.5, 40, 0.4, "a")  # quiet again: probe for more
    assert pace.rate > cut


def test_a_first_429_after_a_slow_start_does_not_cut_to_the_slow_rate() -> None:
    pace = _FleetPace(window=1.0)
    for k in range(1, 11):
        pace.on_report(0.1 * k, 10, 0.1, "a")  # 100/s: a first 429 sets a pace
    pace.on_rate_limited(1.0)
    assert pace.rate == pytest.approx(97.0, rel=0.05)
    # Later, in a new run of 429s, the last second holds 0.7 s at 50/s (workers starting)
    # and then 0.3 s at 100/s: the server refused at 100/s, not at the window's 65/s.
    for k in range(1, 8):
        pace.on_report(3.0 + 0.1 * k, 5, 0.1, "a")
    for k in range(8, 11):
        pace.on_report(3.0 + 0.1 * k, 10, 0.1, "a")
    pace.rate = 110.0  # probed above the quota meanwhile
    pace.on_rate_limited(4.0)
    assert pace.rate == pytest.approx(97.0, rel=0.05)
