"""The replica balancer without HTTP: choice, circuit breaker, failover, cancellation.

Replicas are fake backends; time is a `VirtualClock` where the breaker needs it.
"""

from __future__ import annotations

import anyio
import numpy as np
import pytest

import embedkit
from embedkit import Endpoint, Limits, ResponseError, TransportError
from embedkit._backends.balancer import BalancedBackend
from embedkit._backends.protocols import BackendInfo
from embedkit._backends.replica import Replica
from embedkit._config import Matrix
from embedkit._core.flow import Sleep
from embedkit._core.stats import ReplicaState
from embedkit._errors import ModelLoadingError, RateLimitError, ServerError

from .fakes import VirtualClock, vectors_for


class FakeReplica:
    """A backend that answers `vectors_for`, or raises `fail`, or waits for `gate`."""

    def __init__(self, name: str, dim: int = 8) -> None:
        self.name = name
        self.dim = dim
        self.fail: Exception | None = None
        self.gate: anyio.Event | None = None
        self.entered = anyio.Event()
        self.calls = 0
        self.probes = 0
        self.probe_ok = True

    async def start(self) -> BackendInfo:
        return BackendInfo(max_batch_size=64)

    async def embed_batch(self, texts: list[str]) -> Matrix:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return vectors_for(texts, self.dim)

    async def probe(self) -> None:
        self.probes += 1
        if not self.probe_ok:
            raise TransportError("still down")

    async def aclose(self) -> None:
        pass

    def describe(self) -> str:
        return f"tei {self.name}"


def balanced(
    *fakes: FakeReplica, clock: VirtualClock | None = None, cap: int = 4
) -> BalancedBackend:
    clock = clock or VirtualClock()
    replicas = [
        Replica(f, name=f.name, probe=f.probe, max_concurrency=cap, clock=clock) for f in fakes
    ]
    return BalancedBackend(replicas, clock=clock, backoff=1.0, max_backoff=8.0)


