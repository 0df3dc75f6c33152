"""`Embedder`: the blocking twin of `AsyncEmbedder`, over an anyio blocking portal."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Literal, TypeVar

import anyio
import anyio.from_thread
from anyio.from_thread import BlockingPortal
from typing_extensions import Unpack

from ._client import AsyncEmbedder
from ._config import Dtype, Kind, Matrix, Priority
from ._core import SchedulerStats
from ._errors import ClientClosedError
from ._options import AnyOptions
from ._quantize import as_dtype

__all__ = ["Embedder"]

T = TypeVar("T")


class Embedder:
    """The blocking twin of `AsyncEmbedder`, for scripts and notebooks.

    It runs an `AsyncEmbedder` on an event loop in a background thread (an anyio blocking
    portal). Takes the same arguments as `AsyncEmbedder` (`EmbedderOptions`, written
    once). Use `with Embedder(...) as emb: emb.embed_many(texts)`.
    Calls from several threads at once are coalesced like concurrent async calls.
    """

    def __init__(self, model: str | None = None, /, **options: Unpack[AnyOptions]) -> None:
        if model is not None:
            options["model"] = model
        self._async = AsyncEmbedder(**options)
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncEmbedder", "Embedder", 1)

    def __enter__(self) -> Embedder:
        stack = contextlib.ExitStack()
        try:
            portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
            stack.enter_context(portal.wrap_async_context_manager(self._async))
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self._portal = portal
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the embedder and stop its event-loop thread."""
        stack, self._stack = self._stack, None
        self._portal = None
        if stack is not None:
            stack.close()

    def running_portal(self) -> BlockingPortal:
        """The blocking portal of this open embedder's event-loop thread (internal: the
        blocking `embed_file` runs its work through it). Raises `ClientClosedError` unless open.
        """
        if self._portal is None:
            raise ClientClosedError("open the Embedder first: `with Embedder(...) as emb:`")
        return self._portal

    @property
    def dimension(self) -> int | None:
        """The embedding size, once known."""
        return self._async.dimension

    @property
    def aio(self) -> AsyncEmbedder:
        """The underlying `AsyncEmbedder` (use it only from the embedder's own loop)."""
        return self._async

    def embed(
        self,
        text: str,
        *,
        kind: Kind | None = None,
        priority: Priority = "interactive",
        deadline: float | None = None,
    ) -> Matrix:
        """Embed one text: a vector of shape (dim,) — see `AsyncEmbedder.embed`."""
        call = functools.partial(
            self._async.embed, text, kind=kind, priority=priority, deadline=deadline
        )
        result: Matrix = self._call(call)
        return result

    def embed_many(
        self,
        texts: Sequence[str] | Iterable[str],
        *,
        kind: Kind | None = None,
        priority: Priority = "interactive",
        deadline: float | None = None,
    ) -> Matrix:
        """Embed many texts: a (len(texts), dim) matrix — see `AsyncEmbedder.embed_many`."""
        call = functools.partial(
            self._async.embed_many, texts, kind=kind, priority=priority, deadline=deadline
        )
        result: Matrix = self._call(call)
        return result

    def _call(self, function: Callable[[], Awaitable[T]]) -> T:
        """Run `function()` on the embedder's loop and wait for it; interrupted here (Ctrl-C),
        the call is cancelled there too, so its queued texts are skipped at once instead of
        being sent for nobody."""
        future = self.running_portal().start_task_soon(function)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stats(self) -> SchedulerStats:
        """Counters, limits and latency percentiles (a frozen snapshot).

        Taken on the event-loop thread, so it is consistent even while work is running.
        """
        result: SchedulerStats = self.running_portal().call(self._async.stats)
        return result

    # ------------------------------------------------------------- bulk (in _bulk.py)

    def embed_stream(
        self,
        texts: Iterable[str],
        *,
        block_size: int = 1024,
        max_blocks_in_flight: int | None = None,
        sort_by_length: bool = False,
        dedup: bool = True,
        kind: Kind | None = None,
    ) -> Iterator[tuple[int, Matrix]]:
        """`for start, matrix in emb.embed_stream(texts):` — see `AsyncEmbedder.embed_stream`.

        The input is read in the calling thread, so a slow input never stalls the requests
        in flight on the embedder's event loop.
        """
        from ._bulk import default_depth, stream_blocking

        portal = self.running_portal()
        scheduler = self._async.running_scheduler()
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        if kind is not None:
            scheduler = portal.call(self._async.scheduler_for, kind)
        depth = max_blocks_in_flight or default_depth(
            block_size, self._async.max_concurrency, scheduler.max_batch_size
        )
        blocks = stream_blocking(
            portal,
            scheduler,
            texts,
            block_size=block_size,
            depth=depth,
            sort_by_length=sort_by_length,
            dedup=dedup,
        )
        dtype = self._async.dtype
        return blocks if dtype == "float32" else _in_dtype(blocks, dtype)

    def encode(
        self,
        sentences: str | Iterable[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        convert_to_numpy: bool = True,
        precision: Literal["float32"] = "float32",
        truncate_dim: int | None = None,
    ) -> Matrix:
        """`SentenceTransformer.encode`, blocking — see `AsyncEmbedder.encode`."""
        result: Matrix = self._call(
            lambda: self._async.encode(
                sentences,
                batch_size=batch_size,
                show_progress_bar=show_progress_bar,
                normalize_embeddings=normalize_embeddings,
                prompt_name=prompt_name,
                prompt=prompt,
                convert_to_numpy=convert_to_numpy,
                precision=precision,
                truncate_dim=truncate_dim,
            )
        )
        return result


def _in_dtype(blocks: Iterator[tuple[int, Matrix]], dtype: Dtype) -> Iterator[tuple[int, Matrix]]:
    """Blocks of carrier rows as arrays of `dtype`; closing this closes `blocks`."""
    try:
        for start, matrix in blocks:
            yield start, as_dtype(matrix, dtype)
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
