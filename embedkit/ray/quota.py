"""The fleet's quota: one Ray actor holds the rates, and each worker leases permits from it.

A fleet of embedders, each pacing itself, would send the rate once per worker; a rate (or
a pause after a 429) must hold for the fleet as a whole. So the token buckets, the pause and
the pace learned from 429s live in one named Ray actor (`QuotaActor`), and each worker's
scheduler asks a `FleetQuota` (the scheduler's `Quota` seam) for its permits. A lease is one
actor call for a block of permits, dated by the actor, never one call per request; a worker
reports its successes and 429s with its next lease, so the actor learns the fleet's pace
(`_FleetPace`) from what every worker saw.

Neither class imports Ray: the actor is a plain class (`ray.remote` wraps it where the fleet
is started), and a worker only awaits the object refs its actor handle returns, so both run
in-process in the tests.
"""

from __future__ import annotations

import collections
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["FleetQuota", "QuotaActor"]

#: Seconds of the fleet's request rate one lease covers (a worker's block of permits).
LEASE_SECONDS = 0.1
#: The largest block of permits one lease hands out.
MAX_LEASE = 64
#: While unpaced (no rate given, no 429 yet), how often a worker asks for news.
REFRESH_SECONDS = 0.1
#: After the fleet's learned pace is cut, 429s reported within this long are ignored
#: (they answer requests sent before every worker heard of the cut).
CUT_HOLD_SECONDS = 0.25
#: The fleet's learned pace is cut to just under the answers of this many recent seconds
#: (shorter than one process's 2 s, so a pace that just doubled through a slow start is not
#: underestimated; long enough that a moment when the workers sent less, on a busy
#: machine, is not taken for the server's quota).
LEARN_WINDOW_SECONDS = 1.0
#: With no 429 for this long, the learned pace probes ten times faster (about 20%/s): a
#: pace cut while the fleet was still starting (actors come up one by one) recovers in
#: seconds, not in the minute a steady 2%/s would take.
QUIET_SECONDS = 2.0
#: A worker that has not called the quota actor for this long no longer shares the rate.
ACTIVE_SECONDS = 1.0
#: Once the server has refused for this long, the pace is measured from its first 429.
MIN_REFUSING_SECONDS = 0.2
#: At the first 429s of a run, the rate of this many recent seconds counts too, if higher.
RECENT_SECONDS = 0.3
#: A worker's rate is never measured over less than this (a first report can be short).
MIN_SPAN_SECONDS = 0.05
#: A permit not used within this long after it fell due is dropped, not spent in a burst.
STALE_SECONDS = 1.0


