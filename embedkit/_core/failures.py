"""When a batch fails: split it, bisect it, or hand its callers the error.

* A batch the server refused for its size (`BatchTooLargeError`) is split into parts the
  server accepts, and `max_batch_size` is lowered for the batches after it.
* A batch refused for one bad input (`InputError`) is bisected until only the bad text
  fails: its neighbours still get their rows.
* A batch nobody waits for any more stops retrying (`Abandoned`).
* Any other error goes to every caller still waiting on the batch; a bug in a backend (an
  exception that is not an `EmbedkitError`) is wrapped, so its callers fail instead of hanging.

`Failures` is a mixin of `Scheduler`: it reads the scheduler's books (in-flight texts,
counters) and sends the parts through the scheduler's `_attempts`.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from typing import TYPE_CHECKING

from .._config import Matrix
from .._errors import (
    BatchTooLargeError,
    ClientClosedError,
    EmbedkitError,
    InputError,
    ModelLoadingError,
    RateLimitError,
    StatusError,
    TokenLimitError,
)
from .flow import AdaptiveConcurrency
from .jobs import Abandoned, Batch, Slot
from .quota import Quota
from .retry import describe
from .tokens import TokenBook

__all__ = ["Failures"]

logger = logging.getLogger("embedkit")


class Failures:
    """The scheduler's failure handling (a mixin: the state is `Scheduler`'s)."""

    max_batch_size: int
    concurrency: AdaptiveConcurrency
    quota: Quota
    _inflight: dict[str, Batch]
    _running: set[Batch]
    _retries: Counter[str]
    _splits: int
    _bisections: int
    _failed_texts: int
    _abandoned: int
    tokens: TokenBook | None
    _paused_by: StatusError | None

    if TYPE_CHECKING:

        async def _attempts(self, batch: Batch, slot: Slot, paced: bool = True) -> Matrix: ...

        def _deliver(self, batch: Batch, matrix: Matrix) -> None: ...

        def _fail_outlasted(self, exc: StatusError, delay: float) -> None: ...

    async def _resolve(self, batch: Batch, slot: Slot) -> None:
        """Send a batch and hand out its rows, splitting it when the server asks.

        A part is paced like a retry: it was not paced when the dispatcher formed it (the
        parts of a batch refused for its tokens must not leave as one burst).
        """
        try:
            matrix = await self._attempts(batch, slot, paced=False)
        except Exception as exc:
            await self._recover(batch, slot, exc)
            return
        self._deliver(batch, matrix)

    async def _recover(self, batch: Batch, slot: Slot, error: Exception) -> None:
        """A batch failed: split it, bisect it, or hand its callers the error."""
        n = len(batch.texts)
        book = self.tokens
        if isinstance(error, TokenLimitError) and book is not None:
            # the server named its cap (and its count): budgets for every batch after this
            book.on_limit(error, batch.tokens if error.scope == "request" or n == 1 else None)
            if error.status_code and error.scope == "request" and self.quota.idle():
                # a server that caps tokens and has stated no quota: the batches after this
                # one leave one at a time for a while (`AdaptiveConcurrency.slow_start`)
                self.concurrency.slow_start()
            if error.scope == "request" and n > 1:
                self._splits += 1
                logger.warning(
                    "server refused a batch of %d tokens (%s); token budget now %s",
                    error.requested or batch.tokens,
                    error.message,
                    book.budget,
                )
                if self.concurrency.starting:
                    slot.release()  # its parts wait for a slot under the slow start's limit
                for part in self._token_parts(batch, book):
                    await self._resolve(part, slot)
                return
        if isinstance(error, Abandoned):
            self._abandoned += 1
            self._fail(batch, ClientClosedError("every caller of this batch has gone"))
        elif isinstance(error, BatchTooLargeError) and n > 1:
            cap = error.max_batch_size
            allowed = max(1, cap if cap and cap < n else n // 2)
            if allowed < self.max_batch_size:
                logger.warning(
                    "server refused a batch of %d; lowering max_batch_size from %d to %d",
                    n,
                    self.max_batch_size,
                    allowed,
                )
                self.max_batch_size = allowed
            self._splits += 1
            for start in range(0, n, allowed):
                await self._resolve(self._part(batch, start, min(n, start + allowed)), slot)
        elif isinstance(error, InputError) and n > 1:
            self._bisections += 1
            middle = n // 2
            await self._resolve(self._part(batch, 0, middle), slot)
            await self._resolve(self._part(batch, middle, n), slot)
        elif isinstance(error, EmbedkitError):
            self._fail(batch, error)
        else:  # a backend bug must not hang its callers
            self._fail(batch, EmbedkitError(f"the backend failed: {error!r}"))

    def _token_parts(self, batch: Batch, book: TokenBook) -> list[Batch]:
        """`batch` cut into parts within the (lowered) token budget; always at least two."""
        n = len(batch.texts)
        counts = [book.count(text) for text in batch.texts]  # at the corrected ratio
        budget = book.budget or max(1, sum(counts) // 2)
        cuts = [0]
        total = 0
        for k, count in enumerate(counts):
            if k > cuts[-1] and total + count > budget:
                cuts.append(k)
                total = 0
            total += count
        if len(cuts) == 1:  # the budget fits it by our count, not the server's: halve it
            cuts.append(n // 2)
        cuts.append(n)
        parts = [self._part(batch, a, b, counts[a:b]) for a, b in itertools.pairwise(cuts)]
        for part in parts:
            part.generation = book.generation
        return parts

    async def _settle(self, batch: Batch, slot: Slot, error: Exception) -> None:
        """Recover a batch whose caller-driven send failed, in the dispatcher's task group."""
        try:
            await self._recover(batch, slot, error)
        finally:
            self._running.discard(batch)
            slot.release()

    def _fail(self, batch: Batch, error: BaseException) -> None:
        """Hand `error` to every caller still waiting on `batch`; its texts leave the books."""
        inflight = self._inflight
        alive = {id(job) for job in batch.callers() if not job.finished}
        for position, text in enumerate(batch.texts):
            for job, _row in batch.waiters_at(position):
                if id(job) in alive:
                    self._failed_texts += 1
                    job.fail(error)
            if inflight.get(text) is batch:
                del inflight[text]

    def _part(self, batch: Batch, start: int, stop: int, counts: list[int] | None = None) -> Batch:
        """`batch.part(...)`, with its texts' dedup entries moved to the part (a caller who
        asks for one of them from now on joins the part, which is what gets sent)."""
        part = batch.part(start, stop, counts)
        inflight = self._inflight
        for text in part.texts:
            if inflight.get(text) is batch:
                inflight[text] = part
        return part

    def _on_retry(self, exc: BaseException, delay: float) -> None:
        """Before a retry's wait: count it, and pause everyone after a 429."""
        cause = describe(exc)
        self._retries[cause] += 1
        if isinstance(exc, RateLimitError):
            self.quota.pause(delay)
            self._paused_by = exc
            logger.warning("rate limited (%s); pausing all requests for %.2f s", cause, delay)
            self._fail_outlasted(exc, delay)  # queued calls whose deadline comes first
        elif isinstance(exc, ModelLoadingError):
            # One request probes (held by the server with x-wait-for-model) while the rest
            # wait for a slot, instead of every batch polling a cold model. No client-wide
            # cooldown: the probe itself is what tells us the model is ready.
            self.concurrency.probe()
            logger.info("model is loading; waiting %.1f s, then probing with one request", delay)
        else:
            logger.info("request failed (%s); retrying in %.2f s", cause, delay)
