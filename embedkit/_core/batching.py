"""What goes into a batch, and where its rows go: where dedup and the LRU cache act.

Forming a batch walks the queue from its head. A text already in flight (or twice in the
batch) is not sent again: its caller is added to the *waiters* of the copy being sent
(`_inflight`, text -> the batch sending it, while dedup is on). A text in the LRU cache is
answered at once. When the answer comes back, row k goes to every waiter of text k, the text
leaves `_inflight`, and its vector enters the cache.

`Batching` is a mixin of `Scheduler` (the state is the scheduler's). Both methods run once
per batch and loop over its texts: this is the hot path, so they read attributes into
locals and handle the common case (one caller's consecutive rows) with a single copy.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque

from .._config import Matrix
from .jobs import Batch, Job, one_block
from .tokens import TokenBook

__all__ = ["Batching"]


class Batching:
    """Batch forming and row delivery, with dedup and the LRU cache (a mixin)."""

    max_batch_size: int
    max_batch_chars: int | None
    dimension: int | None
    _queue: deque[Job]
    _urgent: deque[Job]
    _queued: int
    _inflight: dict[str, Batch]
    _dedup: bool
    _cache: OrderedDict[str, Matrix] | None
    _cache_size: int
    _dedup_hits: int
    _cache_hits: int
    _batches: int
    _texts_sent: int
    tokens: TokenBook | None

    def _form_batch(self) -> Batch | None:
        """Take texts from the head of the queue into a new batch (None if none is left).

        Up to `max_batch_size` texts, `max_batch_chars` characters and, when tokens
        are counted, the token budget (a first text longer than that still goes, alone).
        A text already in flight, or earlier in this batch, joins that copy's waiters; a
        cached one is answered at once.
        """
        limit = self.max_batch_size
        budget = self.max_batch_chars if self.max_batch_chars is not None else -1
        texts: list[str] = []
        jobs: list[Job] = []
        rows: list[int] = []
        inflight = self._inflight if self._dedup else None
        cache = self._cache
        chars = 0
        taken = 0
        book = self.tokens
        counts: list[int] | None = None
        tokens = 0
        token_budget = -1
        exact = False
        ratio = 0.0
        ceil = math.ceil
        if book is not None:
            token_budget = book.budget if book.budget is not None else -1
            exact = book.exact
            ratio = book.ratio
            if exact or token_budget >= 0:
                counts = []  # each text counted as it joins: the budget may close the batch
        batch = Batch(texts, jobs, rows, counts)  # filled below: `_inflight` points at it
        # the interactive lane first: a query waits for the next free slot, not for the
        # bulk work queued before it; bulk texts fill the rest of the batch
        for queue in (self._urgent, self._queue) if self._urgent else (self._queue,):
            while queue and len(texts) < limit:
                job = queue[0]
                if job.finished:
                    taken += job.n - job.next
                    queue.popleft()
                    continue
                source = job.texts
                i = start = job.next
                end = job.n
                while i < end and len(texts) < limit:
                    text = source[i]
                    if inflight is not None:
                        joined = inflight.get(text)
                        if joined is not None:
                            joined.join(text, job, i)
                            self._dedup_hits += 1
                            i += 1
                            continue
                    if cache is not None:
                        hit = cache.get(text)
                        if hit is not None:
                            cache.move_to_end(text)
                            self._cache_hits += 1
                            job.deliver(i, hit)
                            i += 1
                            continue
                    if budget >= 0:
                        chars += len(text)
                        if chars > budget and texts:
                            break
                    if counts is not None:
                        assert book is not None
                        t = book.count(text) if exact else ceil(len(text) * ratio)
                        tokens += t
                        if 0 <= token_budget < tokens and texts:
                            break
                        counts.append(t)
                    if inflight is not None:
                        inflight[text] = batch
                    texts.append(text)
                    jobs.append(job)
                    rows.append(i)
                    i += 1
                job.next = i
                taken += i - start
                if i >= end:
                    queue.popleft()
                else:
                    break
            if len(texts) >= limit or (queue and not queue[0].finished):
                break  # full, or the character or token budget closed it
        self._queued -= taken
        if not texts:
            return None
        self._batches += 1
        self._texts_sent += len(texts)
        if book is not None:
            # each text's count, or (an estimate and no budget) one count for the whole batch
            batch.tokens = sum(counts) if counts is not None else ceil(sum(map(len, texts)) * ratio)
            book.sent += batch.tokens
            batch.generation = book.generation
        return batch

    def _deliver(self, batch: Batch, matrix: Matrix) -> None:
        """Hand row k of `matrix` to every waiter of text k; the texts leave the books."""
        if self.dimension is None:
            self.dimension = int(matrix.shape[1])
        inflight = self._inflight
        cache = self._cache
        jobs, rows, more = batch.jobs, batch.rows, batch.more
        delivered = False
        if more is None and one_block(jobs, rows):  # one job's consecutive rows: one copy
            jobs[0].deliver_rows(rows[0], matrix)
            if cache is None:
                for text in batch.texts:
                    if inflight.get(text) is batch:
                        del inflight[text]
                return
            delivered = True  # the loop below keeps the books
        for position, text in enumerate(batch.texts):
            vector = matrix[position]
            if not delivered:
                jobs[position].deliver(rows[position], vector)
                if more is not None:
                    for job, row in more.get(position, ()):
                        job.deliver(row, vector)
            if inflight.get(text) is batch:
                del inflight[text]
            if cache is not None:
                cache[text] = vector.copy()
                if len(cache) > self._cache_size:
                    cache.popitem(last=False)
