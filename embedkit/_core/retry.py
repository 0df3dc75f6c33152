"""The retry policy: what is worth retrying and how long to wait, over tenacity.

* Retried: transport faults (connect errors, timeouts, a connection cut mid-body), 408, 424,
  429, 5xx, and 503 "model is loading".
* Not retried: 400, 401, 403, 404, 422 and malformed answers. A batch refused for its size is
  not retried as is either: the scheduler splits it and sends the halves.
* How long: what the server said (`Retry-After`, `retry-after-ms`, `estimated_time`), capped;
  otherwise exponential backoff with "equal jitter" (half fixed, half random).
* When to stop: after `attempts` failed tries of transient faults, or `timeout` seconds for one
  batch; a loading model gets its own, longer budget (`loading_timeout`), since cold models
  can take minutes.
* A wait that cannot fit is not waited: when the delay (what the server asked for, or the
  backoff) is longer than what is left of the budget — the policy's own, or the deadline of
  the callers still waiting (`budget=`) — the error is raised at once, with its
  `retry_after`. Sleeping first would only raise the same error later.
* One attempt may be bounded on its own (`attempt_timeout`): only the time on the wire
  counts, never the time a text spent queued in the client.

Waiting can be switched off for tests with `sleep=` (any async callable taking seconds), no
monkeypatching needed.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import tenacity

from .._config import check_seconds
from .._errors import ModelLoadingError, RateLimitError, ServerError, StatusError, TransportError
from .flow import Sleep

__all__ = ["DEFAULT_RETRY", "RetryPolicy"]

logger = logging.getLogger("embedkit")
T = TypeVar("T")


class RetryPolicy:
    """How embedkit retries a failed batch.

    Args:
        attempts: tries in all for transient faults (5xx, timeouts, 429); 1 disables retries.
        timeout: seconds one batch may spend in retries before its last error is raised.
        backoff: the first exponential wait, in seconds; it doubles each try.
        max_backoff: the cap on one exponential wait.
        max_retry_after: the cap on a wait the server asked for (Retry-After).
        loading_timeout: seconds to keep waiting for a model that answers 503 "loading".
        max_loading_wait: the cap on one wait for a loading model (its `estimated_time` is
            often stale; after the first 503 the client asks the server to hold the request).
        sleep: the async sleep used for waits; tests pass one that records instead of waiting.
        attempt_timeout: seconds one attempt (one request, sent) may take before it counts as
            a transient failure and is retried; None: only the HTTP timeouts bound it.
    """

    def __init__(
        self,
        *,
        attempts: int = 8,
        timeout: float = 600.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 300.0,
        loading_timeout: float = 900.0,
        max_loading_wait: float = 30.0,
        sleep: Sleep | None = None,
        attempt_timeout: float | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        check_seconds("attempt_timeout", attempt_timeout)
        self.attempt_timeout = attempt_timeout
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.loading_timeout = loading_timeout
        self.max_loading_wait = max_loading_wait
        self.sleep: Sleep = sleep if sleep is not None else anyio.sleep
        self._random = random.Random()

    def _key(self) -> tuple[object, ...]:
        return (
            self.attempts,
            self.timeout,
            self.backoff,
            self.max_backoff,
            self.max_retry_after,
            self.loading_timeout,
            self.max_loading_wait,
            self.attempt_timeout,
            self.sleep,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryPolicy) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key()[:-1])

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(attempts={self.attempts}, timeout={self.timeout}, "
            f"backoff={self.backoff}, max_backoff={self.max_backoff}, "
            f"loading_timeout={self.loading_timeout}"
            + (f", attempt_timeout={self.attempt_timeout}" if self.attempt_timeout else "")
            + ")"
        )

    @staticmethod
    def is_retryable(exc: BaseException) -> bool:
        """Whether an error is worth another try."""
        return isinstance(exc, (TransportError, RateLimitError, ModelLoadingError, ServerError))

    def exponential(self, failures: int) -> float:
        """The jittered exponential wait after the `failures`-th transient failure."""
        base = min(self.max_backoff, self.backoff * (2.0 ** max(0, failures - 1)))
        return base / 2.0 + self._random.uniform(0.0, base / 2.0)

    def delay_for(self, exc: BaseException, failures: int) -> float:
        """How long to wait before retrying after `exc`."""
        if isinstance(exc, ModelLoadingError):
            asked = exc.retry_after if exc.retry_after is not None else self.exponential(failures)
            wait = min(max(asked, self.backoff), self.max_loading_wait)  # 0 must not spin
            return wait * self._random.uniform(0.9, 1.1)
        if isinstance(exc, StatusError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        return self.exponential(failures)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        on_retry: Callable[[BaseException, float], None] | None = None,
        budget: Callable[[], float] | None = None,
        on_give_up: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """Run `attempt` until it succeeds or the policy gives up (re-raising the last error).

        `on_retry(error, delay)` runs before each wait: the scheduler uses it to count
        retries and to pause the whole client after a 429. `budget()` is the seconds left
        to the callers (their deadlines); a delay longer than that, or than what is left of
        this policy's timeout, raises the error at once, after `on_give_up(error, delay)`.
        """
        try:
            return await attempt()  # the common case, without tenacity's ~30 µs of set-up
        except BaseException as exc:
            if not self.is_retryable(exc):
                raise
            first: BaseException | None = exc

        async def replay() -> T:
            # tenacity sees the failure that already happened as its first attempt
            nonlocal first
            if first is not None:
                failure, first = first, None
                raise failure
            return await attempt()

        state = _CallState()

        def account(retry_state: tenacity.RetryCallState) -> BaseException:
            """Count each failed attempt once, whichever of stop/wait tenacity calls first."""
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            assert exc is not None
            if state.counted < retry_state.attempt_number:
                state.counted = retry_state.attempt_number
                if isinstance(exc, ModelLoadingError):
                    state.loading_waited = retry_state.idle_for
                else:
                    state.failures += 1
            return exc

        def stop(retry_state: tenacity.RetryCallState) -> bool:
            exc = account(retry_state)
            spent = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
            if isinstance(exc, ModelLoadingError):
                return spent >= self.loading_timeout
            return state.failures >= self.attempts or spent >= self.timeout

        def wait(retry_state: tenacity.RetryCallState) -> float:
            exc = account(retry_state)
            delay = self.delay_for(exc, max(1, state.failures))
            spent = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
            limit = self.loading_timeout if isinstance(exc, ModelLoadingError) else self.timeout
            left = limit - spent
            if budget is not None:
                left = min(left, budget())
            if delay > left:
                if on_give_up is not None:
                    on_give_up(exc, delay)
                raise _GiveUp(exc)
            if on_retry is not None:
                on_retry(exc, delay)
            if isinstance(exc, RateLimitError):
                return 0.0  # the shared cooldown (set by on_retry) does the waiting for everyone
            return delay

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self.is_retryable),
            stop=stop,
            wait=wait,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            try:
                return await retrying(replay)
            except _GiveUp as give_up:
                raise give_up.error from give_up.error.__cause__
        except ModelLoadingError as exc:
            if state.loading_waited <= 0:
                raise
            error = copy.copy(exc)
            error.message = (
                f"{exc.message} (gave up after waiting {state.loading_waited:.0f} s "
                "for the model to load; raise RetryPolicy(loading_timeout=...) to wait longer)"
            )
            error.args = (f"{exc.status_code}: {error.message}",)
            raise error from exc


class _GiveUp(Exception):
    """Internal: the next wait would not fit in the budget; raise `error` now."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


class _CallState:
    __slots__ = ("counted", "failures", "loading_waited")

    def __init__(self) -> None:
        self.counted = 0
        self.failures = 0
        self.loading_waited = 0.0


DEFAULT_RETRY = RetryPolicy()


def describe(exc: BaseException) -> str:
    """A short cause label for statistics and logs."""
    if isinstance(exc, StatusError):
        return str(exc.status_code)
    return type(exc).__name__
