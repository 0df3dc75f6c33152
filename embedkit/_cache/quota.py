"""`RedisQuota`: one quota for every process and host that names it, kept in Redis.

The scheduler's `Quota` seam (as `LocalQuota` for one process and `embedkit.ray`'s
`FleetQuota` for a Ray fleet), with the buckets, the pause after a 429 and the pace learned
from 429s in Redis, changed only by one atomic Lua script (`lua.py`). Like the Ray fleet's
quota, a process leases a block of request permits at a time (a tenth of a second of its
share of the rate), so Redis sees about ten calls a second per process, not one per
request; it reports its successes and 429s with its next lease, and a 429 or a pause makes
that lease come at once (`wait` runs before every request).

A Redis that is down or slow does not stop the embedder: a failed call is counted
(`counters()["errors"]`), and for a second the process paces itself at its last known share
of the rate (or unpaced, when none is known yet), then tries Redis again. Only the URL,
the name and the rates are pickled, so a quota can be handed to worker processes or Ray
actors, each of which connects on its own.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

import anyio

from .._core import TokenBucket
from .lua import SYNC_SCRIPT
from .redis import RedisClients, safe_url

__all__ = ["RedisQuota"]

logger = logging.getLogger("embedkit")

#: While unpaced, how often a process asks Redis for news (a learned pace, a pause).
REFRESH_SECONDS = 0.1
#: A permit not used within this long after it fell due is dropped, not spent in a burst.
STALE_SECONDS = 1.0
#: After a failed Redis call, pace locally this long before trying Redis again.
RETRY_SECONDS = 1.0
#: The most request permits one lease asks for (the script gives a tenth of a second's share).
MAX_LEASE = 64
#: Keys of a quota nobody has used for this long expire.
KEY_TTL_MS = 3_600_000


class _Lease:
    """Permits used+1 .. granted of one lease; the k-th is due (k - tokens0) / rate after start."""

    __slots__ = ("granted", "rate", "start", "tokens0", "used")

    def __init__(
        self, start: float = 0.0, rate: float = 0.0, tokens0: float = 0.0, granted: int = 0
    ):
        self.start, self.rate, self.tokens0, self.granted = start, rate, tokens0, granted
        self.used = 0

    def left(self) -> int:
        return self.granted - self.used

    def take(self, n: int) -> float:
        """The time the n more permits are all due (the caller checked `left() >= n`)."""
        self.used += n
        return self.start + max(0.0, (self.used - self.tokens0) / self.rate)


class RedisQuota:
    """A quota shared through Redis by every embedder that names it (`quota=`).

    Args:
        url: a redis URL ("redis://host:6379/0"; credentials are never shown).
        name: the quota's name: processes that give the same name share one budget.
        requests_per_second: the request rate of the whole fleet (None: learned from 429s,
            shared by every process).
        inputs_per_second: the input (text) rate of the whole fleet.
        tokens_per_minute: the token rate of the whole fleet (for `take_tokens`).
        learn_rate: learn a pace from 429s while no request rate is given.
        prefix: prepended to the quota's keys in Redis.
        timeout: seconds one Redis call may take before the process paces itself alone.

    Every process must give the same rates (the last caller's rate is the one in force).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        name: str = "default",
        requests_per_second: float | None = None,
        inputs_per_second: float | None = None,
        tokens_per_minute: float | None = None,
        learn_rate: bool = True,
        prefix: str = "embedkit:quota:",
        timeout: float = 0.5,
    ) -> None:
        for label, value in (
            ("requests_per_second", requests_per_second),
            ("inputs_per_second", inputs_per_second),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{label} must be positive (or None)")
        self.url = url
        self.name = name
        self.requests_per_second = requests_per_second
        self.inputs_per_second = inputs_per_second
        self.tokens_per_minute = tokens_per_minute
        self.learn_rate = learn_rate
        self.prefix = prefix
        self.timeout = timeout
        tag = f"{prefix}{{{name}}}"
        self._keys = [f"{tag}:state", f"{tag}:seen", f"{tag}:ok"]
        self._clients = RedisClients(url, timeout)
        self._script: Any = None
        self._script_client: Any = None
        self._id = uuid.uuid4().hex[:12]
        self._leases = [_Lease(), _Lease(), _Lease()]  # requests, inputs, tokens
        self._until = 0.0
        self._paced = requests_per_second is not None
        self._rate: float | None = requests_per_second
        self._pauses = 0
        self._workers = 1
        self._cuts = 0
        self._synced = -math.inf
        self._successes = 0
        self._limited = 0
        self._pause = 0.0
        self._returned = 0
        self._errors = 0
        self._down_until = -math.inf
        self._local: TokenBucket | None = None
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"RedisQuota({safe_url(self.url)!r}, name={self.name!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "name": self.name,
            "requests_per_second": self.requests_per_second,
            "inputs_per_second": self.inputs_per_second,
            "tokens_per_minute": self.tokens_per_minute,
            "learn_rate": self.learn_rate,
            "prefix": self.prefix,
            "timeout": self.timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def attach(self) -> None:
        """Called by an embedder as it opens (its connections are closed by `detach`)."""
        self._clients.attach()

    async def detach(self) -> None:
        """Called by an embedder as it closes: the last one on a loop closes its connections."""
        self._script = self._script_client = None
        await self._clients.detach()

    # ------------------------------------------------------------------ Redis

    async def _call(self, requests: int, inputs: int, tokens: int) -> list[Any]:
        client = self._clients.get()
        if self._script is None or self._script_client is not client:
            self._script = client.register_script(SYNC_SCRIPT)
            self._script_client = client
        tps = self.tokens_per_minute / 60.0 if self.tokens_per_minute else 0.0
        args = [
            self._id,
            requests,
            inputs,
            tokens,
            self.requests_per_second or 0.0,
            self.inputs_per_second or 0.0,
            tps,
            self._pause,
            self._returned,
            self._successes,
            self._limited,
            1 if self.learn_rate else 0,
            KEY_TTL_MS,
        ]
        with anyio.fail_after(self.timeout):
            answer: list[Any] = await self._script(keys=self._keys, args=args)
        return answer

    async def _sync(self, requests: int = 0, inputs: int = 0, tokens: int = 0) -> bool:
        """Report and lease in one call; False when Redis failed (the process paces alone)."""
        now = time.monotonic()
        if now < self._down_until:
            return False
        reported = (self._successes, self._limited, self._pause, self._returned)
        try:
            answer = await self._call(requests, inputs, tokens)
        except Exception as exc:
            self._errors += 1
            self._down_until = time.monotonic() + RETRY_SECONDS
            logger.warning(
                "embedkit RedisQuota %r: %s (%s); pacing this process alone for %g s",
                self.name,
                type(exc).__name__,
                exc,
                RETRY_SECONDS,
            )
            return False
        self._successes -= reported[0]
        self._limited -= reported[1]
        if self._pause == reported[2]:
            self._pause = 0.0
        self._returned -= reported[3]
        now = time.monotonic()
        self._synced = now
        for k, (rate, tokens0, granted) in enumerate(answer[:3]):
            if int(granted) > 0:
                self._leases[k] = _Lease(now, float(rate), float(tokens0), int(granted))
        left = float(answer[3])
        self._until = max(self._until, now + left)
        rate = float(answer[0][0])
        self._rate = rate if rate > 0 else None
        self._paced = self._rate is not None
        self._pauses = int(answer[4])
        self._workers = max(1, int(answer[5]))
        self._cuts = int(float(answer[6]))
        return True

    def _alone(self) -> TokenBucket | None:
        """The local bucket while Redis is down: this process's last known share."""
        rate = self._rate
        if rate is None:
            return None
        share = rate / self._workers
        if self._local is None or self._local.rate != share:
            self._local = TokenBucket(share, burst=max(1.0, share / 10))
        return self._local

    # ------------------------------------------------------------------ Quota

    def idle(self) -> bool:
        """True while unpaced, unpaused, and recently in touch with the fleet."""
        now = time.monotonic()
        return (
            not self._paced
            and self.inputs_per_second is None
            and self._until <= now
            and now - self._synced < REFRESH_SECONDS
            and not (self._limited or self._pause)
        )

    async def wait(self) -> None:
        """Return once no pause (any process's) is in force; reports a 429 or pause first."""
        if self._limited or self._pause:
            async with self._lock:
                if self._limited or self._pause:
                    await self._sync()
        while True:
            left = self._until - time.monotonic()
            if left <= 0:
                return
            await anyio.sleep(left)

    async def pace(self) -> None:
        """Take one request permit; unpaced until the fleet has a rate."""
        await self._take(0, 1)

    async def take_inputs(self, n: int) -> None:
        """Take `n` input permits (when an inputs-per-second rate is given)."""
        if self.inputs_per_second is not None:
            await self._take(1, n)

    async def take_tokens(self, n: int) -> None:
        """Take `n` token permits (when a tokens-per-minute rate is given)."""
        if self.tokens_per_minute is not None:
            await self._take(2, n)

    async def _take(self, kind: int, n: int) -> None:
        lease = self._leases[kind]
        if kind == 0 and not self._paced and not lease.left():
            if time.monotonic() - self._synced >= REFRESH_SECONDS:
                async with self._lock:
                    if time.monotonic() - self._synced >= REFRESH_SECONDS:
                        await self._sync()
            if not self._paced:
                return
        while True:
            lease = self._leases[kind]
            now = time.monotonic()
            if lease.left() >= n:
                due = lease.take(n)
                if kind == 0 and due < now - STALE_SECONDS:
                    continue  # due long ago and never used: not a licence to burst
                break
            async with self._lock:
                if self._leases[kind].left() < n:
                    if kind == 0:
                        want = (MAX_LEASE, 0, 0)  # the script cuts it to this process's share
                    else:
                        want = (0, 2 * n, 0) if kind == 1 else (0, 0, n)
                    if not await self._sync(*want):
                        await self._pace_alone(kind, n)
                        return
                    if kind == 0 and not self._paced:
                        return
        left = max(due, self._until) - time.monotonic()
        if left > 0:
            await anyio.sleep(left)

    async def _pace_alone(self, kind: int, n: int) -> None:
        if kind == 0:
            bucket = self._alone()
        elif kind == 1 and self.inputs_per_second is not None:
            bucket = TokenBucket(self.inputs_per_second / self._workers)
        else:
            bucket = None
        if bucket is not None:
            await bucket.acquire(n if kind else 1)

    def on_answer(self, answer: Any) -> None:
        """What a server said of one answer (the `Quota` seam's `on_answer`): not followed
        here. The processes share `tokens_per_minute` and the 429s they report; one
        process's view of the `x-ratelimit-*` headers is not the whole group's."""

    def on_success(self) -> None:
        """Count a success, for the fleet's learned pace (reported with the next lease)."""
        self._successes += 1

    def on_rate_limited(self, ticket: int, issued: int) -> None:
        """Count a 429; it is reported before the next request (`wait`)."""
        self._limited += 1

    def pause(self, seconds: float) -> None:
        """Pause this process at once, and every process from its next call to Redis."""
        if seconds <= 0:
            return
        self._until = max(self._until, time.monotonic() + seconds)
        self._pause = max(self._pause, seconds)
        lease = self._leases[0]
        self._returned += lease.left()  # permits dated at the old pace would be 429s
        lease.used = lease.granted

    def paused_for(self) -> float:
        """Seconds the pause in force (this process's, or the fleet's as of the last lease)
        has left: a call whose deadline ends sooner fails at once."""
        return max(0.0, self._until - time.monotonic())

    @property
    def rate(self) -> float | None:
        """The fleet's request pace, as of the last lease."""
        return self._rate

    @property
    def pauses(self) -> int:
        """Pauses the fleet started, as of the last lease."""
        return self._pauses

    def counters(self) -> dict[str, Any]:
        """This process's view: the pace, pauses, active processes, learned cuts, Redis errors."""
        return {
            "rate": self._rate,
            "pauses": self._pauses,
            "processes": self._workers,
            "learned_cuts": self._cuts,
            "errors": self._errors,
        }
