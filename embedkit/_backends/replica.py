"""One replica of a balanced model: its URL and settings (`Endpoint`), and its own state
(`Replica`): the cap, cooldown and learned pace it keeps apart from the other replicas, the
estimate of its seconds per text that the balancer's choice reads, and its circuit breaker.

Why a module of its own: everything here is about one replica and is decided from that
replica's outcomes alone. Which replica gets a batch, failover and the probe task, which
compare or drive several of them, are `BalancedBackend`'s (balancer.py).

* **Estimate.** `Replica.on_success` keeps the recent latency per text (an EWMA whose basis
  is the batch size it was measured on); `Replica.expected` turns it into the seconds a
  batch sent now would take, given its backlog and weight.
* **Breaker.** `Replica.on_failure` moves it to `cooling` (a 429: until its Retry-After),
  `loading` (a 503 "loading") or `ejected` (transport faults, 5xx), with a backoff that
  doubles while probes fail (`Replica.on_probe`).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import anyio

from .._core import (
    AdaptiveConcurrency,
    Clock,
    EndpointStats,
    LearnedRate,
    ReplicaState,
    Sleep,
    describe,
)
from .._errors import EmbedkitError, ModelLoadingError, RateLimitError
from .base import Backend, CompleteBackend, complete
from .protocols import BackendInfo

__all__ = ["Endpoint", "Probe", "Replica"]

Probe = Callable[[], Awaitable[None]]


class Endpoint:
    """One replica's URL and the settings in which it differs from the others.

    Pass a list of these (or of plain URL strings, which mean the defaults) as `url=`:
    `AsyncEmbedder(url=[Endpoint("http://gpu-0:8080", weight=2.0), "http://gpu-1:8080"],
    api="tei")`.

    Args:
        url: the replica's URL, as `url=` takes it for one server.
        weight: relative speed to assume (a replica of weight 2 is expected to get through
            texts twice as fast before it has been measured; measurements refine it).
        max_concurrency: requests in flight to this replica at most (default: the
            embedder's `max_concurrency`, which is per replica when several are given).
        token: this replica's token (default: the embedder's). Never shown in its repr.
    """

    __slots__ = ("max_concurrency", "token", "url", "weight")

    def __init__(
        self,
        url: str,
        *,
        weight: float = 1.0,
        max_concurrency: int | None = None,
        token: str | None = None,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise TypeError("Endpoint(url) takes a non-empty URL string")
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError("Endpoint weight must be a positive number")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("Endpoint max_concurrency must be at least 1")
        self.url = url
        self.weight = float(weight)
        self.max_concurrency = max_concurrency
        self.token = token

    def _key(self) -> tuple[object, ...]:
        return (self.url, self.weight, self.max_concurrency, self.token)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        parts = [repr(_safe(self.url))]
        if self.weight != 1.0:
            parts.append(f"weight={self.weight:g}")
        if self.max_concurrency is not None:
            parts.append(f"max_concurrency={self.max_concurrency}")
        if self.token is not None:
            parts.append("token=<set>")
        return f"Endpoint({', '.join(parts)})"


def _safe(url: str) -> str:
    """A URL without user:password@ or query (where secrets sometimes hide)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host, slash, path = rest.partition("/")
    host = host.rpartition("@")[2]
    path = path.partition("?")[0]
    return f"{scheme}{sep}{host}{slash}{path}"


