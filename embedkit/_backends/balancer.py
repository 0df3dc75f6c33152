"""Many replicas behind one client: a `Backend` that spreads batches over N backends.

The scheduler forms batches and calls `embed_batch` as it would on one server; this
backend picks the replica that should finish the batch soonest, and hides a failing replica:

* **Choice.** The replica expected to finish the batch soonest: `(texts in flight + texts
  in this batch) × EWMA seconds per text ÷ weight`, where seconds per text is its recent
  latency per text (which rises with a replica's queue: peak-EWMA-like).
  If that replica is at its cap, the batch waits for one of its slots rather than queue
  behind a slower replica's backlog; otherwise it goes to the soonest one with a free slot.
  A replica 4× slower is chosen once the others hold 4× its backlog, so under load each
  replica carries work in proportion to its speed. A replica never measured is tried
  first; one left idle for `explore_after` seconds is tried again (its estimate may be
  stale), so none is starved of probes forever.
* **Per-replica limits.** Each replica has its own concurrency cap (AIMD: halved on its
  429s, grown back on success), its own 429 cooldown (its `Retry-After`), its own learned
  pace, and TEI `/info` limits read from it. A 429 from one replica pauses only that one.
* **Failure.** A batch that fails on one replica with a transport fault (refused, reset,
  timeout), a 5xx/408/424, a 429 or a 503 "loading" is sent again at once on another
  replica. Transport faults and 5xx eject the replica (circuit breaker): it gets no work
  until a probe succeeds (TEI `GET /health`, others a one-text request), after a backoff
  that doubles up to `max_backoff` while probes fail. A 503 "loading" marks it `loading`
  (probed likewise); a 429 marks it `cooling` until its Retry-After. Only when no replica
  is left to try does the error reach the scheduler, whose retry policy applies as usual.
* **Dimension.** Every replica must answer the same embedding size; a replica that does
  not is a `ResponseError` naming it, never rows mixed into a matrix.

Nothing here knows about HTTP: replicas are any `Backend`s plus a `probe` coroutine.
What one replica keeps for itself (its cap, cooldown, estimate and breaker) is `Replica`'s,
in replica.py; this module holds what compares and drives several: the choice, failover,
the merged `/info` and the probe task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import TaskStatus

from .._config import Kind, Matrix
from .._core import AdaptiveConcurrency, Clock, EndpointStats, ReplicaState, describe
from .._errors import (
    EmbedkitError,
    ModelLoadingError,
    RateLimitError,
    ResponseError,
    ServerError,
    TransportError,
)
from .._usage import Answer
from .base import BackendStats, Listening, kind_sender
from .protocols import BackendInfo
from .replica import Replica

__all__ = ["BalancedBackend"]

logger = logging.getLogger("embedkit")

#: Errors after which a batch is re-sent at once on another replica.
FAILOVER = (TransportError, ServerError, RateLimitError, ModelLoadingError)


class BalancedBackend:
    """A `Backend` over several replicas of one model (see the module docstring).

    Args:
        replicas: the replicas, in the order given by the user.
        clock, sleep: injectable time (tests).
        explore_after: seconds after which an idle, admitted replica is tried again.
        backoff: the first wait before probing an ejected replica (then doubling).
        max_backoff: the cap on that wait.
        probe_timeout: seconds a probe may take before it counts as failed.
        alpha: the EWMA weight of the newest latency sample.
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        *,
        clock: Clock = time.monotonic,
        explore_after: float = 1.0,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        probe_timeout: float = 10.0,
        alpha: float = 0.2,
    ) -> None:
        if not replicas:
            raise ValueError("a balanced backend needs at least one replica")
        self.replicas = list(replicas)
        self.clock = clock
        self.explore_after = explore_after
        self.base_backoff = backoff
        self.max_backoff = max_backoff
        self.probe_timeout = probe_timeout
        self.alpha = alpha
        self.dimension: int | None = None
        self._dimension_from: str | None = None
        self._changed = anyio.Event()
        self._probe_wakeup: anyio.Event | None = None

    # ------------------------------------------------------------ Backend API

    async def start(self) -> BackendInfo:
        """Start every replica (TEI: read each one's `/info`); merge what they said."""
        infos: list[BackendInfo] = [BackendInfo()] * len(self.replicas)

        async def start_one(i: int) -> None:
            infos[i] = await self.replicas[i].backend.start()

        async with anyio.create_task_group() as tg:
            for i in range(len(self.replicas)):
                tg.start_soon(start_one, i)
        for replica, info in zip(self.replicas, infos, strict=True):
            replica.info = info
        sizes = [i.max_batch_size for i in infos if i.max_batch_size is not None]
        first = infos[0]
        return BackendInfo(
            model_id=next((i.model_id for i in infos if i.model_id), first.model_id),
            dimension=first.dimension,
            max_batch_size=min(sizes) if sizes else None,
            max_inputs_in_flight=None,  # per replica: see `fit_concurrency`
        )

    def fit_concurrency(self, max_batch_size: int, max_concurrency: int) -> int:
        """Lower each replica's cap to its own TEI limit; the sum is the scheduler's.

        `max_concurrency` is not used: each replica has its own cap (`Endpoint`).
        """
        for replica in self.replicas:
            inputs = replica.info.max_inputs_in_flight
            if inputs is not None:
                cap = max(1, min(replica.concurrency.maximum, inputs // max_batch_size))
                adaptive = replica.concurrency.adaptive
                replica.concurrency = AdaptiveConcurrency(cap, adaptive=adaptive)
        return sum(r.concurrency.maximum for r in self.replicas)

    @property
    def carries_kind(self) -> bool:
        """Whether the replicas' protocol has a query/document field."""
        return all(getattr(r.backend, "carries_kind", False) for r in self.replicas)

    async def embed_batch(self, texts: list[str], *, kind: Kind | None = None) -> Matrix:
        """Send the batch to the best replica; on a failover-able error, to the next one."""
        n = len(texts)
        tried: set[int] = set()
        last: EmbedkitError | None = None
        while True:
            replica = await self._acquire(n, tried)
            if replica is None:
                raise last if last is not None else self._all_down()
            try:
                matrix = await self._send(replica, texts, kind)
            except FAILOVER as exc:
                last = exc
                tried.add(id(replica))
                if len(tried) < len(self.replicas):
                    replica.failovers += 1
                    logger.info(
                        "%s failed (%s); sending its batch to another replica",
                        replica.name,
                        describe(exc),
                    )
                continue
            self._check_dimension(replica, matrix)
            return matrix

    async def aclose(self) -> None:
        """Close every replica's backend."""
        for replica in self.replicas:
            with anyio.CancelScope(shield=True):
                await replica.backend.aclose()

    def describe(self) -> str:
        """The replicas, secret-free: "tei ×3 [http://a, http://b, http://c]"."""
        names = ", ".join(r.name for r in self.replicas)
        kind = self.replicas[0].backend.describe().split(" ", 1)[0]
        return f"{kind} ×{len(self.replicas)} [{names}]"

    async def warm(self, connections: int) -> None:
        """Warm every replica with its share of `connections` (at least one each)."""
        share = max(1, -(-connections // len(self.replicas)))
        async with anyio.create_task_group() as tg:
            for replica in self.replicas:
                tg.start_soon(replica.complete.warm, share)

    async def probe(self) -> None:
        """Probe every replica; succeed when one answers (raise the first error if none)."""
        errors: list[Exception] = []
        for replica in self.replicas:
            try:
                await replica.probe()
            except Exception as exc:
                errors.append(exc)
            else:
                return
        raise errors[0]

    def listen(self, on_answer: Callable[[Answer], None]) -> None:
        """Every replica that can report its answers reports them (tagged with its URL)."""
        for replica in self.replicas:
            if isinstance(replica.backend, Listening):
                replica.backend.listen(on_answer)

    def backend_stats(self) -> BackendStats:
        """Each replica's figures, and the re-sent requests summed over them."""
        resent = sum(r.complete.backend_stats().resent_requests for r in self.replicas)
        return BackendStats(resent_requests=resent, endpoints=self.endpoint_stats())

    def endpoint_stats(self) -> tuple[EndpointStats, ...]:
        """Every replica's figures, in the order given."""
        return tuple(r.stats() for r in self.replicas)

    # --------------------------------------------------------------- choice

    def pick(self, n: int, tried: set[int]) -> Replica | None:
        """The replica to send a batch of `n` to now, or None to wait for a slot.

        None also when a replica that is full now would still finish the batch sooner than
        any with a free slot (by the estimates): then the batch waits for it, instead of
        queueing behind a slow replica's backlog.
        """
        now = self.clock()
        admitted = [r for r in self.replicas if id(r) not in tried and r.admitted(now)]
        candidates = [r for r in admitted if r.in_flight < r.cap]
        if not candidates:
            return None
        for replica in candidates:  # never measured, or idle long enough to re-measure
            if replica.per_text is None and replica.in_flight == 0:
                return replica
        for replica in candidates:
            if replica.in_flight == 0 and now - replica.last_sent >= self.explore_after:
                return replica
        known = [r.per_text for r in admitted if r.per_text is not None]
        fallback = min(known) if known else 1.0
        best = min(candidates, key=lambda r: r.expected(n, fallback))
        soonest = min(admitted, key=lambda r: r.expected(n, fallback))
        if soonest.expected(n, fallback) < best.expected(n, fallback):
            return None  # wait for `soonest` to free a slot
        return best

    async def _acquire(self, n: int, tried: set[int]) -> Replica | None:
        """Wait for a replica with a free slot; None when every untried replica is down."""
        while True:
            replica = self.pick(n, tried)
            if replica is not None:
                replica.in_flight += 1
                replica.texts_in_flight += n
                replica.concurrency.in_flight += 1
                return replica
            now = self.clock()
            waiting = [r for r in self.replicas if id(r) not in tried and not r.down(now)]
            if not waiting:
                return None
            # Busy replicas will free a slot; a cooling one comes back when its pause ends.
            changed = self._changed
            ends = [r.until - now for r in waiting if r.state is ReplicaState.COOLING]
            with anyio.move_on_after(max(0.0, min(ends)) if ends else math.inf):
                await changed.wait()

    def _release(self, replica: Replica, n: int) -> None:
        replica.in_flight -= 1
        replica.texts_in_flight -= n
        replica.concurrency.in_flight -= 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _send(self, replica: Replica, texts: list[str], kind: Kind | None = None) -> Matrix:
        n = len(texts)
        try:
            if replica.learned is not None and replica.learned.bucket is not None:
                await replica.learned.bucket.acquire(1)
            ticket = replica.concurrency.ticket()
            replica.requests += 1
            now = self.clock()
            replica.last_sent = now
            if replica.first_sent is None:
                replica.first_sent = now
            started = time.perf_counter()
            try:
                if kind is None:
                    matrix = await replica.backend.embed_batch(texts)
                else:
                    matrix = await kind_sender(replica.backend, kind)(texts)
            except EmbedkitError as exc:
                if isinstance(exc, FAILOVER):
                    replica.on_failure(exc, ticket, self.base_backoff)
                    self._wake_prober()
                else:
                    replica.errors[describe(exc)] += 1
                raise
            replica.on_success(n, time.perf_counter() - started, self.alpha)
            return matrix
        finally:
            self._release(replica, n)

    def _check_dimension(self, replica: Replica, matrix: Matrix) -> None:
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            return
        dim = int(matrix.shape[1])
        if self.dimension is None:
            self.dimension = dim
            self._dimension_from = replica.name
        elif dim != self.dimension:
            replica.errors["dimension"] += 1
            raise ResponseError(
                f"replica {replica.name} answers {dim}-dimensional embeddings, but "
                f"{self._dimension_from} answered {self.dimension}: the replicas do not "
                "serve the same model"
            )

    def _all_down(self) -> EmbedkitError:
        states = ", ".join(f"{r.name} {r.state.value}" for r in self.replicas)
        now = self.clock()
        cooling = [r.until - now for r in self.replicas if r.state is ReplicaState.COOLING]
        if cooling and all(r.state is ReplicaState.COOLING for r in self.replicas):
            return RateLimitError(
                429, f"every replica is rate limited ({states})", retry_after=min(cooling)
            )
        return TransportError(f"no replica is available ({states})")

    # ---------------------------------------------------------------- probes

    def _wake_prober(self) -> None:
        wakeup = self._probe_wakeup
        if wakeup is not None:
            wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe ejected and loading replicas when their backoff ends. Runs until cancelled."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                now = self.clock()
                for replica in self.replicas:
                    if replica.probe_due(now):
                        replica.probing = True
                        tg.start_soon(self._probe, replica)
                waits = [
                    r.until - now
                    for r in self.replicas
                    if r.state in (ReplicaState.EJECTED, ReplicaState.LOADING) and not r.probing
                ]
                self._probe_wakeup = wakeup = anyio.Event()
                with anyio.move_on_after(max(0.0, min(waits)) if waits else math.inf):
                    await wakeup.wait()

    async def _probe(self, replica: Replica) -> None:
        ok = False
        try:
            with anyio.fail_after(self.probe_timeout):
                await replica.probe()
            ok = True
        except (EmbedkitError, TimeoutError) as exc:
            logger.debug("probe of %s failed: %s", replica.name, describe(exc))
        replica.on_probe(ok, self.max_backoff)
        if ok:
            logger.info("%s answers again; readmitted", replica.name)
        self._notify()
        self._wake_prober()