class _Reservations:
    """A reserving token bucket on the actor: permits are handed out with the time each is due."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def take(self, n: int, now: float) -> list[float]:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        dues = []
        for _ in range(n):
            self.tokens -= 1.0
            dues.append(max(0.0, -self.tokens / self.rate))
        return dues

    def take_block(self, n: float, now: float) -> float:
        """Reserve `n` at once (tokens for one request): seconds until they are due."""
        self.take(0, now)
        self.tokens -= n
        return max(0.0, -self.tokens / self.rate)

    def debt(self, seconds: float, now: float) -> None:
        """Nothing is due before `seconds` from now (a pause)."""
        self.take(0, now)
        self.tokens = min(self.tokens, -seconds * self.rate)


class _FleetPace:
    """A pace learned from 429s for a fleet: `LearnedRate`'s rules, fed by workers' reports.

    One process stamps each success as it lands; a worker reports its successes with each
    lease. Three things make the fleet's rate harder to read than one process's, and each
    once put the learned pace 5-30% off the quota:

    * Reports arrive bunched (the actor queues them), so each report is laid end to end
      with the worker's previous one on the actor's clock, not hung back from its arrival.
    * Every worker has answers it has not reported yet, so the window ends where all the
      workers still sending have reported up to.
    * A server's bucket starts full and lets a burst through, so once the server has been
      refusing for a moment, the window starts at its first refusal.
    """

    def __init__(self, *, window: float, backoff: float = 0.97, growth: float = 0.02) -> None:
        self.rate: float | None = None
        self.cuts = 0
        self._window = window
        self._backoff = backoff
        self._growth = growth
        # per worker: (begin, end, successes) of its reports in the last two windows
        self._reports: dict[str, collections.deque[tuple[float, float, int]]] = {}
        self._confident = False
        self._last_cut = -math.inf
        self._last_429 = -math.inf
        self._refusing_since = -math.inf

    def on_report(self, now: float, successes: int, span: float, worker: str = "") -> None:
        """`successes` answers over the last `span` seconds of one worker."""
        horizon = now - 2 * self._window
        for name in list(self._reports):
            kept = self._reports[name]
            while kept and kept[0][1] < horizon:
                kept.popleft()
            if not kept:
                del self._reports[name]  # a worker gone quiet
        if span <= 0 and successes <= 0:
            return
        reports = self._reports.setdefault(worker, collections.deque())
        # A worker's reports tile its time: each begins where its last one ended here. The
        # arrival times carry the actor's queueing (reports can arrive bunched), so a span
        # measured by the worker and hung from the arrival would overlap the last one and
        # count its seconds twice; `span` only places a worker's first report.
        begin = reports[-1][1] if reports else now - max(span, 1e-3)
        # a report of no successes still counts: it says the worker got none in its span
        reports.append((begin, now, successes))
        if successes > 0 and self.rate is not None and now - self._last_429 >= CUT_HOLD_SECONDS:
            # probe for more, not while the server is refusing; fast while unsure
            if not self._confident:
                factor = 50
            elif now - self._last_429 >= QUIET_SECONDS:
                factor = 10  # no 429 for a while: workers may have joined, probe faster
            else:
                factor = 1
            self.rate += successes * self._growth * factor

    def observed(
        self, now: float, refusing_since: float = -math.inf, window: float | None = None
    ) -> tuple[float, int]:
        """Answers per second over the window, and how many answers that rests on.

        With `refusing_since` (when the server began refusing, in this run of 429s) far
        enough back, the window starts there: from then on the server let through its
        quota and no more, while before it a full bucket let a burst through, which would
        put the pace over the quota.

        The window ends where every worker still sending has reported up to: what a worker
        answered since its latest report is not known yet, so a window ending later would
        miss those answers (and cut the pace under the quota), and a rate per worker summed
        would count a worker's time alone, before others joined, as if it still had the
        whole quota to itself.
        """
        ends = [reports[-1][1] for reports in self._reports.values() if reports]
        active = [end for end in ends if end >= now - ACTIVE_SECONDS]
        last = min(active, default=now)
        since = last - (self._window if window is None else window)
        if last - refusing_since >= MIN_REFUSING_SECONDS:
            since = max(since, refusing_since)
        total, samples, start = 0.0, 0, last
        for reports in self._reports.values():
            for begin, end, count in reports:
                if end == begin:  # arrived with no time since the worker's last report
                    if since < end <= last:
                        total += count
                        samples += count
                    continue
                overlap = min(end, last) - max(begin, since)
                if overlap > 0:
                    total += count * overlap / (end - begin)
                    samples += count
                    start = min(start, max(begin, since))
        return total / max(last - start, MIN_SPAN_SECONDS), samples

    def on_rate_limited(self, now: float) -> None:
        """A 429: pace just under what got through (once per `CUT_HOLD_SECONDS`)."""
        if now - self._last_429 > self._window:
            self._refusing_since = now  # the server's bucket ran dry here
        self._last_429 = now
        if now - self._last_cut < CUT_HOLD_SECONDS:
            return  # answers a request sent before every worker heard of the last cut
        observed, samples = self.observed(now, self._refusing_since)
        refusing = now - self._refusing_since >= MIN_REFUSING_SECONDS
        if not refusing:
            # the first 429s of a run of them: the window may hold time in which the fleet
            # sent less than the quota (workers starting, a gap between Ray's batches), and a
            # cut too deep takes seconds to grow back, while one too shallow is corrected by
            # the next 429s (measured from the first refusal): take the recent rate if higher
            recent, _ = self.observed(now, window=RECENT_SECONDS)
            observed = max(observed, recent)
        self._confident = samples >= 16
        current = self.rate if self.rate is not None else math.inf
        if observed > 0:
            new = max(0.1, observed * self._backoff)
            if self.rate is not None and not (refusing and self._confident):
                # at most halve a pace in one cut: a window in which the workers sent
                # little (a busy machine, a gap between Ray batches) understates the quota;
                # not so a window in which the server kept refusing, which is its quota
                new = max(new, self.rate / 2)
        elif self.rate is None:
            return  # refused before anything got through: nothing to learn from yet
        else:
            new = current / 2
        if new < current:
            self.rate = new
            self.cuts += 1
            self._last_cut = now


class TokenMeter:
    """The tokens a run's workers used, summed: what each worker reports to, in Ray.

    The fleet's `QuotaActor` is one (no actor more to start: on 2 cores a second actor
    added ~1 s to a run's start); with a quota of the user's own (a `RedisQuota`), a
    `TokenMeter` actor alone. Tokens as the server reported them (`usage.prompt_tokens`,
    `x-compute-tokens`), else as counted before sending (`tokens_of`); a batch Ray runs
    again counts again (it was sent again).
    """

    def __init__(self) -> None:
        self.tokens_total = 0

    def add_tokens(self, tokens: int) -> int:
        """Add a worker's `tokens`; the total so far."""
        self.tokens_total += tokens
        return self.tokens_total

    def read_tokens(self) -> int:
        """The total so far."""
        return self.tokens_total


