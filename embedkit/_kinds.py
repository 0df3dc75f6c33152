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
from ._config import Dtype, Kind, Matrix
from ._core import Scheduler
from ._quantize import as_dtype, carried, is_packed

__all__ = ["KindSchedulers", "check_kind", "in_dtype", "quantising", "scheduler_factory"]

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