def test_endpoint_is_a_value_object_whose_repr_hides_the_token() -> None:
    a = Endpoint(
        "http://u:p@gpu-0:8080/?key=s3cret", weight=2, max_concurrency=4, token="x9q-secret"
    )
    assert a == Endpoint(
        "http://u:p@gpu-0:8080/?key=s3cret", weight=2.0, max_concurrency=4, token="x9q-secret"
    )
    assert a != Endpoint("http://gpu-0:8080", weight=2, max_concurrency=4, token="x9q-secret")
    assert repr(a) == "Endpoint('http://gpu-0:8080/', weight=2, max_concurrency=4, token=<set>)"
    assert "x9q" not in repr(a)
    assert "s3cret" not in repr(a)
    assert "p@" not in repr(a)
    with pytest.raises(ValueError, match="weight"):
        Endpoint("http://a", weight=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        Endpoint("http://a", max_concurrency=0)
    with pytest.raises(TypeError):
        Endpoint("http://a", 2.0)  # type: ignore[misc]


def test_choice_unmeasured_first_then_least_expected_work() -> None:
    clock = VirtualClock()
    fast, slow = FakeReplica("fast"), FakeReplica("slow")
    b = balanced(fast, slow, clock=clock)
    r_fast, r_slow = b.replicas
    assert b.pick(32, set()) is r_fast  # never measured: tried first
    r_fast.per_text = 0.001
    r_fast.last_sent = clock()
    assert b.pick(32, set()) is r_slow  # the other has never been measured either
    r_slow.per_text = 0.004  # 4x slower
    r_slow.last_sent = clock()
    # Both idle: the fast one finishes a batch sooner.
    assert b.pick(32, set()) is r_fast
    # The slow one is chosen once the fast one holds 4x its backlog (and more).
    r_fast.in_flight, r_fast.texts_in_flight = 2, 2 * 32
    assert b.pick(32, set()) is r_fast  # (64 + 32) x 1 ms = 96 ms < (0 + 32) x 4 ms
    r_fast.in_flight, r_fast.texts_in_flight = 3, 3 * 32 + 1
    assert b.pick(32, set()) is r_slow  # (97 + 32) x 1 ms > 128 ms
    # A full replica is not chosen; the batch goes to a free one if that is sooner...
    r_fast.in_flight = 4
    assert b.pick(32, set()) is r_slow
    # ...and waits for the full one if even that would finish it sooner.
    r_fast.texts_in_flight = 64
    assert b.pick(32, set()) is None
    r_fast.texts_in_flight = 97
    r_slow.in_flight = 4
    assert b.pick(32, set()) is None


def test_an_idle_replica_is_tried_again_after_explore_after() -> None:
    clock = VirtualClock()
    fast, slow = FakeReplica("fast"), FakeReplica("slow")
    b = balanced(fast, slow, clock=clock)
    r_fast, r_slow = b.replicas
    r_fast.per_text, r_slow.per_text = 0.001, 0.1  # measured slow once
    r_fast.last_sent = r_slow.last_sent = clock()
    assert b.pick(32, set()) is r_fast
    clock.now += b.explore_after
    r_fast.last_sent = clock.now  # the fast one is in use; the slow one idle for a while
    assert b.pick(32, set()) is r_slow  # re-measured: it may have sped up


def test_breaker_ejects_probes_after_a_doubling_backoff_and_readmits() -> None:
    clock = VirtualClock()
    b = balanced(FakeReplica("a"), FakeReplica("b"), clock=clock)
    r = b.replicas[0]
    r.on_failure(TransportError("ConnectError"), r.concurrency.ticket(), b.base_backoff)
    assert r.state is ReplicaState.EJECTED
    assert not r.available(clock())
    assert r.down(clock())
    assert not r.probe_due(clock())
    clock.now += 1.0
    assert r.probe_due(clock())
    r.on_probe(False, b.max_backoff)  # still down: wait twice as long
    assert r.state is ReplicaState.EJECTED
    assert r.until == pytest.approx(clock.now + 2.0)
    clock.now += 2.0
    r.on_probe(False, b.max_backoff)
    assert r.until == pytest.approx(clock.now + 4.0)
    for _ in range(5):
        r.on_probe(False, b.max_backoff)
    assert r.backoff == b.max_backoff  # capped
    r.on_probe(True, b.max_backoff)
    assert r.state is ReplicaState.HEALTHY
    assert r.available(clock())
    assert r.stats().errors == {"TransportError": 1}


def test_429_cools_only_that_replica_until_its_retry_after() -> None:
    clock = VirtualClock()
    b = balanced(FakeReplica("a"), FakeReplica("b"), clock=clock)
    a, other = b.replicas
    a.on_failure(RateLimitError(429, "slow down", retry_after=3.0), a.concurrency.ticket(), 1.0)
    assert a.state is ReplicaState.COOLING
    assert a.concurrency.limit == 2.0
    assert b.pick(8, set()) is other
    clock.now += 3.0
    assert a.available(clock())
    assert a.state is ReplicaState.HEALTHY


def test_503_loading_marks_the_replica_loading_and_probes_it() -> None:
    clock = VirtualClock()
    b = balanced(FakeReplica("a"), FakeReplica("b"), clock=clock)
    a = b.replicas[0]
    a.on_failure(ModelLoadingError(503, "loading", retry_after=20.0), a.concurrency.ticket(), 1.0)
    assert a.state is ReplicaState.LOADING
    assert a.stats().state == "loading"
    clock.now += 5.0  # an estimated_time is capped: probe within 5 s
    assert a.probe_due(clock())


@pytest.mark.asyncio
async def test_a_failed_batch_goes_at_once_to_another_replica() -> None:
    bad, good = FakeReplica("bad"), FakeReplica("good")
    bad.fail = ServerError(502, "bad gateway")
    b = balanced(bad, good)
    texts = [f"t{i}" for i in range(10)]
    matrix = await b.embed_batch(texts)
    np.testing.assert_array_equal(matrix, vectors_for(texts, 8))
    assert (bad.calls, good.calls) == (1, 1)
    stats = b.endpoint_stats()
    assert stats[0].state == "ejected"
    assert stats[0].failovers == 1
    assert stats[0].errors == {"502": 1}
    assert stats[1].texts == 10
    assert stats[0].in_flight == stats[1].in_flight == 0
    await b.embed_batch(texts)
    assert bad.calls == 1  # ejected: no more work until a probe succeeds


@pytest.mark.asyncio
async def test_when_every_replica_fails_the_last_error_reaches_the_caller() -> None:
    a, c = FakeReplica("a"), FakeReplica("c")
    a.fail = TransportError("ConnectError a")
    c.fail = TransportError("ConnectError c")
    b = balanced(a, c)
    with pytest.raises(TransportError, match="ConnectError c"):
        await b.embed_batch(["x"])
    with pytest.raises(TransportError, match="no replica is available"):
        await b.embed_batch(["x"])  # both ejected now: said at once, nothing sent
    assert (a.calls, c.calls) == (1, 1)


@pytest.mark.asyncio
async def test_a_replica_of_another_dimension_is_refused_by_name() -> None:
    b = balanced(FakeReplica("http://first", dim=8), FakeReplica("http://odd", dim=16))
    await b.embed_batch(["a"])  # the first answer sets the dimension (unmeasured: first one)
    with pytest.raises(ResponseError, match=r"http://odd answers 16-dimensional.*http://first"):
        await b.embed_batch(["b"])  # the other replica, never measured, is tried next


@pytest.mark.asyncio
async def test_cancelling_during_a_failover_leaks_no_slot() -> None:
    down, held = FakeReplica("down"), FakeReplica("held")
    down.fail = TransportError("reset")
    held.gate = anyio.Event()
    b = balanced(down, held, cap=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.embed_batch, ["x"])
        await held.entered.wait()  # failed over: now waiting on the second replica
        assert [r.in_flight for r in b.replicas] == [0, 1]
        tg.cancel_scope.cancel()
    assert [(r.in_flight, r.texts_in_flight) for r in b.replicas] == [(0, 0), (0, 0)]
    assert [r.concurrency.in_flight for r in b.replicas] == [0, 0]
    held.gate = None
    matrix = await b.embed_batch(["y"])  # its one slot is free again
    np.testing.assert_array_equal(matrix, vectors_for(["y"], 8))


@pytest.mark.asyncio
async def test_probe_loop_readmits_a_replica_that_comes_back() -> None:
    a, c = FakeReplica("a"), FakeReplica("c")
    b = BalancedBackend(
        [Replica(f, name=f.name, probe=f.probe, max_concurrency=2) for f in (a, c)],
        backoff=0.01,
        max_backoff=0.02,
    )
    a.fail = TransportError("refused")
    a.probe_ok = False
    async with anyio.create_task_group() as tg:
        await tg.start(b.run)
        await b.embed_batch(["x"])
        assert b.replicas[0].state is ReplicaState.EJECTED
        with anyio.fail_after(5):
            while a.probes < 2:  # probed again and again while it stays down
                await anyio.sleep(0.005)
            a.fail = None
            a.probe_ok = True
            while b.replicas[0].state is not ReplicaState.HEALTHY:
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    assert b.endpoint_stats()[0].state == "healthy"


@pytest.mark.asyncio
async def test_embedder_wiring_caps_sum_and_repr_lists_replicas() -> None:
    urls: list[str | Endpoint] = [
        Endpoint("http://127.0.0.1:1", max_concurrency=3, token="sekrit"),
        "http://127.0.0.1:2",
    ]
    emb = embedkit.AsyncEmbedder(
        limits=Limits(max_concurrency=5), api="tei", url=urls, token="other"
    )
    assert emb.max_concurrency == 8
    text = repr(emb)
    assert "http://127.0.0.1:1" in text
    assert "http://127.0.0.1:2" in text
    assert "sekrit" not in text
    assert "other" not in text
    with pytest.raises(ValueError, match="same URL twice"):
        embedkit.AsyncEmbedder(api="tei", url=["http://a", "http://a"])
    with pytest.raises(ValueError, match="empty"):
        embedkit.AsyncEmbedder(api="tei", url=[])


@pytest.mark.asyncio
async def test_each_replicas_tei_limits_are_read_and_obeyed_per_replica() -> None:
    class Limited(FakeReplica):
        def __init__(self, name: str, info: BackendInfo) -> None:
            super().__init__(name)
            self.info = info

        async def start(self) -> BackendInfo:
            return self.info

    small = Limited("small", BackendInfo(model_id="m", max_batch_size=16, max_inputs_in_flight=64))
    big = Limited("big", BackendInfo(model_id="m", max_batch_size=64, max_inputs_in_flight=4096))
    plain = Limited("plain", BackendInfo())
    b = balanced(small, big, plain, cap=8)
    info = await b.start()
    assert info.max_batch_size == 16  # the smallest: every batch must fit every replica
    assert info.model_id == "m"
    total = b.fit_concurrency(info.max_batch_size, 8)
    assert [r.concurrency.maximum for r in b.replicas] == [4, 8, 8]  # 64 inputs / 16 a batch
    assert total == 20  # the scheduler's concurrency: the sum of the replicas' caps


# ------------------------------------------------------------------- learned pace per replica


def pair(
    clock: VirtualClock,
    first: FakeReplica,
    second: FakeReplica,
    *,
    caps: tuple[int, int] = (4, 4),
    first_sleep: Sleep | None = None,
) -> BalancedBackend:
    """Two replicas whose learned paces run on `clock` (the first may wait its own way)."""
    sleeps = (first_sleep or clock.sleep, clock.sleep)
    replicas = [
        Replica(f, name=f.name, probe=f.probe, max_concurrency=cap, clock=clock, sleep=sleep)
        for f, cap, sleep in zip((first, second), caps, sleeps, strict=True)
    ]
    return BalancedBackend(replicas, clock=clock)


async def answer(b: BalancedBackend, replica: Replica, texts: list[str]) -> Matrix:
    """Send one batch to `replica` (as `embed_batch` would, were it chosen)."""
    others = {id(r) for r in b.replicas if r is not replica}
    chosen = await b._acquire(len(texts), others)
    assert chosen is replica
    return await b._send(replica, texts)


async def teach_pace(
    b: BalancedBackend, replica: Replica, clock: VirtualClock, rate: float
) -> None:
    """`replica` answers `rate` requests/s for two seconds, then refuses one with 429."""
    fake = replica.backend
    assert isinstance(fake, FakeReplica)
    assert replica.learned is not None
    assert replica.learned.rate is None  # unpaced before its first 429
    for _ in range(int(2 * rate)):
        clock.now += 1 / rate
        await answer(b, replica, ["x"])
    fake.fail = RateLimitError(429, "slow down", retry_after=0.0)
    with pytest.raises(RateLimitError):
        await answer(b, replica, ["x"])
    fake.fail = None


@pytest.mark.asyncio
async def test_a_429ing_replica_is_paced_and_the_other_keeps_full_speed() -> None:
    clock = VirtualClock()
    b = pair(clock, FakeReplica("limited"), FakeReplica("free"))
    r_limited, r_free = b.replicas
    await teach_pace(b, r_limited, clock, rate=20.0)
    assert clock.sleeps == []
    # The refusing replica is paced just under what it let through; the other is not paced.
    assert r_limited.learned is not None
    assert r_free.learned is not None
    assert r_limited.learned.rate == pytest.approx(20 * 0.97, rel=0.05)
    assert r_free.learned.rate is None
    # The free replica goes on at full speed: 100 requests, no wait at all.
    for _ in range(100):
        await answer(b, r_free, ["x"])
    assert clock.sleeps == []
    # The limited one waits ~1/rate before each request after the first (a burst of one).
    start = clock.now
    for _ in range(21):
        await answer(b, r_limited, ["x"])
    assert len(clock.sleeps) == 20
    assert all(1 / 25 < s < 1 / 15 for s in clock.sleeps), clock.sleeps
    assert 20 / 25 < clock.now - start < 20 / 15
    assert r_free.learned.rate is None  # still unpaced


@pytest.mark.asyncio
async def test_each_replica_keeps_its_own_pace() -> None:
    """A slow replica's pace (8/s) is not the fast one's (50/s): each is learned apart."""
    clock = VirtualClock()
    b = pair(clock, FakeReplica("slow"), FakeReplica("fast"))
    r_slow, r_fast = b.replicas
    await teach_pace(b, r_slow, clock, rate=8.0)
    await teach_pace(b, r_fast, clock, rate=50.0)
    assert r_slow.learned is not None
    assert r_fast.learned is not None
    # just under what got through (n answers over n - 1 intervals: a little over the rate)
    assert r_slow.learned.rate is not None
    assert 0.9 * 8 < r_slow.learned.rate < 8 * 1.1
    assert r_fast.learned.rate is not None
    assert 0.9 * 50 < r_fast.learned.rate < 50 * 1.1
    for replica, rate in ((r_fast, 50.0), (r_slow, 8.0)):
        clock.sleeps.clear()
        for _ in range(11):
            await answer(b, replica, ["x"])
        assert len(clock.sleeps) >= 10
        assert all(0.8 / rate < s < 1.3 / rate for s in clock.sleeps[-10:]), (rate, clock.sleeps)


@pytest.mark.asyncio
async def test_a_request_held_by_one_replicas_pace_does_not_hold_the_others() -> None:
    clock = VirtualClock()
    held = anyio.Event()  # the slow replica's pace never lets its next request go
    waiting = anyio.Event()

    async def slow_pace(seconds: float) -> None:
        waiting.set()
        await held.wait()

    slow, fast = FakeReplica("slow"), FakeReplica("fast")
    b = pair(clock, slow, fast, caps=(1, 8), first_sleep=slow_pace)
    r_slow, r_fast = b.replicas
    await teach_pace(b, r_slow, clock, rate=20.0)
    r_slow.per_text = 1.0  # measured slow: a batch is better sent to the fast replica
    calls = slow.calls, fast.calls
    texts = [f"t{i}" for i in range(50)]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer, b, r_slow, ["first"])  # its one token: sent at once
            tg.start_soon(answer, b, r_slow, ["second"])  # held by its pace
            await waiting.wait()
            rows = [await b.embed_batch([t]) for t in texts]
            assert not held.is_set()
            assert slow.calls == calls[0] + 1  # the second is still waiting on the pace
            tg.cancel_scope.cancel()
    np.testing.assert_array_equal(np.concatenate(rows), vectors_for(texts, 8))
    assert fast.calls == calls[1] + 50
    assert clock.sleeps == []  # the fast replica never waited
    assert r_fast.learned is not None
    assert r_fast.learned.rate is None
    assert [(r.in_flight, r.concurrency.in_flight) for r in b.replicas] == [(0, 0), (0, 0)]
