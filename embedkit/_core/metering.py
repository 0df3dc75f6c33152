"""The scheduler's side of tokens: probes, what answers report, and the token figures.

* A *probe* is a batch bigger (in tokens) than any a server has accepted yet. While one is
  out, no other batch bigger than what is proven leaves (`_await_probe`): if the server's
  cap is smaller than the budget, one request is refused, not one per slot.
* `on_answer` is the callback the HTTP backend reports every answer to (see
  `embedkit._usage`): it teaches the `TokenBook` the tokens a character costs, counts them
  per endpoint, and hands the answer to the quota (header pacing, usage corrections).
* `count_exact` asks the server (TEI `/tokenize`, `count_tokens="server"`) for the exact
  counts of the texts whose estimate comes near the input cap, before they are queued.
* `_token_stats` adds the token figures to `SchedulerStats`.

`Metering` is a mixin of `Scheduler` (the state is the scheduler's).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import EmbedkitError
from .._usage import Answer
from .flow import AdaptiveConcurrency
from .jobs import Batch
from .quota import Quota
from .tokens import TokenBook

__all__ = ["TOKENIZE_BATCH", "Metering"]

logger = logging.getLogger("embedkit")

#: Texts a `/tokenize` request carries at most (TEI's default `max_client_batch_size` is 32).
TOKENIZE_BATCH = 32


class Metering:
    """Probes, answers and token figures (a mixin: the state is `Scheduler`'s)."""

    tokens: TokenBook | None
    quota: Quota
    concurrency: AdaptiveConcurrency
    #: probes out now: batches bigger (in tokens) than any accepted yet. Until one is
    #: answered (or a 400 names the server's cap), more batches of that size might all be
    #: refused together, so only batches within what is proven go meanwhile (the scheduler
    #: reads it directly on its hot path: 0 whenever token awareness is off)
    _probes: int
    _tokens_by_endpoint: Counter[str]
    _wakeup: anyio.Event | None
    _new_event: Callable[[], anyio.Event]

    if TYPE_CHECKING:

        def _wake(self) -> None: ...

    def _mark_probe(self, batch: Batch) -> None:
        """Count `batch` as a probe until its first answer, if it is one."""
        book = self.tokens
        if book is not None and book.probe(batch.tokens):
            batch.probing = True
            self._probes += 1

    def _end_probe(self, batch: Batch) -> None:
        if batch.probing:
            batch.probing = False
            self._probes -= 1
            self._wake()

    async def _await_probe(self, batch: Batch) -> None:
        """Hold a batch bigger than what is proven while a probe is out."""
        book = self.tokens
        while book is not None and self._probes > 0 and book.probe(batch.tokens):
            self._wakeup = wakeup = self._new_event()
            try:
                await wakeup.wait()
            finally:
                self._wakeup = None

    async def count_exact(self, texts: Sequence[str]) -> None:
        """Ask the server for the exact counts of `texts` near the input cap (if any).

        A failing count never fails the call: the estimate decides, as without it, and the
        server is not asked again.
        """
        book = self.tokens
        ask = book.ask if book is not None else None
        if book is None or ask is None:
            return
        todo = book.unsure(texts)
        for start in range(0, len(todo), TOKENIZE_BATCH):
            part = todo[start : start + TOKENIZE_BATCH]
            try:
                counts = await ask(part)
            except EmbedkitError as exc:
                logger.warning("the server's token count failed (%s); estimating instead", exc)
                book.ask = None
                return
            book.know(part, counts)

    def on_answer(self, answer: Answer) -> None:
        """What a backend reports of an answer (see `embedkit._usage`): learn the tokens a
        character costs, count them (per endpoint), and tell the quota."""
        book = self.tokens
        if book is None:
            return
        # what was taken for it (at the ratio before this answer teaches a new one)
        answer.estimated = book.estimate(answer.chars)
        if answer.status < 400 and answer.tokens is not None:
            book.observe(answer.chars, answer.tokens)
            if answer.endpoint:
                self._tokens_by_endpoint[answer.endpoint] += answer.tokens
        quota = self.quota
        quota.on_answer(answer)
        concurrency = self.concurrency
        if concurrency.starting and answer.status < 400 and not quota.idle():
            concurrency.end_slow_start()  # a rate is known now (stated): it paces

    def _token_stats(self) -> dict[str, Any]:
        book = self.tokens
        if book is None:
            return {}
        pace = getattr(self.quota, "token_pace", None)
        return {
            "tokens_sent": book.sent,
            "tokens_reported": book.reported,
            "tokens_by_endpoint": dict(self._tokens_by_endpoint),
            "tokens_per_char": book.ratio if not book.exact else None,
            "max_batch_tokens": book.budget,
            "max_input_tokens": book.max_per_input,
            "token_rate": pace if isinstance(pace, float) else None,
            "truncated": book.truncated,
            "chunked": book.chunked,
        }
