"""What an embedder reports about itself: `SchedulerStats` and, per replica, `EndpointStats`."""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .flow import AdaptiveConcurrency
    from .jobs import Batch, Job
    from .quota import Quota

__all__ = ["EndpointStats", "ReplicaState", "Reporting", "SchedulerStats"]


class ReplicaState(str, enum.Enum):
    """Where a replica stands: taking work, paused after a 429, ejected, or loading."""

    HEALTHY = "healthy"
    COOLING = "cooling"
    EJECTED = "ejected"
    LOADING = "loading"


@dataclasses.dataclass(frozen=True)
class EndpointStats:
    """One replica's figures, in `embedder.stats().endpoints`.

    Attributes:
        url: the replica (without credentials or query).
        state: "healthy", "cooling" (after a 429), "ejected" (failing; probed) or
            "loading" (503 while its model loads; probed).
        requests: batches sent to it (failovers included).
        texts: texts it answered.
        errors: failed requests by cause (status code, or error name).
        failovers: batches that failed here and were re-sent to another replica.
        in_flight: requests to it now.
        concurrency_limit: its current cap on requests in flight (AIMD).
        latency_p50: median seconds per successful request (None before the first).
        latency_p99: 99th percentile.
        texts_per_s: texts answered per second since its first request.
    """

    url: str
    state: str
    requests: int
    texts: int
    errors: dict[str, int]
    failovers: int
    in_flight: int
    concurrency_limit: float
    latency_p50: float | None
    latency_p99: float | None
    texts_per_s: float | None


@dataclasses.dataclass(frozen=True)
class SchedulerStats:
    """A snapshot of what the embedder has done. Returned by `embedder.stats()`.

    Attributes:
        requests: batches sent to the backend, retries included.
        texts: texts submitted by callers (duplicates and cache hits included).
        texts_sent: texts actually sent (after dedup and cache).
        batches: batches formed (each may take several requests when retried).
        mean_batch_size: texts_sent / batches.
        retries: retries by cause (status code, or error name for transport faults).
        splits: batches split because the server refused their size.
        bisections: batches bisected to isolate a bad input.
        dedup_hits: texts that joined an identical text already on its way.
        cache_hits: texts answered from the LRU cache.
        failed_texts: texts whose caller got an error.
        abandoned: batches dropped before sending because every caller had gone.
        in_flight: batches being sent now.
        queue_depth: texts waiting to be put in a batch.
        concurrency_limit: the current adaptive concurrency limit.
        request_rate: the request pace in force, requests/s: the configured one, or the one
            learned from 429s; None while unpaced.
        max_batch_size: the current batch size limit (lowered after a size refusal).
        cooldowns: client-wide pauses started after 429s.
        latency_p50: median seconds per successful request (None before the first).
        latency_p90: 90th percentile.
        latency_p99: 99th percentile.
        endpoints: with several URLs, each replica's figures (see the "many replicas" guide).
        tokens_sent: tokens sent, as counted (or estimated) here before sending.
        tokens_reported: tokens the server said it counted (`usage.prompt_tokens`,
            `x-compute-tokens`): what a hosted API bills.
        tokens_by_endpoint: `tokens_reported` per server URL.
        tokens_per_char: the learned estimate (None with an exact counter).
        max_batch_tokens: the token budget of one request in force (None: none).
        max_input_tokens: the per-input cap in force (None: none known).
        token_rate: the token pace in force, tokens/s (None while unpaced).
        truncated: inputs cut to `max_tokens_per_input` (`on_overflow="truncate"`).
        chunked: inputs split and averaged (`on_overflow="chunk_mean"`).
        store_hits: texts answered from the persistent cache (`cache=`), never sent.
        store_misses: texts looked up there and not found (or not looked up: store down).
        store_errors: lookups and writes that failed or timed out; those calls went to the
            server (see the "many processes" guide).
    """

    requests: int
    texts: int
    texts_sent: int
    batches: int
    mean_batch_size: float
    retries: dict[str, int]
    splits: int
    bisections: int
    dedup_hits: int
    cache_hits: int
    failed_texts: int
    abandoned: int
    in_flight: int
    queue_depth: int
    concurrency_limit: float
    request_rate: float | None
    max_batch_size: int
    cooldowns: int
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    endpoints: tuple[EndpointStats, ...] = ()
    tokens_sent: int = 0
    tokens_reported: int = 0
    tokens_by_endpoint: dict[str, int] = dataclasses.field(default_factory=dict)
    tokens_per_char: float | None = None
    max_batch_tokens: int | None = None
    max_input_tokens: int | None = None
    token_rate: float | None = None
    truncated: int = 0
    chunked: int = 0
    store_hits: int = 0
    store_misses: int = 0
    store_errors: int = 0


class Reporting:
    """`stats()`: the scheduler's counters as a `SchedulerStats` (a mixin of `Scheduler`)."""

    concurrency: AdaptiveConcurrency
    quota: Quota
    max_batch_size: int
    _urgent: deque[Job]
    _queue: deque[Job]
    _running: set[Batch]
    _latencies: deque[float]
    _requests: int
    _texts: int
    _texts_sent: int
    _batches: int
    _retries: Counter[str]
    _splits: int
    _bisections: int
    _dedup_hits: int
    _cache_hits: int
    _failed_texts: int
    _abandoned: int

    if TYPE_CHECKING:

        def _token_stats(self) -> dict[str, Any]: ...  # Metering's (the token figures)

    def stats(self) -> SchedulerStats:
        """A consistent snapshot of the counters."""
        latencies = sorted(self._latencies)

        def pct(q: float) -> float | None:
            if not latencies:
                return None
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

        queued = sum(
            job.n - job.next
            for queue in (self._urgent, self._queue)
            for job in queue
            if not job.finished
        )
        return SchedulerStats(
            requests=self._requests,
            texts=self._texts,
            texts_sent=self._texts_sent,
            batches=self._batches,
            mean_batch_size=self._texts_sent / self._batches if self._batches else 0.0,
            retries=dict(self._retries),
            splits=self._splits,
            bisections=self._bisections,
            dedup_hits=self._dedup_hits,
            cache_hits=self._cache_hits,
            failed_texts=self._failed_texts,
            abandoned=self._abandoned,
            in_flight=len(self._running),
            queue_depth=queued,
            concurrency_limit=self.concurrency.limit,
            request_rate=self.quota.rate,
            max_batch_size=self.max_batch_size,
            cooldowns=self.quota.pauses,
            latency_p50=pct(0.5),
            latency_p90=pct(0.9),
            latency_p99=pct(0.99),
            **self._token_stats(),
        )
