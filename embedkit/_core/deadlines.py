"""Deadlines: how long a call may take, how long its texts may stay queued, and what a
batch's retries may wait.

* A call's `deadline` (seconds, queueing + attempts + backoff) and the scheduler's
  `max_queue_wait` end the call with `DeadlineExceededError`; its queued texts are skipped
  and its rows still in flight dropped. Its batch-mates are not affected.
* The retry policy asks `_budget(batch)` how long the callers still waiting on a batch can
  wait: a delay the server asks for that is longer raises at once (`RetryPolicy.call`).
* A 429 pauses the client; queued calls whose deadline comes before the pause ends fail at
  once with that `RateLimitError` (its `retry_after` is what is left of the pause), and so
  does a call that arrives during the pause with a shorter deadline.

The clock is anyio's (`anyio.current_time()`, the event loop's), the one the cancel scopes
that enforce deadlines use, so a test's virtual clock (trio's `MockClock`) drives them all.
`Deadlines` is a mixin of `Scheduler` (the state is the scheduler's).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import anyio

from .._config import Matrix
from .._errors import DeadlineExceededError, RateLimitError, StatusError, TransportError
from .jobs import Batch, Cohort, Job, copy_error
from .quota import Quota

__all__ = ["Deadlines"]

logger = logging.getLogger("embedkit")


class Deadlines:
    """Call deadlines, the queue-wait limit and the retry budget (a mixin)."""

    dimension: int | None
    max_queue_wait: float | None
    quota: Quota
    _queue: deque[Job]
    _urgent: deque[Job]
    _paused_by: StatusError | None
    _deadlines: bool
    _send: Callable[[list[str]], Awaitable[Matrix]]

    if TYPE_CHECKING:

        def eager_ready(self) -> bool: ...

        async def send_eagerly(self) -> None: ...

    async def _result_within(self, job: Job, deadline: float | None) -> Matrix:
        """`job.result()`, failing the job when it outstays `max_queue_wait` in the queue or
        its caller's `deadline` (its queued texts are skipped, its rows in flight dropped)."""
        queue_wait = self.max_queue_wait
        try:
            with anyio.fail_after(deadline) if deadline is not None else nullcontext():
                if self.eager_ready():
                    await self.send_eagerly()  # as `submit` does, within the deadline
                if queue_wait is not None and job.n:
                    done = job.done
                    assert not isinstance(done, Cohort)  # a call with a deadline has its own
                    with anyio.move_on_after(queue_wait):
                        await done.wait()
                    if not job.finished and job.next < job.n:
                        job.fail(
                            DeadlineExceededError(
                                f"texts waited over max_queue_wait={queue_wait:g} s in the "
                                "client's queue without being sent"
                            )
                        )
                return await job.result(self.dimension)
        except DeadlineExceededError:
            raise
        except TimeoutError:
            raise DeadlineExceededError(
                f"the call's deadline of {deadline:g} s passed "
                f"({'texts still queued' if job.next < job.n else 'waiting for the server'})"
            ) from None
        finally:
            job.finished = True  # answered, failed or abandoned: skip and drop the rest

    def _refuse_if_paused(self, job: Job, deadline: float) -> None:
        """Fail a job at once when a 429 pause in force outlasts its deadline."""
        paused_for = getattr(self.quota, "paused_for", None)
        error = self._paused_by
        if paused_for is None or error is None:
            return
        left = paused_for()
        if left > deadline:
            job.fail(_pause_error(error, left))

    def _on_give_up(self, exc: BaseException, delay: float) -> None:
        """A batch gave up: the wait the server asked for does not fit its callers' budget.

        A 429's pause still holds for everyone (the server asked for it), and queued calls
        whose deadline it would outlast fail now with the same error.
        """
        if not isinstance(exc, RateLimitError):
            return
        self.quota.pause(delay)
        self._paused_by = exc
        logger.warning(
            "rate limited (%s) for %.2f s, beyond the callers' deadline; raised at once",
            exc.status_code,
            delay,
        )
        self._fail_outlasted(exc, delay)

    def _fail_outlasted(self, exc: StatusError, delay: float) -> None:
        """Fail the queued jobs whose deadline comes before a pause of `delay` ends."""
        if not self._deadlines:
            return  # no call ever gave a deadline: nothing to sweep (a 429 may come often)
        by = anyio.current_time() + delay
        for queue in (self._urgent, self._queue):
            for job in queue:
                if job.deadline < by and not job.finished:
                    job.fail(_pause_error(exc, delay))

    async def _send_within(self, texts: list[str], limit: float) -> Matrix:
        """One attempt bounded by `RetryPolicy.attempt_timeout`: a retryable `TransportError`
        when the answer takes longer (only time on the wire counts, never queueing)."""
        with anyio.move_on_after(limit):
            return await self._send(texts)
        raise TransportError(f"no answer within attempt_timeout={limit:g} s (RetryPolicy)")

    def _budget(self, batch: Batch) -> float:
        """Seconds until the last deadline of the callers still waiting on `batch`."""
        latest = -math.inf
        for job in batch.callers():
            if not job.finished and job.deadline > latest:
                latest = job.deadline
        return latest - anyio.current_time() if latest != math.inf else math.inf


def _pause_error(error: StatusError, left: float) -> BaseException:
    """The 429 behind a pause, for a caller whose deadline the pause outlasts."""
    copied = copy_error(error)
    if isinstance(copied, StatusError):
        copied.retry_after = max(copied.retry_after or 0.0, left)
    return copied
