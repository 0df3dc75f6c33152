"""What a caller holds and what a batch is: the scheduler's small, hot data structures.

A caller's texts become a `Job` (its texts, the matrix their rows land in, what wakes it).
Single-text callers queued one after another share one wake-up, a `Cohort` (one event for
up to a batch of them), so a waiting caller costs no event of its own: an `anyio.Event` is
five tracked objects on asyncio, and thousands of them waiting drove full garbage-collector
passes. A `Batch` is texts on their way to the server, each with its *waiters*: the job and
row that get the text's vector when it comes back (two parallel lists, no object per text),
and any caller that dedup added to a text already in flight instead of sending it twice.
A `Slot` is a batch's hold on one
concurrency slot, and a `Ticket` is what `Scheduler.enqueue` hands a streaming caller.

These sit on the hot path (a waiter per text, one job per call), so they keep `__slots__`
and plain tuples: a named tuple costs ten times a tuple to build, once per text.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import numpy as np

from .._config import Matrix
from .._errors import ResponseError
from .flow import AdaptiveConcurrency
from .tokens import combine

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = [
    "Abandoned",
    "Batch",
    "Cohort",
    "Cohorts",
    "Job",
    "Slot",
    "Ticket",
    "Waiters",
    "copy_error",
    "one_block",
]


class Cohort:
    """One wake-up shared by single-text callers queued one after another (a batch at most).

    It stands in for each member's own event. A member that finishes (its row, its error)
    sets the shared event; the members wake, and those whose row is still to come (the
    cohort spanned two batches) wait again on a fresh event. The scheduler starts a new
    cohort once a batch has taken the first member, so members usually land together.
    """

    __slots__ = ("_new_event", "event", "size")

    def __init__(self, new_event: Callable[[], anyio.Event]) -> None:
        self._new_event = new_event
        self.event = new_event()
        self.size = 0  # members so far

    def set(self) -> None:
        """A member finished: wake the cohort (the others check whether they did too)."""
        self.event.set()

    def event_for(self) -> anyio.Event:
        """The event a member still waiting waits on next: the shared one, or a
        fresh one when another member's row has already set it."""
        event = self.event
        if event.is_set():
            self.event = event = self._new_event()
        return event


class Cohorts:
    """Each lane's open cohort, and its first member (kept here: no reference cycle)."""

    __slots__ = ("_new_event", "_open")

    def __init__(self, new_event: Callable[[], anyio.Event]) -> None:
        self._new_event = new_event
        self._open: list[tuple[Cohort, Job] | None] = [None, None]

    def join(self, texts: Sequence[str], urgent: bool, limit: int) -> Job:
        """A job for one text that shares its lane's open cohort (or opens a new one)."""
        lane = int(urgent)
        current = self._open[lane]
        if current is not None:
            cohort, first = current
            # a new cohort once a batch took the first member, or when it is a batch's size
            if not (first.next or first.finished or cohort.size >= limit):
                cohort.size += 1
                return Job(texts, cohort)
        cohort = Cohort(self._new_event)
        cohort.size = 1
        job = Job(texts, cohort)
        self._open[lane] = (cohort, job)
        return job

    def close(self, urgent: bool) -> None:
        """No more members for the lane's open cohort."""
        self._open[int(urgent)] = None


