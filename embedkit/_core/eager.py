"""The caller-driven send: a full batch leaves from the task of the caller that completed it.

When a caller's texts bring the queue to a full batch and a concurrency slot is free, that
caller's task forms the batch and sends it itself, instead of waking the dispatcher and
waiting for its turn in the event loop: on a burst of thousands of `embed()` calls, all made
in one pass of the loop, the first batches are on the wire during that pass (with the pool's
connections already open, `Connection(warm=True)`). `Scheduler.submit` does it for single
calls and `Ticket.result` for streams. If the caller is cancelled, or the batch fails in a
way the dispatcher recovers from (split, bisect), the batch is handed to the dispatcher's task
group; its other callers never notice whose task sent it. `EagerSend` is a mixin of
`Scheduler` (the state is the scheduler's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from .._config import Matrix
from .._errors import ClientClosedError
from .flow import AdaptiveConcurrency
from .jobs import Batch, Slot
from .quota import Quota
from .tokens import TokenBook

__all__ = ["EagerSend"]


class EagerSend:
    """Send a full batch from a caller's task (a mixin)."""

    max_batch_size: int
    concurrency: AdaptiveConcurrency
    quota: Quota
    tokens: TokenBook | None
    _queued: int
    _probes: int
    _tg: TaskGroup | None
    _running: set[Batch]
    _drivers: set[anyio.CancelScope]

    if TYPE_CHECKING:

        def _form_batch(self) -> Batch | None: ...

        def _mark_probe(self, batch: Batch) -> None: ...

        def _end_probe(self, batch: Batch) -> None: ...

        async def _attempts(self, batch: Batch, slot: Slot, paced: bool = True) -> Matrix: ...

        def _follow_on(self, slot: Slot) -> Batch | None: ...

        async def _run_batch(self, batch: Batch, held: bool = True) -> None: ...

        async def _settle(self, batch: Batch, slot: Slot, error: Exception) -> None: ...

        def _fail(self, batch: Batch, error: BaseException) -> None: ...

        def _deliver(self, batch: Batch, matrix: Matrix) -> None: ...

    def eager_ready(self) -> bool:
        """Whether a full batch waits in the queue and a slot looks free: worth trying
        `send_eagerly` from the caller's task (it checks the rest)."""
        concurrency = self.concurrency
        return self._queued >= self.max_batch_size and concurrency.in_flight < concurrency.limit

    async def send_eagerly(self) -> None:
        """Send a full batch from the caller's task, if a slot is free and nothing paces us.

        It saves the hop through the dispatcher's task (a loop pass) on a burst's first
        batches; the batch's other callers get their rows as from any batch."""
        tg = self._tg
        if (
            tg is None
            or not self.quota.idle()
            or self._probes
            or not self.concurrency.try_acquire()
        ):
            return
        batch = self._form_batch()
        if batch is None:
            self.concurrency.release()
            return
        if self.tokens is not None:
            self._mark_probe(batch)
        self._running.add(batch)
        slot = Slot(self.concurrency)
        scope = anyio.CancelScope()  # close() cancels it: the request runs in a caller's task
        self._drivers.add(scope)
        try:
            with scope:
                matrix = await self._attempts(batch, slot)
        except anyio.get_cancelled_exc_class():
            # This caller is going; the batch's other callers are not: the dispatcher's
            # task group sends it again (the interrupted request is lost, not the texts).
            slot.release()
            self._hand_over(tg, batch, slot, None)
            raise
        except Exception as exc:  # retries ran out, a split, a bad input: resolve it there
            self._hand_over(tg, batch, slot, exc)
            return
        finally:
            self._drivers.discard(scope)
            if batch.probing:
                self._end_probe(batch)
        self._running.discard(batch)
        if scope.cancelled_caught:  # closed, and close() failed the batch
            slot.release()
            return
        follow = self._follow_on(slot)
        if follow is not None:  # the slot goes on with it, in a task started before the rows
            try:
                tg.start_soon(self._run_batch, follow)
                slot.held = False  # the new task holds it now
            except RuntimeError:  # the task group has stopped: the scheduler is closing
                self._running.discard(follow)
                self._fail(follow, ClientClosedError("the embedder was closed"))
        slot.release()
        self._deliver(batch, matrix)

    def _hand_over(self, tg: TaskGroup, batch: Batch, slot: Slot, error: Exception | None) -> None:
        """Finish a caller-driven batch in the dispatcher's task group (or fail it: closing).

        With no `error` the send was interrupted and the batch is sent again (its slot was
        given back); with one, the batch is recovered (split, bisected or failed) there.
        """
        try:
            if error is None:
                tg.start_soon(self._run_batch, batch, False)
            else:
                tg.start_soon(self._settle, batch, slot, error)
        except RuntimeError:  # the task group has stopped: the scheduler is closing
            self._running.discard(batch)
            slot.release()
            self._fail(batch, ClientClosedError("the embedder was closed"))
