"""Flow control on anyio: adaptive concurrency (AIMD), token buckets, a shared cooldown,
and a model of the server's costs that decides when a sub-full batch is worth sending.

All of them take an injectable clock (and sleep) so tests can run them on virtual time.

The *quota* (`Quota`) is the seam between the scheduler and whoever decides how fast
requests may go: the scheduler asks it for permits and tells it about 429s and successes,
without knowing whether the bucket lives here (`LocalQuota`, the default) or in a Ray actor
shared by a fleet of workers (`embedkit.ray`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio

__all__ = [
    "AdaptiveConcurrency",
    "Clock",
    "Cooldown",
    "LearnedRate",
    "LocalQuota",
    "Quota",
    "ServerModel",
    "Sleep",
    "TokenBucket",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class AdaptiveConcurrency:
    """A slot counter whose limit falls by half on overload and creeps back on success.

    Additive increase is +1 per `limit` successes (one "window"), so recovery from 8 to 16
    takes about 8 windows of clean answers. A burst of overload signals from attempts that
    were already in flight when the limit was cut counts once, not once each: every attempt
    carries a ticket, and only tickets issued after the last cut can cut again (one cut per
    round trip, as in TCP congestion control).
    """

    def __init__(self, maximum: int, *, minimum: int = 1, adaptive: bool = True) -> None:
        if maximum < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.adaptive = adaptive
        self.limit = float(maximum)
        self.in_flight = 0
        self.decreases = 0
        self.probing = False
        self._before_probe = float(maximum)
        self._issued = 0
        self._mark = 0
        self._changed = anyio.Event()

    async def acquire(self) -> None:
        """Wait for a free slot."""
        while self.in_flight >= int(self.limit):
            await self._changed.wait()
        self.in_flight += 1

    def try_acquire(self) -> bool:
        """Take a free slot without waiting; False when none is free."""
        if self.in_flight >= int(self.limit):
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1
        self._notify()

    def ticket(self) -> int:
        """A number for one attempt: pass it to `on_overload` if that attempt is refused."""
        self._issued += 1
        return self._issued

    @property
    def issued(self) -> int:
        """The last ticket handed out."""
        return self._issued

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def on_success(self) -> None:
        """One request succeeded: grow the limit additively, up to the maximum."""
        if self.probing:
            self.probing = False
            self.limit = max(self.limit, self._before_probe)
            self._notify()
            return
        if self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
            self._notify()

    def on_overload(self, ticket: int) -> None:
        """The server said it is overloaded (429, TEI Overloaded): halve the limit once."""
        if not self.adaptive or ticket <= self._mark:
            return
        self.limit = max(float(self.minimum), self.limit / 2.0)
        self._mark = self._issued
        self.decreases += 1

    def probe(self) -> None:
        """Send one request at a time until one succeeds (e.g. while a model loads)."""
        if not self.probing:
            self.probing = True
            self._before_probe = self.limit
            self.limit = 1.0


class TokenBucket:
    """A reserving token bucket: `acquire(n)` takes n tokens now and sleeps off any debt.

    Reserving (letting the balance go negative) keeps the long-run rate exact even when the
    event loop wakes late, and serves waiters in the order they asked.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("a rate must be a positive number per second")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate / 10.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    async def acquire(self, n: float = 1.0) -> None:
        """Take `n` tokens, waiting until the bucket has paid for them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens >= 0:
            return
        try:
            await self._sleep(-self._tokens / self.rate)
        except BaseException:
            self._tokens += n  # cancelled: give back what we did not use
            raise


class Cooldown:
    """A client-wide pause: after a 429, nobody sends until `until` has passed."""

    def __init__(self, *, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep) -> None:
        self.until = 0.0
        self.count = 0
        self.clock = clock
        self.sleep = sleep

    def extend(self, seconds: float) -> None:
        """Pause everyone for at least `seconds` from now."""
        if seconds <= 0:
            return
        until = self.clock() + seconds
        if until > self.until:
            self.until = until
            self.count += 1

    async def wait(self) -> None:
        """Return once no pause is in force.

        Sleeps once for what is left, and again only if someone extended the pause
        meanwhile, so an injected no-op sleep (tests) never spins.
        """
        while True:
            until = self.until
            left = until - self.clock()
            if left <= 0:
                return
            await self.sleep(left)
            if self.until == until:
                return


class LearnedRate:
    """A request pace learned from 429s, for clients whose quota nobody told them.

    Unpaced until the first 429; then requests are paced (a token bucket, no burst) at a
    little under the success rate observed over the last two seconds, the rate the server
    really admits. Each success raises the pace by 0.02 request/s, i.e. about 2% a second
    whatever the rate, so the client keeps probing for more; the next 429 sets it back under
    what got through.
    While the estimate rests on few samples (the first 429s), the pace grows fifty times
    faster (about +100% a second, a slow start): an overestimate corrects itself at the next
    429, an underestimate would not.
    As with concurrency, one cut per round trip, and never a cut to a pace above the
    current one.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        window: float = 2.0,
        backoff: float = 0.97,
        growth: float = 0.02,
    ) -> None:
        self.bucket: TokenBucket | None = None
        self.cuts = 0
        self._clock = clock
        self._sleep = sleep
        self._window = window
        self._backoff = backoff
        self._growth = growth
        self._ok: deque[float] = deque(maxlen=65_536)
        self._mark = 0
        self._confident = False  # whether the last cut rested on enough samples

    @property
    def rate(self) -> float | None:
        """The learned pace in requests/s (None while unpaced)."""
        return self.bucket.rate if self.bucket is not None else None

    def on_success(self) -> None:
        """A request was answered: remember when, and probe for a little more."""
        self._ok.append(self._clock())
        if self.bucket is not None:
            # about +100%/s while the pace rests on a handful of samples (a slow start)
            self.bucket.rate += self._growth if self._confident else 50 * self._growth

    def on_rate_limited(self, ticket: int, issued: int) -> None:
        """A request was refused with 429: pace at what the server let through."""
        if ticket <= self._mark:
            return
        self._mark = issued
        now = self._clock()
        since = now - self._window
        recent = sum(1 for t in self._ok if t >= since)
        observed = 0.0
        if recent:
            oldest = next(t for t in self._ok if t >= since)
            observed = recent / max(now - oldest, 0.05)
        self._confident = recent >= 16
        current = self.bucket.rate if self.bucket is not None else math.inf
        if observed > 0:
            new = max(0.1, observed * self._backoff)  # just under what the server let through
        elif self.bucket is None:
            return  # refusals came back before any success: nothing to learn from yet
        else:
            new = current / 2
        if new >= current:
            return  # already slower than that: this 429 was the server's jitter, not our pace
        self.cuts += 1
        if self.bucket is None:
            self.bucket = TokenBucket(new, burst=1.0, clock=self._clock, sleep=self._sleep)
        else:
            self.bucket.rate = new