class Job:
    """One caller's texts, and the matrix their rows land in."""

    __slots__ = (
        "at",
        "deadline",
        "done",
        "error",
        "finished",
        "n",
        "next",
        "out",
        "pending",
        "spans",
        "texts",
        "weights",
    )

    def __init__(self, texts: Sequence[str], done: anyio.Event | Cohort) -> None:
        self.texts = texts
        # chunked inputs (on_overflow="chunk_mean"): caller row i is the weighted mean of
        # rows spans[i] of `out`; None: one row per text
        self.spans: list[tuple[int, int]] | None = None
        self.weights: list[float] | None = None
        self.n = len(texts)
        self.next = 0  # the first text not yet put in a batch
        self.out: Matrix | None = None
        self.pending = self.n  # rows still to come
        self.done = done
        self.error: BaseException | None = None
        self.finished = False  # answered, failed, or given up by its caller
        self.at = 0.0  # when it was queued (BatchPolicy clock)
        self.deadline = math.inf  # when its caller gives up (anyio.current_time() clock)

    def deliver(self, row: int, vector: Matrix) -> None:
        """Row `row` of this job's matrix."""
        self.deliver_rows(row, vector.reshape(1, -1))

    def deliver_rows(self, start: int, rows: Matrix) -> None:
        """Rows `start`, `start + 1`, ... of this job's matrix (copied: `rows` may be shared)."""
        if self.finished:
            return
        out = self.out
        if out is None:
            out = self.out = np.empty((self.n, rows.shape[1]), dtype=np.float32)
        elif out.shape[1] != rows.shape[1]:
            self.fail(
                ResponseError(
                    f"embedding dimension changed between batches ({out.shape[1]} then "
                    f"{rows.shape[1]}): is the server switching models?"
                )
            )
            return
        k = rows.shape[0]
        if k == 1:
            out[start] = rows[0]
        else:
            out[start : start + k] = rows
        self.pending -= k
        if self.pending == 0:
            self.finished = True
            self.done.set()

    def fail(self, error: BaseException) -> None:
        """End this job with `error` (unless it has already ended)."""
        if not self.finished:
            self.finished = True
            self.error = error
            self.done.set()

    async def result(self, dimension: int | None) -> Matrix:
        """Wait for the matrix (or raise the error). Cancelling the wait discards the job.

        `dimension` shapes the empty matrix of a job without texts.
        """
        if self.n == 0:
            return np.empty((0, dimension or 0), dtype=np.float32)
        done = self.done
        try:
            if isinstance(done, Cohort):
                # inlined (no coroutine of its own: one tracked object less per waiter)
                if self.finished:
                    await anyio.lowlevel.checkpoint()  # as a set event's wait() would be
                while not self.finished:
                    await done.event_for().wait()
            else:
                await done.wait()
        except BaseException:
            self.finished = True  # cancelled: skip what is queued, drop what arrives
            raise
        if self.error is not None:
            raise copy_error(self.error) from self.error.__cause__  # keep the httpx cause
        assert self.out is not None
        if self.spans is not None and self.weights is not None:
            return combine(self.out, self.spans, self.weights)
        return self.out

    @property
    def rows(self) -> int:
        """Rows the caller gets (fewer than texts sent when inputs were chunked)."""
        return len(self.spans) if self.spans is not None else self.n


#: more callers of one text already in a batch: (job, row) pairs (a dedup join; rare)
Waiters = list[tuple[Job, int]]


