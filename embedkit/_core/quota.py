"""The quota: the seam between the scheduler and whoever decides how fast requests may go.

The scheduler asks it for permits and tells it about 429s and successes, without knowing
whether the bucket lives here (`LocalQuota`, the default), in a Ray actor shared by a fleet of
workers (`embedkit.ray`), or elsewhere.

Tokens (issue 19) added two methods, both neutral by default: `take_tokens(n)` (token
permits for a batch of about `n` tokens; a quota without a token rate returns at once) and
`on_answer(answer)` (what the server said: its token count and its `x-ratelimit-*`
headers, as an `Answer`; a quota may ignore it). A quota written before them needs only
`async def take_tokens(self, n): pass` and `def on_answer(self, answer): pass`.

`LocalQuota` paces by tokens from, best first: `tokens_per_minute` (configured); the
server's `x-ratelimit-*` headers (a bucket at the stated per-minute limit, held at or
under what the server says remains: `ServerBudget`); and, with neither, a token pace
learned from 429s and the tokens answered (`LearnedRate` in tokens). Requests likewise:
`requests_per_second`, the request headers, or the request pace learned from 429s, which
the token pace replaces once answers report tokens (a request pace drifts when text
lengths vary).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

from .._usage import Answer
from .flow import Clock, Cooldown, LearnedRate, Sleep, TokenBucket

__all__ = ["REFUSAL_SHARE", "LocalQuota", "Quota", "ServerBudget"]

#: The share of a TPM named only in a 429's text (no `x-ratelimit-remaining-*` to keep in
#: step with) that is paced: just under it, so estimates a little low do not drain it.
REFUSAL_SHARE = 0.97


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

    async def take_tokens(self, n: int) -> None:
        """Take `n` token permits (a tokens-per-minute limit), waiting for them.

        Called once per request with the scheduler's count of its tokens; a quota that
        does not pace by tokens returns at once.
        """
        ...

    def on_answer(self, answer: Answer) -> None:
        """What the server said about a request (tokens counted, rate-limit headers).

        Called for successes and refusals of backends that report them, before
        `on_success`/`on_rate_limited`; a quota that does not use it does nothing.
        """
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


class ServerBudget:
    """A token bucket kept in step with what the server says is allowed and left.

    From `limit` (per minute) it paces at `limit / 60` a second; from `remaining` it holds
    at most that much (never more than the server admits, whatever was estimated here);
    from `remaining + rate * reset` (reset: seconds until the allowance is full again) it
    learns how much may go in a burst. With `remaining` but no `limit` (Azure sends only
    that), a `remaining` of 0 asks for a pause of `reset` (or one second).
    """

    def __init__(self, *, clock: Clock, sleep: Sleep) -> None:
        self.bucket: TokenBucket | None = None
        self._clock = clock
        self._sleep = sleep

    def observe(
        self,
        limit: float | None,
        remaining: float | None,
        reset: float | None,
        share: float = 1.0,
    ) -> float | None:
        """Take in one answer's figures (pace at `share` of the limit); the pause to start."""
        bucket = self.bucket
        rate = limit / 60.0 * share if limit else (bucket.rate if bucket is not None else None)
        if rate is None:
            if remaining is not None and remaining < 1:
                return reset if reset else 1.0
            return None
        if bucket is None:
            burst = max(1.0, limit or rate)
            bucket = self.bucket = TokenBucket(
                rate, burst=burst, clock=self._clock, sleep=self._sleep
            )
        bucket.rate = rate
        if remaining is not None:
            if reset is not None:
                bucket.burst = max(1.0, remaining + rate * reset)
            bucket.cap(remaining)
        return None