#: answers a level needs before its median counts (one or two could be a stall)
_LEVEL_SAMPLES = 3


class ServerModel:
    """When is a batch that is not full worth sending? A model learned from the answers.

    Sending the moment a slot frees is right on an idle pipe (no batching delay), and wrong
    under load: each small batch pays the server's fixed cost per request, and once more
    requests are in flight than the server serves at once, they queue *in the server*,
    where every text behind them waits a whole service time more. So the model learns, from
    the latency of each request and how many were in flight when it left:

    * `fixed` and `per_text`: the server's unqueued cost, seconds per request and per text
      (the lower envelope of latency against batch size, over a sliding window);
    * `parallel`: how many requests it serves at once. For each number of requests out when
      a request left (a *level*), the median of its last `samples` slowdowns (latency over
      the unqueued cost of its size): the first level whose median is over 1.15x the least
      median of the *recent* levels is where requests started to queue in the server.
      Comparing levels with each other, not with the floor, keeps a busy event loop (which
      slows every answer alike) from passing for a queueing server; medians keep one stall
      (a garbage collection, another process) from moving a level; and only levels heard
      from within the last `recent` answers set the reference, so a level last seen on an
      idle client (the warm-up) cannot make every level look queued once the loop is busy.
      A level needs 3 answers to count. Until some level shows queueing, `parallel` is the
      concurrency limit; it is never inferred below 2 (one noisy level must not turn the
      client into a one-request-at-a-time Nagle);
    * the arrival rate of texts, over the last `window` seconds.

    A full batch is always sent (it cannot get cheaper). A sub-full batch is sent at once
    while at least one server slot stays free besides the one it would take: the reserve
    keeps the server below saturation, so bursts find a slot. The last free slot takes a
    sub-full batch only if it is big enough for the arrival rate, i.e. batches that size
    keep the server below `utilisation` (`rate * (fixed + per_text * b) / b <= utilisation *
    parallel`), or once its oldest text has waited one `fixed` cost (the ski-rental rule:
    waiting for company never costs more than the request it saves). With every server slot
    busy, a sub-full batch waits for an answer. An idle pipe never waits: a lone text finds
    the whole reserve free.
    """

    def __init__(
        self,
        parallel: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        utilisation: float = 0.85,
        window: float = 0.05,
        samples: int = 16,
        recent: int = 256,
    ) -> None:
        self.parallel = max(1, parallel)
        self.fixed: float | None = None
        self.per_text = 0.0
        self.clock = clock
        self.sleep = sleep
        self.utilisation = utilisation
        self.window = window
        self.queued_answers = 0
        self._maximum = self.parallel
        # requests out when one was sent -> its last answers (texts, seconds), the median of
        # their slowdowns (latency over the unqueued cost of their size, by the current fit;
        # 1.0: no queueing; the event loop's own delays lift all alike), and the answer count
        # when the level was last heard from
        self._levels: dict[int, deque[tuple[int, float]]] = {}
        self._fitted = (0.0, 0.0)  # the fit the medians were computed with
        self._median: dict[int, float] = {}
        self._heard: dict[int, int] = {}
        self._answers = 0
        self._samples = max(1, samples)
        self._recent = recent
        # batch-size bucket (bit length) -> [min s, its size, previous window's min s, its size, n]
        self._floor: dict[int, list[float]] = {}
        self._arrivals: deque[tuple[float, int]] = deque()
        self._arrived = 0

    # ---------------------------------------------------------------- what it learns

    def arrived(self, now: float, n: int) -> None:
        """`n` texts were queued at `now`."""
        self._arrivals.append((now, n))
        self._arrived += n
        if len(self._arrivals) > 64:
            self._forget(now)

    def rate(self, now: float) -> float:
        """Texts queued per second over the last `window` seconds."""
        self._forget(now)
        return self._arrived / self.window

    def _forget(self, now: float) -> None:
        arrivals = self._arrivals
        horizon = now - self.window
        while arrivals and arrivals[0][0] < horizon:
            self._arrived -= arrivals.popleft()[1]

    def observe(self, texts: int, seconds: float, in_flight: int) -> None:
        """A request of `texts` texts, sent with `in_flight` requests out (itself included),
        was answered after `seconds`."""
        bucket = self._floor.setdefault(texts.bit_length(), [math.inf, 0.0, math.inf, 0.0, 0.0])
        if seconds < bucket[0]:
            bucket[0], bucket[1] = seconds, float(texts)
        bucket[4] += 1
        if bucket[4] >= 64:  # a sliding floor: the least of this window and the last
            bucket[2], bucket[3] = bucket[0], bucket[1]
            bucket[0], bucket[1], bucket[4] = math.inf, 0.0, 0.0
        self._fit()
        assert self.fixed is not None
        base = self.fixed + self.per_text * texts
        if base <= 0:
            return
        ratio = seconds / base
        self._answers += 1
        ring = self._levels.get(in_flight)
        if ring is None:
            ring = self._levels[in_flight] = deque(maxlen=self._samples)
        ring.append((texts, seconds))
        self._heard[in_flight] = self._answers
        fit = (self.fixed, self.per_text)
        old_fixed, old_per_text = self._fitted
        if abs(fit[0] - old_fixed) > 0.01 * fit[0] or abs(fit[1] - old_per_text) > 0.01 * fit[1]:
            # The floor moved: re-read every level by it, or slowdowns measured against an
            # early, rough fit would keep a rarely used level looking queued.
            self._fitted = fit
            for level in self._levels:
                self._remedian(level)
        else:
            self._remedian(in_flight)
        self._estimate(ratio)

    def _remedian(self, level: int) -> None:
        ring = self._levels[level]
        if len(ring) < _LEVEL_SAMPLES:
            return
        fixed, per_text = self.fixed or 0.0, self.per_text
        ratios = sorted(s / max(fixed + per_text * n, 1e-9) for n, s in ring)
        self._median[level] = ratios[len(ratios) // 2]

    def _estimate(self, ratio: float) -> None:
        medians = self._median
        if not medians:
            return
        horizon = self._answers - self._recent
        heard = self._heard
        reference = min(
            (m for level, m in medians.items() if heard[level] > horizon), default=math.inf
        )
        if reference == math.inf:  # no level heard from lately: keep what we know
            return
        if ratio > 1.15 * reference:
            self.queued_answers += 1
        parallel = self._maximum
        for level in sorted(medians):
            if medians[level] > 1.15 * reference:
                parallel = max(min(2, self._maximum), level - 1)
                break
        self.parallel = parallel

    def _fit(self) -> None:
        points = []
        for key in sorted(self._floor):
            cur_s, cur_n, old_s, old_n, _ = self._floor[key]
            points.append((cur_s, cur_n) if cur_s <= old_s else (old_s, old_n))
        lo_s, lo_n = points[0]
        hi_s, hi_n = points[-1]
        slope = (hi_s - lo_s) / (hi_n - lo_n) if hi_n > lo_n else 0.0
        self.per_text = max(0.0, slope)
        self.fixed = max(0.0, lo_s - self.per_text * lo_n)

    # -------------------------------------------------------------------- the rule

    def hold(
        self, queued: int, max_batch: int, in_flight: int, waited: float, now: float
    ) -> float | None:
        """None: send a batch now. Else how long to wait at most for more texts (or an
        answer) before asking again; `math.inf` means until an answer comes back.

        `queued` texts are waiting, the oldest for `waited` seconds; `in_flight` requests
        are out.
        """
        if queued >= max_batch or in_flight < self.parallel - 1:
            return None
        if in_flight >= self.parallel:
            return math.inf
        fixed = self.fixed
        if fixed is None or waited >= fixed - 1e-6:  # (a µs early: clocks round)
            return None
        rate = self.rate(now)
        room = self.utilisation * self.parallel - rate * self.per_text
        if room > 0 and queued * room >= rate * fixed:
            return None
        return fixed - waited

    def enough(self, max_batch: int, in_flight: int, now: float) -> int:
        """The fewest queued texts for which `hold` would send at once, with `in_flight`
        requests out at the present arrival rate (the rate grows as texts arrive, so it is
        a lower bound: ask `hold` again when the queue gets there)."""
        if in_flight >= self.parallel:
            return max_batch
        if in_flight < self.parallel - 1 or self.fixed is None:
            return 1
        rate = self.rate(now)
        room = self.utilisation * self.parallel - rate * self.per_text
        if room <= 0:
            return max_batch
        return max(1, min(max_batch, math.ceil(rate * self.fixed / room)))


class Quota(Protocol):
    """Where the scheduler gets permission to send, and where it reports what came back.

    Before a request: `wait()` (a pause after a 429), then `pace()` (one request permit),
    and for a fresh batch `take_inputs(n)`. After it: `on_success()` or, for a 429,
    `on_rate_limited(ticket, issued)` (tickets as in `AdaptiveConcurrency`) and, once the
    retry policy has chosen its delay, `pause(seconds)` for everyone.
    """

    def idle(self) -> bool:
        """True when nothing would pace or pause a request sent now (it may skip `pace`)."""
        ...

    async def wait(self) -> None:
        """Return once no pause is in force."""
        ...

    async def pace(self) -> None:
        """Take one request permit (configured or learned rate), waiting for it."""
        ...

    async def take_inputs(self, n: int) -> None:
        """Take `n` input permits (the inputs-per-second limit), waiting for them."""
        ...

    def on_success(self) -> None:
        """A request was answered."""
        ...

    def on_rate_limited(self, ticket: int, issued: int) -> None:
        """A request was refused with 429."""
        ...

    def pause(self, seconds: float) -> None:
        """Pause every sender for at least `seconds` (after a 429)."""
        ...

    @property
    def rate(self) -> float | None:
        """The request pace in force, requests/s (None while unpaced)."""
        ...

    @property
    def pauses(self) -> int:
        """Pauses started so far."""
        ...


class LocalQuota:
    """The quota of one process: a cooldown, optional token buckets, a pace learned from 429s."""

    def __init__(
        self,
        *,
        cooldown: Cooldown | None = None,
        request_rate: TokenBucket | None = None,
        input_rate: TokenBucket | None = None,
        learn_rate: bool = True,
    ) -> None:
        self.cooldown = cooldown or Cooldown()
        self.request_rate = request_rate
        self.input_rate = input_rate
        self.learned: LearnedRate | None = None
        if request_rate is None and learn_rate:
            self.learned = LearnedRate(clock=self.cooldown.clock, sleep=self.cooldown.sleep)

    def idle(self) -> bool:
        """No rate (configured or learned), no input rate, no pause in force."""
        return (
            self.request_rate is None
            and self.input_rate is None
            and (self.learned is None or self.learned.bucket is None)
            and self.cooldown.until <= self.cooldown.clock()
        )

    async def wait(self) -> None:
        """Return once no pause is in force."""
        await self.cooldown.wait()

    async def pace(self) -> None:
        """Wait for the request rate: the one configured, or the one learned from 429s."""
        bucket = self.request_rate
        if bucket is None and self.learned is not None:
            bucket = self.learned.bucket
        if bucket is not None:
            await bucket.acquire(1)

    async def take_inputs(self, n: int) -> None:
        """Wait for the inputs-per-second limit, if any."""
        if self.input_rate is not None:
            await self.input_rate.acquire(n)

    def on_success(self) -> None:
        """A request was answered."""
        if self.learned is not None:
            self.learned.on_success()

    def on_rate_limited(self, ticket: int, issued: int) -> None:
        """A request was refused with 429: maybe learn a slower pace."""
        if self.learned is not None:
            self.learned.on_rate_limited(ticket, issued)

    def pause(self, seconds: float) -> None:
        """Pause everyone for at least `seconds`."""
        self.cooldown.extend(seconds)

    @property
    def rate(self) -> float | None:
        """The configured request rate, or the learned one (None while unpaced)."""
        if self.request_rate is not None:
            return self.request_rate.rate
        return self.learned.rate if self.learned is not None else None

    @property
    def pauses(self) -> int:
        """Pauses started after 429s."""
        return self.cooldown.count