class Batch:
    """Texts on their way to the server: `jobs[k]` gets the vector of `texts[k]` as its row
    `rows[k]`, and so does every caller in `more[k]` (the same text asked again while it was
    in flight).

    Parallel lists rather than a (job, row) pair per text: a batch is in flight for a whole
    service time, long enough for an object per text to outlive the collector's young passes
    and count towards its full ones.
    """

    __slots__ = (
        "_index",
        "counts",
        "generation",
        "jobs",
        "more",
        "probing",
        "rows",
        "texts",
        "tokens",
    )

    def __init__(
        self,
        texts: list[str],
        jobs: list[Job],
        rows: list[int],
        counts: list[int] | None = None,
    ) -> None:
        self.texts = texts
        self.jobs = jobs
        self.rows = rows
        self.more: dict[int, Waiters] | None = None  # position -> the callers who joined
        self._index: dict[str, int] | None = None  # text -> position, built at the first join
        self.counts = counts  # each text's tokens, when the scheduler counts them
        self.tokens = sum(counts) if counts is not None else 0
        self.generation = 0  # the TokenBook's limits it was formed under
        self.probing = False  # bigger than any batch accepted yet, and not answered yet

    def join(self, text: str, job: Job, row: int) -> None:
        """One more caller of `text`, which this batch already holds (once)."""
        index = self._index
        if index is None:
            index = self._index = {}
        texts = self.texts
        if len(index) < len(texts):  # texts only grow (while the batch is formed): catch up
            for k in range(len(index), len(texts)):
                index[texts[k]] = k
        position = index[text]
        more = self.more
        if more is None:
            more = self.more = {}
        joined = more.get(position)
        if joined is None:
            more[position] = [(job, row)]
        else:
            joined.append((job, row))

    def waiters_at(self, position: int) -> Waiters:
        """Every (job, row) that gets the vector of `texts[position]`."""
        first = [(self.jobs[position], self.rows[position])]
        more = self.more.get(position) if self.more is not None else None
        return first + more if more else first

    def callers(self) -> Iterator[Job]:
        """Every job waiting on this batch (a job once per text it has here)."""
        yield from self.jobs
        if self.more is not None:
            for joined in self.more.values():
                for job, _ in joined:
                    yield job

    def part(self, start: int, stop: int, counts: list[int] | None = None) -> Batch:
        """Texts `start` to `stop` (excluded), with their callers: for splits and bisection.
        `counts`: the part's token counts, if recounted (else sliced from this batch's)."""
        if counts is None and self.counts is not None:
            counts = self.counts[start:stop]
        part = Batch(self.texts[start:stop], self.jobs[start:stop], self.rows[start:stop], counts)
        if self.more is not None:
            more = {k - start: ws for k, ws in self.more.items() if start <= k < stop}
            part.more = more or None
        part.generation = self.generation
        return part

    def abandoned(self) -> bool:
        """True when every caller waiting on this batch has gone (cancelled or failed)."""
        return all(job.finished for job in self.callers())


class Slot:
    """A batch's hold on one concurrency slot; released while the batch backs off."""

    __slots__ = ("_concurrency", "held")

    def __init__(self, concurrency: AdaptiveConcurrency) -> None:
        self._concurrency = concurrency
        self.held = True  # the dispatcher acquired it before forming the batch

    async def acquire(self) -> None:
        """Take a slot again (after backing off), unless this batch still holds one."""
        if not self.held:
            await self._concurrency.acquire()
            self.held = True

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        if self.held:
            self.held = False
            self._concurrency.release()


class Abandoned(Exception):
    """Internal: stop retrying a batch nobody waits for any more."""


class Ticket:
    """A caller's hold on texts queued with `Scheduler.enqueue`.

    `await ticket.result()` gives their matrix (rows in the order queued) or raises their
    error; `ticket.discard()` gives up on them (queued texts are skipped, rows dropped).
    """

    __slots__ = ("_job", "_scheduler")

    def __init__(self, scheduler: Scheduler, job: Job) -> None:
        self._scheduler = scheduler
        self._job = job

    def __len__(self) -> int:
        return self._job.rows

    async def result(self) -> Matrix:
        """Wait for the matrix. Cancelling the wait discards the ticket.

        Like `Scheduler.submit`, when a full batch is queued and a slot is free, this task
        sends it itself (no hop through the dispatcher's task) before waiting.
        """
        scheduler = self._scheduler
        if not self._job.finished and scheduler.eager_ready():
            await scheduler.send_eagerly()
        return await self._job.result(scheduler.dimension)

    def discard(self) -> None:
        """Give up on these texts (idempotent)."""
        self._job.finished = True


def one_block(jobs: list[Job], rows: list[int]) -> bool:
    """Whether every text goes to one job, on consecutive rows (`embed_many`'s batches)."""
    job = jobs[0]
    row = rows[0]
    for other, other_row in zip(jobs, rows, strict=True):
        if other is not job or other_row != row:
            return False
        row += 1
    return True


def copy_error(error: BaseException) -> BaseException:
    """A per-caller copy, so tracebacks of callers sharing one failure do not pile up."""
    try:
        return copy.copy(error)
    except Exception:  # an exotic exception that cannot be copied: share it
        return error
