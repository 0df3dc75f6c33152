"""`CachingScheduler`: the persistent cache in front of the scheduler's queue.

A text found in the store never enters the queue: it costs no request, no quota permit and
no slot, and only the misses are coalesced and sent. This is a layer above the scheduler's
two doors, `submit` (one caller's texts, awaited) and `enqueue` (a streaming block, a
`Ticket`): each looks the texts up first, sends the misses through the scheduler, merges
hits and answers in input order, and queues the answers for the store. Every entry point
(`embed`, `embed_many`, `embed_stream`, `encode`, `embed_file`, the Ray worker) reaches the
scheduler through these two doors, so all of them use the cache without knowing it.

`enqueue` must not wait (a stream keeps several blocks queued), so its lookup runs in a task
of the scheduler's task group, and the ticket it returns fills as the hits and answers land.
A stored vector of the wrong length (another model's, a damaged entry) is a miss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import anyio
import numpy as np

from .._config import Matrix
from .._core import Job, Scheduler, SchedulerStats, Ticket
from .._errors import ClientClosedError
from .key import KeyMaker
from .store import EmbeddingCache, Guard, decode, encode

__all__ = ["CachingScheduler"]

#: Seconds `aclose` waits for queued writes to reach the store.
FLUSH_SECONDS = 5.0


class _CachedTicket(Ticket):
    """A ticket whose texts are looked up first; discarding it stops the lookup's task."""

    __slots__ = ("_scope",)

    def __init__(self, scheduler: Scheduler, job: Job, scope: anyio.CancelScope) -> None:
        super().__init__(scheduler, job)
        self._scope = scope

    def discard(self) -> None:
        """Give up on these texts (idempotent)."""
        super().discard()
        self._scope.cancel()


class CachingScheduler(Scheduler):
    """A `Scheduler` that answers what it can from an `EmbeddingCache` before queueing."""

    def __init__(self, send: Any, *, store: EmbeddingCache, keys: KeyMaker, **kw: Any) -> None:
        super().__init__(send, **kw)
        self.guard = Guard(store)
        self.keys = keys

    # ------------------------------------------------------------------ lookups

    async def _look_up(self, texts: Sequence[str]) -> tuple[list[str], list[Matrix | None]]:
        """The keys of `texts` and each one's stored vector (None: a miss)."""
        keys = self.keys.keys(texts)
        values = await self.guard.get(keys)
        if values is None:
            self.guard.misses += len(texts)
            return keys, [None] * len(texts)
        want = self.dimension
        rows: list[Matrix | None] = []
        for value in values:
            row = decode(value) if value is not None else None
            if row is not None and want is not None and row.shape[0] != want:
                row = None
            rows.append(row)
        if want is None:  # no answer yet to check against: the hits must agree
            sizes = {row.shape[0] for row in rows if row is not None}
            if len(sizes) > 1:
                rows = [None] * len(texts)
        hits = sum(row is not None for row in rows)
        self.guard.hits += hits
        self.guard.misses += len(texts) - hits
        self._texts += hits  # the scheduler counts the misses as they are queued
        return keys, rows

    def _remember(self, keys: list[str], miss: list[int], matrix: Matrix) -> None:
        self.guard.put([(keys[i], encode(matrix[k])) for k, i in enumerate(miss)], self._tg)

    # -------------------------------------------------------------------- doors

    async def submit(self, texts: Sequence[str], **how: Any) -> Matrix:
        """Embed `texts`: stored vectors from the cache, the rest through the shared batches.

        `how` (a priority, a deadline) goes to the scheduler's `submit` with the misses.
        """
        keys, rows = await self._look_up(texts)
        miss = [i for i, row in enumerate(rows) if row is None]
        if not miss:
            out = np.stack(rows)  # type: ignore[arg-type]
            if self.dimension is None:
                self.dimension = int(out.shape[1])
            return out
        if len(miss) == len(texts):
            matrix = await super().submit(texts, **how)
            self._remember(keys, miss, matrix)
            return matrix
        answers = await super().submit([texts[i] for i in miss], **how)
        self._remember(keys, miss, answers)
        out = np.empty((len(texts), answers.shape[1]), dtype=np.float32)
        out[miss] = answers
        stale = []
        for i, row in enumerate(rows):
            if row is None:
                continue
            if row.shape[0] != answers.shape[1]:
                stale.append(i)  # stored before the server changed its model
            else:
                out[i] = row
        if stale:
            fresh = await super().submit([texts[i] for i in stale], **how)
            out[stale] = fresh
            self._remember(keys, stale, fresh)
        return out

    def enqueue(self, texts: list[str], **how: Any) -> Ticket:
        """Queue `texts` without waiting: the lookup runs in a task, then the misses queue.

        `how` (a priority) goes to the scheduler's `enqueue` with the misses.
        """
        tg = self._tg
        if self._closed or tg is None:
            raise ClientClosedError("the embedder is closed")
        job = Job(texts, self._new_event())
        scope = anyio.CancelScope()
        tg.start_soon(self._fill, job, texts, scope, how)
        return _CachedTicket(self, job, scope)

    async def _fill(
        self, job: Job, texts: list[str], scope: anyio.CancelScope, how: dict[str, Any]
    ) -> None:
        inner: Ticket | None = None
        try:
            with scope:
                if not texts:
                    return
                keys, rows = await self._look_up(texts)
                miss = [i for i, row in enumerate(rows) if row is None]
                if miss:
                    inner = super().enqueue([texts[i] for i in miss], **how)
                    answers = await inner.result()
                    self._remember(keys, miss, answers)
                    if len(miss) == len(texts):
                        job.deliver_rows(0, answers)
                        return
                    for k, i in enumerate(miss):
                        job.deliver(i, answers[k])
                    want = answers.shape[1]
                    stale = [
                        i for i, row in enumerate(rows) if row is not None and row.shape[0] != want
                    ]
                    if stale:  # stored before the server changed its model
                        for i in stale:
                            rows[i] = None
                        inner = super().enqueue([texts[i] for i in stale], **how)
                        fresh = await inner.result()
                        self._remember(keys, stale, fresh)
                        for k, i in enumerate(stale):
                            job.deliver(i, fresh[k])
                for i, row in enumerate(rows):
                    if row is not None and not job.finished:
                        job.deliver(i, row)
        except Exception as exc:
            job.fail(exc)
        finally:
            if inner is not None and not job.finished:
                inner.discard()
            job.fail(ClientClosedError("the embedder was closed before this text was embedded"))

    # ------------------------------------------------------------------- the rest

    async def flush(self) -> None:
        """Write the queued vectors to the store (at most `FLUSH_SECONDS`)."""
        await self.guard.flush(FLUSH_SECONDS)

    def stats(self) -> SchedulerStats:
        """The scheduler's counters, with the store's hits, misses and errors."""
        guard = self.guard
        return dataclasses.replace(
            super().stats(),
            store_hits=guard.hits,
            store_misses=guard.misses,
            store_errors=guard.errors,
        )