class QuotaActor(TokenMeter):
    """The fleet's quota, run as one named Ray actor (its methods run one at a time).

    It holds a request bucket (`requests_per_second`, or a pace learned from the 429s any
    worker reports, as `LearnedRate` does for one process), an input bucket
    (`inputs_per_second`), and the pause after a 429. `sync` is the only call a worker
    makes: it reports what happened since its last call and leases permits in one round
    trip. Times cross the wire as seconds from now, so the workers' clocks never matter.
    """

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        inputs_per_second: float | None = None,
        learn_rate: bool = True,
        tokens_per_minute: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._clock = clock
        now = clock()
        # the fleet's tokens per minute: one reservation per request (`take_tokens`)
        self._tokens: _Reservations | None = None
        if tokens_per_minute is not None:
            per_second = tokens_per_minute / 60.0
            self._tokens = _Reservations(per_second, per_second, now)
        self._requests: _Reservations | None = None
        if requests_per_second is not None:
            self._requests = _Reservations(
                requests_per_second, max(1.0, requests_per_second / 10.0), now
            )
        self._inputs: _Reservations | None = None
        if inputs_per_second is not None:
            self._inputs = _Reservations(inputs_per_second, max(1.0, inputs_per_second / 10.0), now)
        self._learned = (
            _FleetPace(window=LEARN_WINDOW_SECONDS)
            if requests_per_second is None and learn_rate
            else None
        )
        self._until = 0.0
        self._pauses = 0
        self._seen: dict[str, float] = {}  # worker → its latest call
        self.requests = 0
        self.rate_limited = 0

    def sync(
        self,
        requests: int = 0,
        inputs: int = 0,
        successes: int = 0,
        rate_limited: int = 0,
        pause: float = 0.0,
        returned: int = 0,
        span: float = 0.0,
        worker: str = "",
    ) -> tuple[list[float], list[float], float, float | None, int]:
        """Report, then lease: `(request dues, input dues, pause left, rate, pauses)`.

        `successes` were answered over the last `span` seconds of the worker named `worker`
        (an opaque id a worker keeps for its life). `returned` request
        permits were leased but not used (a worker dropped them at a
        pause): they go back to the bucket. Request dues are empty while the fleet is
        unpaced (send freely).
        """
        now = self._clock()
        self._seen[worker] = now
        self.requests += successes + rate_limited
        self.rate_limited += rate_limited
        learned = self._learned
        if learned is not None:
            learned.on_report(now, successes, span, worker)
            if rate_limited:
                learned.on_rate_limited(now)
            rate = learned.rate
            if rate is not None:
                if self._requests is None:
                    self._requests = _Reservations(rate, 1.0, now)
                self._requests.rate = rate
        if returned and self._requests is not None:
            self._requests.tokens += returned
        if pause > 0 and now + pause > self._until:
            self._until = now + pause
            self._pauses += 1
            for bucket in (self._requests, self._inputs):
                if bucket is not None:
                    bucket.debt(pause, now)
        left = max(0.0, self._until - now)
        request_dues: list[float] = []
        if requests and self._requests is not None:
            requests = min(requests, self._share(self._requests.rate, worker, now))
            request_dues = [max(due, left) for due in self._requests.take(requests, now)]
        input_dues: list[float] = []
        if inputs and self._inputs is not None:
            input_dues = [max(due, left) for due in self._inputs.take(inputs, now)]
        rate_now = self._requests.rate if self._requests is not None else None
        return request_dues, input_dues, left, rate_now, self._pauses

    def take_tokens(self, n: int) -> float:
        """Reserve `n` tokens of the fleet's tokens per minute: seconds until they are due
        (the pause in force included). 0 when the fleet has no token rate."""
        now = self._clock()
        left = max(0.0, self._until - now)
        if self._tokens is None:
            return left
        return max(left, self._tokens.take_block(float(n), now))

    def _share(self, rate: float, worker: str, now: float) -> int:
        """A worker's block: `LEASE_SECONDS` of its share of the fleet's rate.

        A block of the fleet's whole rate would last one worker `workers × LEASE_SECONDS`,
        and a cut of the pace would reach it that late (its permits were dated at the old
        pace, and spent as 429s).
        """
        for name in [n for n, t in self._seen.items() if t < now - ACTIVE_SECONDS]:
            del self._seen[name]
        return max(1, math.ceil(rate * LEASE_SECONDS / max(1, len(self._seen))))

    def counters(self) -> dict[str, Any]:
        """What the fleet reported: requests answered, 429s, pauses, the pace in force."""
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "pauses": self._pauses,
            "rate": self._requests.rate if self._requests is not None else None,
            "learned_cuts": self._learned.cuts if self._learned is not None else 0,
        }