class Replica:
    """One backend with its own limits, estimate and circuit breaker."""

    def __init__(
        self,
        backend: Backend,
        *,
        name: str,
        probe: Probe | None = None,
        max_concurrency: int,
        weight: float = 1.0,
        adaptive: bool = True,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.backend = backend
        # the rest of the Backend API, neutral defaults where `backend` has only the essentials
        self.complete: CompleteBackend = complete(backend)
        self.name = name
        self.probe: Probe = probe or self.complete.probe
        self.weight = weight
        self.concurrency = AdaptiveConcurrency(max_concurrency, adaptive=adaptive)
        self.learned: LearnedRate | None = (
            LearnedRate(clock=clock, sleep=sleep) if adaptive else None
        )
        self.state = ReplicaState.HEALTHY
        self.info = BackendInfo()
        self.clock = clock
        # work in flight and the estimate of seconds per text (None: never measured)
        self.in_flight = 0
        self.texts_in_flight = 0
        self.per_text: float | None = None
        self.basis = 1  # texts in the batches the estimate rests on
        self.last_sent = -math.inf
        # circuit breaker
        self.until = 0.0  # cooling: when it ends; ejected/loading: when to probe next
        self.backoff = 0.0
        self.probing = False
        # counters
        self.requests = 0
        self.texts = 0
        self.failovers = 0
        self.errors: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=1024)
        self.first_sent: float | None = None
        self.last_answer: float | None = None

    @property
    def cap(self) -> int:
        """Requests it may have in flight now."""
        return max(1, int(self.concurrency.limit))

    def admitted(self, now: float) -> bool:
        """Taking work (a cooldown that ran out readmits), full or not."""
        if self.state is ReplicaState.COOLING and now >= self.until:
            self.state = ReplicaState.HEALTHY
        return self.state is ReplicaState.HEALTHY

    def available(self, now: float) -> bool:
        """Admitted and under its cap."""
        return self.admitted(now) and self.in_flight < self.cap

    def down(self, now: float) -> bool:
        """Not worth waiting for: ejected, loading, or cooling for a while yet."""
        if self.state is ReplicaState.COOLING:
            return now < self.until
        return self.state in (ReplicaState.EJECTED, ReplicaState.LOADING)

    def expected(self, n: int, fallback: float) -> float:
        """Seconds until a batch of `n` sent now would be through, by the estimate."""
        per_text = self.per_text if self.per_text is not None else fallback
        return (self.texts_in_flight + n) * per_text / self.weight

    # -------------------------------------------------------------- outcomes

    def on_success(self, n: int, seconds: float, alpha: float) -> None:
        """An answer: update the estimate, the cap and the counters.

        The estimate is the request's latency per text. A replica that queues requests
        answers them later, so its estimate rises with its backlog and it gets fewer; one
        that serves them in parallel keeps a low estimate and gets more, up to its cap.
        (Latency, not throughput: throughput measured at the concurrency a replica was given
        would keep a replica given little looking slow.)
        """
        per_text = seconds / max(1, n)
        if self.per_text is None or n >= 2 * self.basis:
            # A request's fixed cost makes a small batch look slow per text: an estimate
            # from small batches gives way at once to one from a batch twice as large.
            self.per_text = per_text
            self.basis = n
        else:
            weight = alpha * min(1.0, n / self.basis)
            self.per_text = weight * per_text + (1 - weight) * self.per_text
        self.latencies.append(seconds)
        self.texts += n
        self.last_answer = self.clock()
        self.concurrency.on_success()
        if self.learned is not None:
            self.learned.on_success()

    def on_failure(self, exc: EmbedkitError, ticket: int, base_backoff: float) -> None:
        """A failed request: count it and move the breaker."""
        self.errors[describe(exc)] += 1
        now = self.clock()
        if isinstance(exc, RateLimitError):
            self.concurrency.on_overload(ticket)
            if self.learned is not None:
                self.learned.on_rate_limited(ticket, self.concurrency.issued)
            wait = exc.retry_after if exc.retry_after is not None else base_backoff
            self.state = ReplicaState.COOLING
            self.until = max(self.until, now + wait)
        elif isinstance(exc, ModelLoadingError):
            self.state = ReplicaState.LOADING
            self.backoff = base_backoff
            wait = min(exc.retry_after, 5.0) if exc.retry_after else base_backoff
            self.until = now + wait
        else:
            self.eject(now, base_backoff)

    def eject(self, now: float, base_backoff: float) -> None:
        """Stop sending here; probe after a backoff (doubling while it stays down)."""
        if self.state is not ReplicaState.EJECTED:
            self.state = ReplicaState.EJECTED
            self.backoff = base_backoff
        self.until = now + self.backoff

    def on_probe(self, ok: bool, max_backoff: float) -> None:
        """A half-open probe's outcome: readmit, or wait longer."""
        self.probing = False
        now = self.clock()
        if ok:
            self.state = ReplicaState.HEALTHY
            self.backoff = 0.0
            self.until = 0.0
            self.per_text = None  # measure it afresh: it may have come back different
            self.basis = 1
            return
        self.backoff = min(max_backoff, max(self.backoff, 0.05) * 2)
        self.until = now + self.backoff

    def probe_due(self, now: float) -> bool:
        return (
            self.state in (ReplicaState.EJECTED, ReplicaState.LOADING)
            and not self.probing
            and now >= self.until
        )

    def stats(self) -> EndpointStats:
        latencies = sorted(self.latencies)

        def pct(q: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

        rate = None
        if self.first_sent is not None and self.last_answer is not None:
            span = self.last_answer - self.first_sent
            rate = self.texts / span if span > 0 else None
        self.available(self.clock())  # an expired cooldown shows as healthy
        return EndpointStats(
            url=self.name,
            state=self.state.value,
            requests=self.requests,
            texts=self.texts,
            errors=dict(self.errors),
            failovers=self.failovers,
            in_flight=self.in_flight,
            concurrency_limit=self.concurrency.limit,
            latency_p50=pct(0.5),
            latency_p99=pct(0.99),
            texts_per_s=rate,
        )
