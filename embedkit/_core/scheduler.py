"""The scheduler: how a text travels from `embed()` to a numpy row.

1. `submit(texts)` wraps the caller's texts in a *job* (the texts, an output matrix filled
   later, an event; single-text callers queued together share one, a `Cohort`) and appends
   it to its lane's FIFO queue. It costs O(1) however many
   texts. There are two lanes: "interactive" (`submit`'s default: a query from a web route)
   and "bulk" (`enqueue`'s: `embed_stream`, `embed_file`); a batch takes interactive texts
   first and fills up with bulk ones, so a query waits for the next free slot, not for the
   bulk work queued before it, while bulk work still keeps every slot busy.
2. One *dispatcher* task loops: wait for queued work, then take a concurrency slot (AIMD
   limit), ask the `BatchPolicy` whether a batch should leave now, wait out any
   client-wide cooldown (after a 429) and the rate limiter, and only then *form a batch*
   from the head of the queue. Forming late is what coalesces: while slots are busy, texts
   pile up, and the next free slot takes a full batch. A full batch always leaves; a
   sub-full one leaves at once while the server keeps a slot in reserve, and otherwise only
   when it is big enough for the arrival rate or has waited one request's fixed cost
   (`BatchPolicy.hold`). While it holds, only an answer, the alarm, or an arrival that
   brings the queue to what the policy would send (`BatchPolicy.enough`) wakes it. When the
   pipe is idle, a lone call is sent at once: there is no batching delay.
   A caller whose text completes a full batch while a slot is free does not wait for the
   dispatcher: it forms that batch and sends it from its own task (`submit`). A burst of
   thousands of calls thus has requests on the wire while later callers are still arriving.
   If that caller is cancelled, the batch is handed to the dispatcher's task group and sent
   again for the others.
3. Forming a batch walks the queue, up to `max_batch_size` texts and `max_batch_chars`
   characters. A text already in flight, or twice in the batch, is not sent again: the caller
   joins the *waiters* of the copy being sent. A text in the LRU cache is answered at once.
4. Each batch runs in its own task: `send(texts)` (the seam: an HTTP backend, a local model,
   or a test function) under the retry policy. On success, if a batch may leave at once (as
   the dispatcher would send it: within the limit, unpaced, not held), the answered slot
   forms it and sends it *before* handing out the rows it received, so the server gets its
   next request before the callers wake up. Then row k goes to every waiter of text k.
   A batch refused for its size is split; a batch refused for one bad input is bisected
   until only the bad text fails. Other errors go to the batch's callers.
5. A caller wakes when its last row lands (or its first error), and gets its matrix. A caller
   that is cancelled marks its job finished: its queued texts are skipped, rows still in
   flight are dropped on arrival. A caller holds a slot only while it sends a full batch
   itself (step 2), and gives it back when that send ends or is handed over, so none can leak.

Nothing here knows about HTTP: `send` is any `async (list[str]) -> (n, dim) float32`.
Nothing here knows where the rate limits live either: a `Quota` hands out permits and
hears about 429s (`LocalQuota` by default; `embedkit.ray` shares one across a fleet).

Deadlines (a call's `deadline`, `max_queue_wait`) end a call, never its batch-mates.

Where each step lives: this module holds the `Scheduler` itself (the queue, the dispatcher,
slots, sending); `holding.py` the dispatcher's hold and its alarm; `jobs.py` what a caller
holds and what a batch is (`Job`, `Batch`, `Slot`, `Ticket`); `batching.py` forming a batch
and handing out its rows (step 3 and the end of step 4: dedup, the LRU cache); `failures.py`
splitting, bisection and errors (the end of step 4); `deadlines.py` deadlines and the retry
budget; `policy.py`, `flow.py` and `quota.py` the decisions of step 2; `stats.py` the
counters' snapshot (`stats()`); `tokens.py` token counts, budgets and over-long inputs (a
batch also closes at a token budget, and takes token permits from the quota), and
`metering.py` the probes of an unconfirmed budget and what answers report (`on_answer`).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .._config import Matrix, Priority
from .._errors import (
    ClientClosedError,
    EmbedkitError,
    RateLimitError,
    ResponseError,
    StatusError,
    TokenLimitError,
)
from .batching import Batching
from .deadlines import Deadlines
from .eager import EagerSend
from .failures import Failures
from .flow import AdaptiveConcurrency, Cooldown, TokenBucket
from .holding import Holding
from .jobs import Abandoned, Batch, Cohorts, Job, Slot, Ticket
from .metering import Metering
from .policy import BatchPolicy
from .quota import LocalQuota, Quota
from .retry import RetryPolicy
from .stats import Reporting
from .tokens import TokenBook

__all__ = ["Scheduler", "Send", "Ticket"]

logger = logging.getLogger("embedkit")

Send = Callable[[list[str]], Awaitable[Matrix]]


class Scheduler(Batching, Deadlines, EagerSend, Failures, Holding, Metering, Reporting):
    """Coalesces concurrent submissions into batches and runs them under flow control.

    Run `scheduler.run` in a task group (it is the dispatcher), then call `submit` from any
    task. `close()` fails everything still pending with `ClientClosedError`.
    """

    def __init__(
        self,
        send: Send,
        *,
        max_batch_size: int = 32,
        max_batch_chars: int | None = 500_000,
        concurrency: AdaptiveConcurrency | None = None,
        retry: RetryPolicy | None = None,
        cooldown: Cooldown | None = None,
        request_rate: TokenBucket | None = None,
        input_rate: TokenBucket | None = None,
        dedup: bool = True,
        cache_size: int = 0,
        learn_rate: bool = True,
        policy: BatchPolicy | None = None,
        quota: Quota | None = None,
        tokens: TokenBook | None = None,
        token_rate: TokenBucket | None = None,
        max_queue_wait: float | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._send = send
        self.max_batch_size = max_batch_size
        self.max_batch_chars = max_batch_chars
        self.concurrency = concurrency or AdaptiveConcurrency(8)
        self.retry = retry
        # the quota: given (e.g. shared by a fleet), or built from the local limits
        self.quota: Quota = quota or LocalQuota(
            cooldown=cooldown,
            request_rate=request_rate,
            input_rate=input_rate,
            learn_rate=learn_rate,
            token_rate=token_rate,
            read_headers=tokens is not None,
        )
        # token counts, budgets and the overflow rule (None: token awareness off)
        self.tokens = tokens
        self._tokens_by_endpoint: Counter[str] = Counter()
        self.policy = policy or BatchPolicy(self.concurrency.maximum)
        self._dedup = dedup
        self._cache: OrderedDict[str, Matrix] | None = OrderedDict() if cache_size > 0 else None
        self._cache_size = cache_size

        # anyio.Event() finds the running backend (via sniffio) on every call, ~2 µs here;
        # the scheduler lives on one loop, so it resolves the backend's class once.
        self._new_event: Callable[[], anyio.Event] = type(anyio.Event())
        self._queue: deque[Job] = deque()  # the bulk lane
        self._urgent: deque[Job] = deque()  # the interactive lane, taken first
        # single-text callers queued together share one wake-up
        self._cohorts = Cohorts(self._new_event)
        self.max_queue_wait = max_queue_wait
        self._paused_by: StatusError | None = None  # the 429 behind the pause in force
        self._deadlines = False  # whether any call gave a deadline (else no sweep on 429)
        self._inflight: dict[str, Batch] = {}
        self._running: set[Batch] = set()
        self._wakeup: anyio.Event | None = None
        self._wake_at = 1  # texts queued that make a new arrival worth waking the dispatcher
        self._alarm_at: float | None = None  # when a hold ends (BatchPolicy clock)
        self._alarm_armed: anyio.Event | None = None  # set to wake an idle alarm
        self._closed = False
        self._queued = 0  # texts in the queue not yet put in a batch
        self._sending = 0  # requests out now
        self._probes = 0  # requests out bigger (in tokens) than any accepted yet
        self._tg: TaskGroup | None = None
        self._drivers: set[anyio.CancelScope] = set()  # batches sent from callers' tasks

        self._requests = 0
        self._texts = 0
        self._texts_sent = 0
        self._batches = 0
        self._retries: Counter[str] = Counter()
        self._splits = 0
        self._bisections = 0
        self._dedup_hits = 0
        self._cache_hits = 0
        self._failed_texts = 0
        self._abandoned = 0
        self._latencies: deque[float] = deque(maxlen=2048)
        self.dimension: int | None = None

    # ----------------------------------------------------------------- callers' side

    def submit(
        self,
        texts: Sequence[str],
        *,
        priority: Priority = "interactive",
        deadline: float | None = None,
    ) -> Awaitable[Matrix]:
        """Embed `texts` (already validated) through the shared batches: the rows, in input
        order, to await. The texts are queued now, at the call.

        When these texts complete a full batch and a slot is free, the awaiting task sends it
        at once. `deadline`: seconds this call may take in all (queueing, attempts, backoff).
        Not a coroutine itself: a waiting caller costs one frame less (issue 23).
        """
        book = self.tokens
        if book is not None and book.ask is not None:  # count_tokens="server": count first
            return self._count_then_queue(texts, priority, deadline)
        return self._queue_texts(texts, priority, deadline)

    async def _count_then_queue(
        self, texts: Sequence[str], priority: Priority, deadline: float | None
    ) -> Matrix:
        await self.count_exact(texts)
        return await self._queue_texts(texts, priority, deadline)

    def _queue_texts(
        self, texts: Sequence[str], priority: Priority, deadline: float | None
    ) -> Awaitable[Matrix]:
        """`submit` once the texts are counted: queue them, and what to await."""
        if deadline is not None or self.max_queue_wait is not None:
            job = self._enqueue(texts, priority == "interactive", deadline)
            return self._result_within(job, deadline)  # sends eagerly within them
        job = self._enqueue(texts, priority == "interactive", None, len(texts) == 1)
        if self.eager_ready():
            return self._send_then_wait(job)
        return job.result(self.dimension)

    async def _send_then_wait(self, job: Job) -> Matrix:
        """Send a full batch from this task (if a slot is still free), then wait for `job`."""
        await self.send_eagerly()
        return await job.result(self.dimension)

    def enqueue(self, texts: list[str], *, priority: Priority = "bulk") -> Ticket:
        """Queue `texts` without waiting for them: a `Ticket` to await or discard.

        Streaming callers (`embed_stream`, `embed_file`) keep a few tickets queued this way,
        in order, without a task per ticket; they queue in the bulk lane by default.
        """
        return Ticket(self, self._enqueue(texts, priority == "interactive", None))

    def _enqueue(
        self, texts: Sequence[str], urgent: bool, deadline: float | None, share: bool = False
    ) -> Job:
        """A job for `texts`, queued in its lane; `share`: a single text that may join the
        lane's open `Cohort` (one wake-up for callers queued together) instead of an event."""
        if self._closed:
            raise ClientClosedError("the embedder is closed")
        book = self.tokens
        spans = weights = None
        if book is not None and texts:
            texts, spans, weights = book.prepare(texts)
            share = share and len(texts) == 1
        if share:
            job = self._cohorts.join(texts, urgent, self.max_batch_size)
        else:
            self._cohorts.close(urgent)  # keep each cohort's members together in the queue
            job = Job(texts, self._new_event())
        if spans is not None:
            job.spans, job.weights = spans, weights
        n = job.n
        self._texts += n
        if n:
            if deadline is not None:
                self._deadlines = True
                job.deadline = anyio.current_time() + deadline
                self._refuse_if_paused(job, deadline)
            job.at = now = self.policy.clock()
            self.policy.arrived(now, n)
            self._queued += n
            (self._urgent if urgent else self._queue).append(job)
            wakeup = self._wakeup
            if wakeup is not None and self._queued >= self._wake_at:
                self._wakeup = None  # one wake-up is enough, however many callers arrive
                wakeup.set()
        return job

    # ------------------------------------------------------------------- dispatcher

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The dispatcher loop. Runs until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._alarm)
            task_status.started()
            try:
                await self._dispatch(tg)
            finally:
                self._tg = None

    async def _dispatch(self, tg: TaskGroup) -> None:
        while True:
            while not (self._queue or self._urgent):
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                self._wakeup = None
            await self.concurrency.acquire()
            try:
                await self._hold()
                await self.quota.wait()
                await self.quota.pace()
                batch = self._form_batch()
                if batch is not None:
                    book = self.tokens
                    if book is not None:  # token awareness off: none of this runs
                        await self._await_probe(batch)
                        self._mark_probe(batch)
                    await self.quota.take_inputs(len(batch.texts))
                    if batch.tokens and not (book and book.stale(batch.texts, batch.generation)):
                        await self.quota.take_tokens(batch.tokens)
            except BaseException:
                self.concurrency.release()
                raise
            if batch is None:
                self.concurrency.release()
                continue
            self._running.add(batch)
            tg.start_soon(self._run_batch, batch)

    # --------------------------------------------------------------------- batches

    async def _run_batch(self, batch: Batch, held: bool = True) -> None:
        """Send `batch`, then keep its slot busy: while a batch may leave the moment an answer
        comes back (`_follow_on`), this task sends it, and only then hands out the rows it
        holds, so the slot is refilled before any caller wakes up."""
        slot = Slot(self.concurrency)
        slot.held = held  # False: a batch handed over by a cancelled caller, no slot yet
        current: Batch | None = batch
        try:
            while current is not None:
                batch, current = current, None
                try:
                    matrix = await self._attempts(batch, slot)
                except Exception as exc:
                    await self._recover(batch, slot, exc)
                    return
                self._running.discard(batch)
                current = self._follow_on(slot)
                self._deliver(batch, matrix)
        finally:
            self._running.discard(batch)
            if batch.probing:
                self._end_probe(batch)
            if current is not None:  # formed, never sent (only if delivering raised)
                self._running.discard(current)
                self._fail(current, EmbedkitError("a batch was dropped before it was sent"))
            slot.release()

    def _follow_on(self, slot: Slot) -> Batch | None:
        """The next batch for a slot whose answer has just come back, if it may leave now.

        Only what the dispatcher would send at once: the slot is still within the limit,
        nothing paces or pauses requests, and the policy would not hold the batch back.
        Otherwise None, and the slot goes back to the dispatcher.
        """
        concurrency = self.concurrency
        if (
            not (self._queue or self._urgent)
            or self._closed
            or not slot.held
            or concurrency.in_flight > int(concurrency.limit)
            or not self.quota.idle()
            or self._probes
        ):
            return None
        policy = self.policy
        now = policy.clock()
        waited = now - self._head_at()
        if policy.hold(self._queued, self.max_batch_size, self._sending, waited, now) is not None:
            return None
        batch = self._form_batch()
        if batch is not None:
            if self.tokens is not None:
                self._mark_probe(batch)
            self._running.add(batch)
        return batch

    async def _attempts(self, batch: Batch, slot: Slot, paced: bool = True) -> Matrix:
        """Send `batch` under the retry policy. `paced`: the dispatcher paced its first
        attempt before forming it (a part of a split batch was not)."""
        texts = batch.texts
        concurrency = self.concurrency
        quota = self.quota
        clock = self.policy.clock
        retry = self.retry
        limit = retry.attempt_timeout if retry is not None else None

        async def attempt() -> Matrix:
            nonlocal paced
            await slot.acquire()  # a retry waits for a slot under the (maybe lowered) limit
            await quota.wait()
            book = self.tokens
            if book is not None and book.stale(texts, batch.generation):
                # formed (or refused for its rate) before a server named a smaller cap: cut
                # it now rather than send what would be refused for its size
                self._end_probe(batch)
                raise TokenLimitError(
                    0, "this batch is over the token budget the server named", scope="request"
                )
            if not paced:
                await quota.pace()  # retries count against the rate too
                if book is not None:  # counted again: the ratio may have been corrected
                    batch.tokens = sum(book.count(t) for t in texts)
                    await quota.take_tokens(batch.tokens)
            paced = False
            if batch.abandoned():
                self._end_probe(batch)
                raise Abandoned
            ticket = concurrency.ticket()
            self._requests += 1
            self._sending += 1
            out = self._sending
            started = clock()
            try:
                if limit is None:
                    matrix = await self._send(texts)
                else:
                    matrix = await self._send_within(texts, limit)
            except EmbedkitError as exc:
                if isinstance(exc, RateLimitError):
                    concurrency.on_overload(ticket)
                    quota.on_rate_limited(ticket, concurrency.issued)
                if self.retry is not None and self.retry.is_retryable(exc):
                    slot.release()  # don't sit on a slot through the backoff
                raise
            finally:
                self._sending -= 1
                if batch.probing:  # answered (or refused): the next batches may go
                    self._end_probe(batch)
                self._wake()
            if matrix.shape[0] != len(texts):
                raise ResponseError(f"sent {len(texts)} texts, got {matrix.shape[0]} rows")
            seconds = clock() - started
            self._latencies.append(seconds)
            self.policy.observe(len(texts), seconds, out)
            concurrency.on_success()
            quota.on_success()
            if book is not None and batch.tokens > book.proven:
                book.proven = batch.tokens
            return matrix

        if retry is None:
            return await attempt()
        return await retry.call(
            attempt,
            on_retry=self._on_retry,
            budget=lambda: self._budget(batch),
            on_give_up=self._on_give_up,
        )

    # ------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Refuse new work and fail every job still waiting with `ClientClosedError`."""
        self._closed = True
        error = ClientClosedError("the embedder was closed before this text was embedded")
        for queue in (self._urgent, self._queue):
            for job in queue:
                job.fail(error)
            queue.clear()
        self._queued = 0
        for batch in list(self._running):
            self._fail(batch, error)
        self._running.clear()
        for scope in self._drivers:
            scope.cancel()