class LocalQuota:
    """The quota of one process: a cooldown, optional token buckets, a pace learned from 429s."""

    def __init__(
        self,
        *,
        cooldown: Cooldown | None = None,
        request_rate: TokenBucket | None = None,
        input_rate: TokenBucket | None = None,
        learn_rate: bool = True,
        token_rate: TokenBucket | None = None,
        read_headers: bool = True,
    ) -> None:
        self.cooldown = cooldown or Cooldown()
        self.request_rate = request_rate
        self.input_rate = input_rate
        self.token_rate = token_rate
        self.learned: LearnedRate | None = None
        clock, sleep = self.cooldown.clock, self.cooldown.sleep
        if request_rate is None and learn_rate:
            self.learned = LearnedRate(clock=clock, sleep=sleep)
        # a token pace learned from 429s, once answers report tokens (None: not learning)
        self._learn_tokens = learn_rate and token_rate is None
        self.learned_tokens: LearnedRate | None = None
        self._read_headers = read_headers
        self.server_tokens = ServerBudget(clock=clock, sleep=sleep)
        self.server_requests = ServerBudget(clock=clock, sleep=sleep)

    def _token_buckets(self) -> list[TokenBucket]:
        buckets = [self.token_rate, self.server_tokens.bucket]
        if self.learned_tokens is not None:
            buckets.append(self.learned_tokens.bucket)
        return [b for b in buckets if b is not None]

    def idle(self) -> bool:
        """No rate (configured, stated or learned), no input rate, no pause in force."""
        return (
            self.request_rate is None
            and self.input_rate is None
            and (self.learned is None or self.learned.bucket is None)
            and self.server_requests.bucket is None
            and not self._token_buckets()
            and self.cooldown.until <= self.cooldown.clock()
        )

    async def wait(self) -> None:
        """Return once no pause is in force."""
        await self.cooldown.wait()

    async def pace(self) -> None:
        """Wait for the request rate: configured, stated by the server, or learned from 429s."""
        bucket = self.request_rate
        if bucket is None and self.learned is not None and self.learned_tokens is None:
            bucket = self.learned.bucket
        if bucket is not None:
            await bucket.acquire(1)
        stated = self.server_requests.bucket
        if stated is not None:
            await stated.acquire(1)

    async def take_inputs(self, n: int) -> None:
        """Wait for the inputs-per-second limit, if any."""
        if self.input_rate is not None:
            await self.input_rate.acquire(n)

    async def take_tokens(self, n: int) -> None:
        """Wait for the token rates in force (configured, stated, learned), if any."""
        if n <= 0:
            return
        for bucket in self._token_buckets():
            await bucket.acquire(n)

    def on_answer(self, answer: Answer) -> None:
        """Follow the server's rate-limit headers; learn the tokens a success cost."""
        if answer.status >= 400 and answer.estimated:
            # refused: the server charged nothing, and a retry (or the parts of a split)
            # takes its own tokens again; what the server says next (below) still caps it
            for bucket in self._token_buckets():
                bucket.adjust(answer.estimated)
        limits = answer.limits
        if (
            limits is not None
            and answer.status == 429
            and limits.limit_tokens is not None
            and limits.remaining_tokens is None
        ):  # a token 429 that names its TPM (OpenAI's text): nothing is left right now,
            # and with no `remaining` to follow later, pace a little under it
            limits = dataclasses.replace(limits, remaining_tokens=0.0)
            share = REFUSAL_SHARE
        else:
            share = 1.0
        if limits is not None and self._read_headers:
            pauses = (
                self.server_tokens.observe(
                    limits.limit_tokens, limits.remaining_tokens, limits.reset_tokens, share
                ),
                self.server_requests.observe(
                    limits.limit_requests, limits.remaining_requests, limits.reset_requests
                ),
            )
            for pause in pauses:
                if pause:
                    self.cooldown.extend(pause)
        if answer.status < 400 and answer.tokens is not None and answer.estimated:
            # what the request really cost, against what was taken for it: correct every
            # token bucket, so estimates that run a little low do not drain the server's
            for bucket in self._token_buckets():
                bucket.adjust(answer.estimated - answer.tokens)
        if answer.status < 400 and self._learn_tokens and answer.tokens:
            # a token pace is learned only from the server's own counts (`usage`): from
            # estimates alone, the request pace learned from 429s serves better
            if self.learned_tokens is None:
                clock, sleep = self.cooldown.clock, self.cooldown.sleep
                self.learned_tokens = LearnedRate(clock=clock, sleep=sleep, min_samples=4)
            self.learned_tokens.on_success(float(answer.tokens))

    def on_success(self) -> None:
        """A request was answered."""
        if self.learned is not None:
            self.learned.on_success()

    def on_rate_limited(self, ticket: int, issued: int) -> None:
        """A request was refused with 429: maybe learn a slower pace (in tokens, once
        answers report them; else in requests). Not while the server states its limits."""
        if self.server_tokens.bucket is not None or self.server_requests.bucket is not None:
            return  # the headers say how fast; the 429's own wait is the pause
        if self.learned_tokens is not None:
            self.learned_tokens.on_rate_limited(ticket, issued)
        elif self.learned is not None:
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
        if self.server_requests.bucket is not None:
            return self.server_requests.bucket.rate
        return self.learned.rate if self.learned is not None else None

    @property
    def token_pace(self) -> float | None:
        """The token pace in force, tokens/s: the slowest of configured, stated, learned."""
        rates = [b.rate for b in self._token_buckets()]
        return min(rates) if rates else None

    @property
    def pauses(self) -> int:
        """Pauses started after 429s."""
        return self.cooldown.count
