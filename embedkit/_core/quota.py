"""The quota: the seam between the scheduler and whoever decides how fast requests may go.

The scheduler asks it for permits and tells it about 429s and successes, without knowing
whether the bucket lives here (`LocalQuota`, the default), in a Ray actor shared by a fleet of
workers (`embedkit.ray`), or elsewhere.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .flow import Cooldown, LearnedRate, TokenBucket

__all__ = ["LocalQuota", "Quota"]


@runtime_checkable
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

    def paused_for(self) -> float:
        """Seconds left of the pause in force (0 when none). Optional in `Quota`: the
        scheduler uses it, when a quota has it, to fail at once a call whose deadline
        comes before the pause ends."""
        return max(0.0, self.cooldown.until - self.cooldown.clock())

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
