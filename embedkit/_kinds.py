"""One scheduler per kind of text: why calls of different kinds never share a request.

A request carries one `input_type` / `taskType` / `prompt_name` for all its texts, so a
query and a document cannot travel together. The embedder's default kind has the scheduler
made when it opens; each other kind gets its own on first use, whose send function binds
that kind (`kind_sender`). All of them are handed the same `AdaptiveConcurrency` and the
same quota when made, so requests in flight, rates and 429 pauses are counted once across
kinds; only the forming of batches is separate. The scheduler itself (`_core`) knows
nothing of kinds.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._backends import CompleteBackend, kind_sender
from ._cache import CachingScheduler, EmbeddingCache, KeyMaker
from ._config import Dtype, Kind, Limits, Matrix
from ._core import (
    AdaptiveConcurrency,
    Cooldown,
    LocalQuota,
    Quota,
    RetryPolicy,
    Scheduler,
    TokenBook,
    TokenBucket,
    token_bucket,
)
from ._quantize import as_dtype, carried, is_packed

__all__ = [
    "KindSchedulers",
    "check_kind",
    "in_dtype",
    "quantising",
    "scheduler_factory",
    "shared_flow",
]

#: builds and starts a scheduler around a send function (the embedder's shared limits)
MakeScheduler = Callable[..., Awaitable[Scheduler]]  # (send, kind=None)


def check_kind(kind: object) -> None:
    """`ValueError` unless `kind` is None, "query" or "document"."""
    if kind not in (None, "query", "document"):
        raise ValueError(f"kind must be 'query' or 'document', not {kind!r}")


def quantising(send: Any, dtype: Dtype) -> Any:
    """A send function whose float answer is quantised to `dtype`'s carrier rows (for a
    custom backend, which knows nothing of dtypes)."""

    async def quantised(texts: list[str]) -> Matrix:
        return carried(await send(texts), dtype)

    return quantised


def shared_flow(
    limits: Limits,
    retry: RetryPolicy | None,
    quota: Quota | None,
    *,
    max_batch: int,
    max_concurrency: int,
    tokens: TokenBook | None,
) -> tuple[AdaptiveConcurrency, Quota]:
    """The one concurrency limit and the one quota every kind's scheduler shares: `quota`
    when given (a fleet's, a Redis one), else a `LocalQuota` of `limits`' request, input and
    token rates (reading the servers' rate-limit headers when tokens are counted)."""
    rps, ips, tpm = limits.requests_per_second, limits.inputs_per_second, limits.tokens_per_minute
    concurrency = AdaptiveConcurrency(max_concurrency, adaptive=limits.adaptive_concurrency)
    if limits.max_tokens_per_request and tokens is not None and not (quota or rps or tpm):
        # a token cap given for a server whose quota nobody gave: start one request at a
        # time until it states one, refuses (429), or takes a full wave (`slow_start`)
        concurrency.slow_start()
    return concurrency, quota or LocalQuota(
        cooldown=Cooldown(sleep=retry.sleep) if retry is not None else Cooldown(),
        request_rate=TokenBucket(rps) if rps else None,
        input_rate=TokenBucket(ips, burst=max(float(max_batch), ips / 10)) if ips else None,
        learn_rate=limits.adaptive_concurrency,
        token_rate=token_bucket(tpm, tokens) if tpm else None,
        read_headers=tokens is not None,
    )


def scheduler_factory(
    *,
    stack: contextlib.AsyncExitStack,
    tg: TaskGroup,
    dimension: int | None,
    dtype: Dtype,
    quantise: bool,
    cache: tuple[EmbeddingCache, dict[str, Any]] | None = None,
    **settings: Any,
) -> MakeScheduler:
    """How an open embedder makes a scheduler: `settings` (limits, the shared concurrency
    and quota) around a send function, started in `tg` and closed with `stack`.

    With `cache` (a store and the embedder's identity), each scheduler is a
    `CachingScheduler` whose keys hold the identity with the scheduler's kind."""

    async def make(send: Any, kind: Kind | None = None) -> Scheduler:
        sent = quantising(send, dtype) if quantise else send
        made: Scheduler
        if cache is None:
            made = Scheduler(sent, **settings)
        else:
            store, identity = cache
            keys = KeyMaker({**identity, "kind": kind} if kind is not None else identity)
            made = CachingScheduler(sent, store=store, keys=keys, **settings)
        made.dimension = -(-dimension // 8) if dimension and is_packed(dtype) else dimension
        stack.callback(made.close)
        if isinstance(made, CachingScheduler):  # runs before close: write what is queued
            stack.push_async_callback(made.flush)
        await tg.start(made.run)
        return made

    return make


async def in_dtype(
    blocks: AsyncGenerator[tuple[int, Matrix], None], dtype: Dtype
) -> AsyncGenerator[tuple[int, Matrix], None]:
    """`embed_stream`'s blocks as arrays of `dtype`; closing this closes `blocks`."""
    async with contextlib.aclosing(blocks):
        async for start, matrix in blocks:
            yield start, as_dtype(matrix, dtype)


class KindSchedulers:
    """The schedulers of the kinds other than the default, made on first use."""

    def __init__(
        self,
        backend: CompleteBackend,
        make: MakeScheduler,
        *,
        default_kind: Kind | None,
        prompt_name: str | None,
    ) -> None:
        self._backend = backend
        self._make = make
        self._default_kind = default_kind
        self._prompt_name = prompt_name
        self._made: dict[Kind, Scheduler] = {}
        self._lock = anyio.Lock()

    async def get(self, kind: Kind | None, default: Scheduler) -> Scheduler:
        """The scheduler for calls of `kind`; `default` for the default kind (or None)."""
        check_kind(kind)
        if kind is None or kind == self._default_kind:
            return default
        if self._prompt_name is not None:
            raise ValueError(
                "kind= cannot be given per call to an embedder with prompt_name= (both "
                "choose the prompt)"
            )
        found = self._made.get(kind)
        if found is not None:
            return found
        send = kind_sender(self._backend, kind)  # raises unless the API carries a kind
        async with self._lock:
            found = self._made.get(kind)
            if found is None:
                found = self._made[kind] = await self._make(send, kind)
        return found
