"""The seam between the scheduler and whatever computes embeddings: the `Backend` protocol.

A backend embeds one batch at a time. Around that, the embedder needs a few more answers
from it — how many requests it can take at once, a background task (the balancer's probes),
a health probe, and what it counts — and asks them through this protocol only, never by
checking which class a backend is. A backend written elsewhere that has only the four
essential methods of `Backend` (`start`, `embed_batch`, `aclose`, `describe`) still
works: `complete()` wraps it in `MinimalBackend`, which answers the rest with neutral
defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import anyio
from anyio.abc import TaskStatus

from .._config import Kind, Matrix
from .._core import EndpointStats
from .._usage import Answer
from .protocols import BackendInfo

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendStats",
    "CompleteBackend",
    "Listening",
    "MinimalBackend",
    "complete",
    "fit_to_info",
    "kind_sender",
]


@dataclasses.dataclass(frozen=True)
class BackendStats:
    """What a backend counts below the scheduler, merged into `embedder.stats()`.

    Attributes:
        resent_requests: requests the transport sent again because the server had closed a
            kept-alive connection before reading them (`retries["stale connection"]`).
        endpoints: with several replicas, each one's figures.
    """

    resent_requests: int = 0
    endpoints: tuple[EndpointStats, ...] = ()


@runtime_checkable
class Backend(Protocol):
    """Something that embeds one batch at a time: an HTTP server, a local model, a fake.

    `embed_batch` must return one float32 row per text, in order, or raise an
    `EmbedkitError`; the scheduler does the batching, retries and flow control around it.
    These four methods are enough for `backend=`; a `CompleteBackend` says more.
    """

    async def start(self) -> BackendInfo:
        """Prepare (connect, read limits, load a model) and say what was learned."""
        ...

    async def embed_batch(self, texts: list[str]) -> Matrix:
        """Embed one batch: an (len(texts), dim) float32 matrix."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads, models."""
        ...

    def describe(self) -> str:
        """A short, secret-free description for reprs and logs."""
        ...


@runtime_checkable
class CompleteBackend(Backend, Protocol):
    """A `Backend` that also tells the embedder everything it asks below the scheduler.

    Beyond the four essential methods, a complete backend says how many requests it can take
    (`fit_concurrency`), runs its own background work (`run`), checks its server
    (`probe`) and reports its counters (`backend_stats`).
    """

    def fit_concurrency(self, max_batch_size: int, max_concurrency: int) -> int:
        """Requests in flight at most, once started, for batches of `max_batch_size`.

        `max_concurrency` is what the embedder was told; a backend lowers it to what its
        server said it takes (TEI's inputs in flight), or sums its replicas' caps.
        """
        ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Background work for the embedder's life (probing replicas); returns when none."""
        ...

    async def warm(self, connections: int) -> None:
        """Open up to `connections` connections now, before the first burst needs them."""
        ...

    async def probe(self) -> None:
        """Check that the server answers; raise the embedkit error its answer maps to."""
        ...

    def backend_stats(self) -> BackendStats:
        """Counters kept below the scheduler (a snapshot)."""
        ...


@runtime_checkable
class Listening(Protocol):
    """A backend that reports what the server said of each answer (optional capability).

    `listen(on_answer)` is called once, before the first batch; the backend then calls
    `on_answer(Answer)` for every answer it reads (successes and refusals): the tokens the
    server counted and its `x-ratelimit-*` headers (see `embedkit._usage`). A backend
    without it is simply not heard: batches are still counted and budgeted by estimate.
    """

    def listen(self, on_answer: Callable[[Answer], None]) -> None:
        """Report every answer to `on_answer` from now on."""
        ...


def fit_to_info(info: BackendInfo, max_batch_size: int, max_concurrency: int) -> int:
    """The concurrency a server's stated limits allow: TEI counts inputs, not requests,
    against `max_concurrent_requests`, so at most that many inputs are in flight."""
    if info.max_inputs_in_flight is None:
        return max_concurrency
    return max(1, min(max_concurrency, info.max_inputs_in_flight // max_batch_size))


class MinimalBackend:
    """A backend with only the essential methods, given the neutral rest of `CompleteBackend`."""

    def __init__(self, backend: Backend) -> None:
        self.inner = backend
        self._info = BackendInfo()

    async def start(self) -> BackendInfo:
        """Start the wrapped backend and remember what it said."""
        self._info = await self.inner.start()
        return self._info

    async def embed_batch(self, texts: list[str]) -> Matrix:
        """Embed one batch through the wrapped backend."""
        return await self.inner.embed_batch(texts)

    async def aclose(self) -> None:
        """Close the wrapped backend."""
        await self.inner.aclose()

    def describe(self) -> str:
        """The wrapped backend's description."""
        return self.inner.describe()

    def fit_concurrency(self, max_batch_size: int, max_concurrency: int) -> int:
        """What the wrapped backend's `BackendInfo` allows."""
        return fit_to_info(self._info, max_batch_size, max_concurrency)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing to run."""
        task_status.started()

    async def warm(self, connections: int) -> None:
        """Nothing to open ahead of time."""

    async def probe(self) -> None:
        """Embed one short text: an answer means the backend works."""
        await self.inner.embed_batch(["embedkit health probe"])

    def backend_stats(self) -> BackendStats:
        """Nothing counted below the scheduler."""
        return BackendStats()

    def listen(self, on_answer: Callable[[Answer], None]) -> None:
        """Pass the callback on when the wrapped backend can report answers."""
        if isinstance(self.inner, Listening):
            self.inner.listen(on_answer)

    def __repr__(self) -> str:
        return f"<MinimalBackend {self.describe()}>"


def kind_sender(backend: Backend, kind: Kind) -> Callable[[list[str]], Awaitable[Matrix]]:
    """`backend.embed_batch` with `kind=` bound: the send function of one kind's scheduler.

    Raises `ValueError` when the backend has no field for a kind (`carries_kind` is false:
    openai, ollama, a custom backend).
    """
    if not getattr(backend, "carries_kind", False):
        raise ValueError(
            f"{backend.describe()} cannot carry kind=: its API has no query/document field"
        )
    embed: Any = backend.embed_batch

    async def send(texts: list[str]) -> Matrix:
        matrix: Matrix = await embed(texts, kind=kind)
        return matrix

    return send


def complete(backend: Backend) -> CompleteBackend:
    """`backend` itself when it is a `CompleteBackend`, else wrapped in `MinimalBackend`."""
    if isinstance(backend, CompleteBackend):
        return backend
    if not isinstance(backend, Backend):
        raise TypeError(
            "backend= must have async start(), async embed_batch(texts), async aclose() "
            f"and describe(); {type(backend).__name__} does not"
        )
    return MinimalBackend(backend)
