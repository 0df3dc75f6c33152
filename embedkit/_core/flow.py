"""Flow control on anyio: adaptive concurrency (AIMD), token buckets, a shared cooldown and
the request pace learned from 429s.

All of them take an injectable clock (and sleep) so tests can run them on virtual time.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["AdaptiveConcurrency", "Clock", "Cooldown", "LearnedRate", "Sleep", "TokenBucket"]


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class AdaptiveConcurrency:
    """A slot counter whose limit falls by half on overload and creeps back on success.

    Additive increase is +1 per `limit` successes (one "window"), so recovery from 8 to 16
    takes about 8 windows of clean answers. A burst of overload signals from attempts that
    were already in flight when the limit was cut counts once, not once each: every attempt
    carries a ticket, and only tickets issued after the last cut can cut again (one cut per
    round trip, as in TCP congestion control).

    `slow_start()` holds it at one request in flight for a while instead, for a server
    whose quota nobody has stated yet (see there).
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
        self.starting = False  # in a slow start: one request at a time (`slow_start`)
        self._slow_started = False
        self._clean = 0  # a slow start's clean answers in a row
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

    def slow_start(self) -> None:
        """One request in flight until `maximum` have come back clean in a row (once).

        For a server that limits by tokens and has stated no quota: its first wave of
        `maximum` big batches can overrun a quota bucket smaller than one wave, and then
        most of the wave is refused at once (each a 429). Sent one at a time, the first
        refusal comes alone, and it names the quota (OpenAI's text) or starts the pace
        learned from 429s. It ends at a 429 (`on_overload`), at `end_slow_start()` (a
        quota became known: its pace takes over), or after `maximum` clean answers in a
        row (the server took a full wave's worth one by one). Only the first call counts;
        not when the limit is fixed (`adaptive=False`).
        """
        if self.adaptive and self.maximum > 1 and not self._slow_started:
            self._slow_started = self.starting = True
            self._clean = 0
            self.limit = 1.0

    def end_slow_start(self) -> None:
        """End a slow start now (a quota is known): the full limit."""
        if self.starting:
            self.starting = False
            if self.probing:  # a model still loads: the full limit once it answers
                self._before_probe = float(self.maximum)
            else:
                self.limit = float(self.maximum)
            self._notify()

    def on_success(self) -> None:
        """One request succeeded: grow the limit additively, up to the maximum."""
        if self.probing:
            self.probing = False
            self.limit = max(self.limit, self._before_probe)
            self._notify()
            return
        if self.starting:
            self._clean += 1
            if self._clean >= self.maximum:
                self.end_slow_start()
            return
        if self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
            self._notify()

    def on_overload(self, ticket: int) -> None:
        """The server said it is overloaded (429, TEI Overloaded): halve the limit once."""
        if not self.adaptive or ticket <= self._mark:
            return
        self.starting = False  # a slow start ends at its first 429 (at one in flight)
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

    def adjust(self, n: float) -> None:
        """Add `n` tokens now (negative: take them, without waiting): a correction, when a
        request turned out to cost more or less than was taken for it."""
        self._tokens = min(self.burst, self._tokens + n)

    def cap(self, level: float) -> None:
        """Hold at most `level` tokens now (what the server says is left); never adds any."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens = min(self._tokens, level)

    @property
    def level(self) -> float:
        """Tokens in the bucket as of the last call (negative: reserved ahead)."""
        return self._tokens


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
    Two things would cut too deep, and a pace cut too deep grows back at 2% a second:
    * An answer from before an idle moment (a warm-up) is alone in the window at the first
      429, and one answer over a long span says nothing of a rate: with fewer than two
      answers there is nothing to learn from yet, and the cooldown alone waits.
    * A 429 that ends a slow start finds in the window the seconds in which the pace was
      still low: the window's rate is the ramp's average. Then the last `recent` seconds,
      when the pace was above the quota, say better what the server admits; and while the
      estimate is unsure, one cut at most halves the pace.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        window: float = 2.0,
        backoff: float = 0.97,
        growth: float = 0.02,
        min_samples: int = 16,
        recent: float = 0.3,
    ) -> None:
        self.bucket: TokenBucket | None = None
        # successes in the window that make an estimate trustworthy: 16 requests; a token
        # pace counts answers of thousands of tokens each, so it trusts fewer
        self._min_samples = min_samples
        self.cuts = 0
        self._clock = clock
        self._sleep = sleep
        self._window = window
        self._backoff = backoff
        self._growth = growth
        self._recent = recent
        self._ok: deque[tuple[float, float]] = deque(maxlen=65_536)  # (when, amount)
        self._mark = 0
        self._confident = False  # whether the last cut rested on enough samples

    @staticmethod
    def _rate_since(window: list[tuple[float, float]], now: float) -> float:
        """The amount per second that `window`'s answers (oldest first) add up to by `now`."""
        if not window:
            return 0.0
        return sum(a for _, a in window) / max(now - window[0][0], 0.05)

    @property
    def rate(self) -> float | None:
        """The learned pace in requests/s (None while unpaced)."""
        return self.bucket.rate if self.bucket is not None else None

    def on_success(self, amount: float = 1.0) -> None:
        """A request was answered: remember when, and probe for a little more.

        `amount` is what it cost in the bucket's unit: 1 for a request pace, its tokens for
        a token pace (the growth scales with it, so it stays about 2% a second).
        """
        self._ok.append((self._clock(), amount))
        if self.bucket is not None:
            # about +100%/s while the pace rests on a handful of samples (a slow start)
            step = self._growth * amount
            self.bucket.rate += step if self._confident else 50 * step

    def on_rate_limited(self, ticket: int, issued: int) -> None:
        """A request was refused with 429: pace at what the server let through."""
        if ticket <= self._mark:
            return
        self._mark = issued
        now = self._clock()
        window = [(t, a) for t, a in self._ok if t >= now - self._window]
        if len(window) < 2 and self.bucket is None:
            return  # refused before a rate got through (an answer alone is no rate): wait
        observed = self._rate_since(window, now)
        unsure = not self._confident
        self._confident = len(window) >= self._min_samples
        current = self.bucket.rate if self.bucket is not None else math.inf
        if observed > 0 and self.bucket is not None and unsure:
            # the end of a slow start: the window holds the ramp, the last moments do not
            recent = [(t, a) for t, a in window if t >= now - self._recent]
            observed = max(observed, self._rate_since(recent, now))
        if observed > 0:
            new = max(0.1, observed * self._backoff)  # just under what the server let through
            if self.bucket is not None and unsure:
                new = max(new, current / 2)  # an unsure estimate cuts at most by half
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
