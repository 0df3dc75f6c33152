"""The dispatcher's hold: waiting while the `BatchPolicy` says a sub-full batch should not
leave yet, and the one alarm task that ends a hold when its time is up.

The policy (`policy.py`) only *decides* how long a batch may wait; this mixin makes the
dispatcher wait that long, woken early by an answer, an arrival that brings the queue to
what the policy would send at once (`BatchPolicy.enough`), or the alarm. `Holding` is a
mixin of `Scheduler` (the state is the scheduler's).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import anyio

from .jobs import Job
from .policy import BatchPolicy

__all__ = ["Holding"]


class Holding:
    """The hold and its alarm (a mixin: the state is `Scheduler`'s)."""

    policy: BatchPolicy
    max_batch_size: int
    _queue: deque[Job]
    _urgent: deque[Job]
    _queued: int
    _sending: int
    _wakeup: anyio.Event | None
    _wake_at: int
    _alarm_at: float | None
    _alarm_armed: anyio.Event | None
    _new_event: Callable[[], anyio.Event]

    async def _hold(self) -> None:
        """Wait while the batching policy says a sub-full batch should not leave yet."""
        policy = self.policy
        try:
            while self._queue or self._urgent:
                now = policy.clock()
                delay = policy.hold(
                    self._queued, self.max_batch_size, self._sending, now - self._head_at(), now
                )
                if delay is None:
                    return
                # Set by an answer, the alarm, or an arrival that brings the queue to what
                # the policy would send at once: arrivals short of that would be held again.
                self._wake_at = policy.enough(self.max_batch_size, self._sending, now)
                self._wakeup = wakeup = self._new_event()
                self._alarm_at = None if delay == math.inf else now + delay
                armed = self._alarm_armed
                if armed is not None and self._alarm_at is not None:
                    self._alarm_armed = None
                    armed.set()
                try:
                    await wakeup.wait()
                finally:
                    self._wakeup = None
                    self._wake_at = 1
        finally:
            self._alarm_at = None

    def _head_at(self) -> float:
        """When the oldest job at the head of a lane was queued."""
        urgent, bulk = self._urgent, self._queue
        if not urgent:
            return bulk[0].at
        if not bulk:
            return urgent[0].at
        return min(urgent[0].at, bulk[0].at)

    async def _alarm(self) -> None:
        """Wake the dispatcher when a hold's time is up (`_alarm_at`, on the policy's clock).

        One task for the scheduler's life, never cancelled mid-sleep: a hold that ends early
        only disarms it. (A task per hold, cancelled when the hold ended, left a cancelled
        task, its exception and traceback, as cyclic garbage for every arrival.) The time
        for one head of the queue only moves later, so sleeping towards the time set when
        the sleep began and reading it again on waking is never late.
        """
        policy = self.policy
        while True:
            at = self._alarm_at
            if at is None:
                self._alarm_armed = armed = self._new_event()
                await armed.wait()
                continue
            left = at - policy.clock()
            if left > 0:
                await policy.sleep(left)
                continue
            self._alarm_at = None
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()