class FleetQuota:
    """One worker's side of the fleet quota: a `Quota` whose permits come from a `QuotaActor`.

    Request permits are leased a block at a time (about `LEASE_SECONDS` of the fleet's rate)
    and spent at the times the actor gave them. Successes and 429s are counted here and
    reported with the next lease; a 429 or a pause forces that lease to come soon.
    Must run on asyncio (Ray's event loop): it awaits Ray object refs.
    """

    def __init__(self, actor: Any, *, inputs: bool = False, tokens: bool = False) -> None:
        self._actor = actor
        self._inputs = inputs
        self._tokens = tokens  # whether the fleet has a tokens-per-minute rate
        self._permits: collections.deque[float] = collections.deque()
        self._input_permits: collections.deque[float] = collections.deque()
        self._until = 0.0
        self._paced = False
        self._rate: float | None = None
        self._pauses = 0
        self._synced = -math.inf
        self._successes = 0
        self._reported: float | None = None  # since when the unreported successes count
        self._id = uuid.uuid4().hex[:12]  # this worker, in the fleet's per-worker rates
        self._lock = anyio.Lock()

    def _report(self) -> tuple[int, float]:
        """The successes not reported yet, and the seconds they happened in."""
        now = time.monotonic()
        successes, self._successes = self._successes, 0
        span = now - self._reported if self._reported is not None else 0.0
        self._reported = now
        return successes, span

    async def _sync(self, requests: int = 0, inputs: int = 0) -> None:
        successes, span = self._report()
        try:
            dues, input_dues, left, rate, pauses = await self._actor.sync.remote(
                requests, inputs, successes, 0, 0.0, 0, span, self._id
            )
        except BaseException:
            self._successes += successes  # report them next time
            raise
        now = time.monotonic()
        self._synced = now
        self._permits.extend(now + due for due in dues)
        self._input_permits.extend(now + due for due in input_dues)
        self._until = max(self._until, now + left)
        self._rate = rate
        self._paced = rate is not None
        self._pauses = pauses

    def _block(self) -> int:
        rate = self._rate or 1.0
        return max(1, min(MAX_LEASE, math.ceil(rate * LEASE_SECONDS)))

    def idle(self) -> bool:
        """Never: what this worker knows of the fleet may be stale, so it always asks `pace`."""
        return False

    async def wait(self) -> None:
        """Return once no pause is in force (a pause any worker started)."""
        while True:
            left = self._until - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(left)

    async def pace(self) -> None:
        """Take one request permit; unpaced until the fleet has a rate."""
        now = time.monotonic()
        if self._reported is None:
            self._reported = now  # successes are counted from the first request on
        if not self._paced and not self._permits:
            if now - self._synced >= REFRESH_SECONDS:
                async with self._lock:
                    if time.monotonic() - self._synced >= REFRESH_SECONDS:
                        await self._sync()
            if not self._paced:
                return
        due = await self._take(self._permits, lambda: self._sync(requests=self._block()))
        left = due - time.monotonic()
        if left > 0:
            await anyio.sleep(left)

    async def take_inputs(self, n: int) -> None:
        """Take `n` input permits (when the fleet has an inputs-per-second limit)."""
        if not self._inputs:
            return
        due = 0.0
        for _ in range(n):  # a lease covers two batches of this size
            due = await self._take(self._input_permits, lambda: self._sync(inputs=2 * n))
        left = due - time.monotonic()
        if left > 0:
            await anyio.sleep(left)

    async def take_tokens(self, n: int) -> None:
        """Reserve `n` tokens of the fleet's tokens per minute (one actor call a request)."""
        if not self._tokens or n <= 0:
            return
        due = await self._actor.take_tokens.remote(n)
        if due > 0:
            await anyio.sleep(due)

    def on_answer(self, answer: Any) -> None:
        """Rate-limit headers are not followed fleet-wide: the fleet paces by its own rates
        and by the 429s its workers report."""

    async def _take(self, permits: collections.deque[float], lease: Callable[[], Any]) -> float:
        while True:
            now = time.monotonic()
            while permits and permits[0] < now - STALE_SECONDS:
                permits.popleft()  # due long ago and never used: not a licence to burst
            if permits:
                return permits.popleft()
            async with self._lock:
                if not permits:
                    await lease()

    def on_success(self) -> None:
        """Count a success, for the fleet's learned pace."""
        self._successes += 1

    def on_rate_limited(self, ticket: int, issued: int) -> None:
        """Report a 429 to the fleet now (with the successes since the last lease)."""
        successes, span = self._report()
        # the answer is not needed
        self._actor.sync.remote(0, 0, successes, 1, 0.0, 0, span, self._id)
        self._synced = -math.inf  # hear the new pace at the next permit

    def pause(self, seconds: float) -> None:
        """Pause here at once, and every worker from its next lease."""
        if seconds <= 0:
            return
        self._until = max(self._until, time.monotonic() + seconds)
        # permits leased at the old pace would be 429s: give them back to the fleet
        returned = len(self._permits)
        self._permits.clear()
        self._actor.sync.remote(0, 0, 0, 0, seconds, returned, 0.0, self._id)
        self._synced = -math.inf

    @property
    def rate(self) -> float | None:
        """The fleet's request pace, as of the last lease."""
        return self._rate

    @property
    def pauses(self) -> int:
        """Pauses the fleet started, as of the last lease."""
        return self._pauses
