"""`AsyncEmbedder`: configuration, life cycle and wiring.

An embedder owns a backend (built by `_backends.build_backend`) and a scheduler that feeds
it. Everything that embeds — `embed`, `embed_many`, `embed_stream`, `encode`, `embed_file`
and the CLI, `embedkit serve` — goes through the same scheduler, so coalescing, limits and
retries apply everywhere. Texts are checked by `_texts.check_text` before they reach it.
The blocking twin, `Embedder`, is in `_sync.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Awaitable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

import anyio
import numpy as np
from typing_extensions import Unpack

from ._backends import (
    Backend,
    BackendInfo,
    Listening,
    Options,
    URLs,
    build_backend,
    kind_sender,
)
from ._cache import EmbeddingCache
from ._config import (
    Api,
    Connection,
    Dtype,
    Kind,
    Limits,
    Matrix,
    Pooling,
    Priority,
    check_priority,
    check_seconds,
)
from ._core import (
    DEFAULT_RETRY,
    Overflow,
    Quota,
    RetryPolicy,
    Scheduler,
    SchedulerStats,
    TokenCounting,
)
from ._errors import ClientClosedError
from ._identity import identity_of
from ._kinds import KindSchedulers, check_kind, scheduler_factory, shared_flow
from ._options import LegacyOptions, fold_legacy, open_book, token_options
from ._quantize import as_dtype, check_dtype
from ._streams import StreamMethods
from ._telemetry import Telemetry, telemetry_available
from ._texts import check_text, check_texts

__all__ = ["AsyncEmbedder"]


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class AsyncEmbedder(StreamMethods):
    """An async embedding client that batches concurrent calls into few, full requests.

    Use it as `async with AsyncEmbedder(...) as emb:`; inside, `await emb.embed(text)` from
    any number of tasks, or `await emb.embed_many(texts)`.

    Args:
        model: the model id (hf, openai, local) — for `api="local"` also a folder path.
        url: where to send requests. hf: the full URL (default: the HF router URL for
            `model`); tei: the server root; openai, cohere, voyage, gemini: the API base
            (default the provider's); ollama: the server root (default 127.0.0.1:11434).
            Several URLs (or `Endpoint`s) of the same protocol: replicas of one model,
            balanced by expected finish time, with failover (see the "many replicas" guide).
        api: `"hf"`, `"tei"`, `"openai"`, `"cohere"`, `"voyage"`, `"gemini"`, `"ollama"`
            or `"local"` (a model in this process).
        token: the API token; default `HF_TOKEN` / the huggingface CLI token file
            (hf, tei), `OPENAI_API_KEY`, `COHERE_API_KEY`, `VOYAGE_API_KEY`,
            `GEMINI_API_KEY` (their APIs). Never shown in reprs, logs or errors.
        normalize: ask for unit-length vectors (None: the server's default).
        prompt_name: a prompt the model defines (e.g. "query"), hf/tei/local.
        truncate: let the server truncate over-long inputs instead of refusing them.
        truncation_direction: "left" or "right".
        dimensions: Matryoshka output size (tei, openai, local; hf when the model has it).
        pooling: "mean" or "cls" to pool token-level answers (hf models without pooling).
        device: the torch device for `api="local"` (default "cpu").
        limits: how much is sent at once and how fast (`embedkit.Limits`: batch size,
            concurrency, request and input rates, dedup); default `Limits()`.
        connection: how HTTP backends reach the server (`embedkit.Connection`: timeout,
            TLS, HTTP/2, response size limit, transport or client, encoding format, HF's
            headers); default `Connection()`.
        retry: a `RetryPolicy`, or None to never retry.
        quota: a quota shared with other embedders (a Ray fleet's `FleetQuota`, or your own
            `Quota`); None: this embedder's own limits.
        cache_size: keep an LRU cache of this many recent vectors (0: none).
        cache: a persistent cache shared by processes (`embedkit.SQLiteCache(path)`,
            `embedkit.RedisCache(url)`, or your own `EmbeddingCache`): texts found there are
            answered without a request; a store that is down or slow is skipped, never an
            error (see the "many processes" guide); None: no persistent cache.
        backend: a ready `Backend` object (overrides api/url); the seam for custom backends.
        kind: what texts are for by default, `"query"` or `"document"` (a call may name its
            own): Cohere/Voyage `input_type`, Gemini `taskType`, the model's prompt of that
            name for hf/tei/local. openai and ollama have no such field and refuse it. Texts
            of different kinds never share a request.
        dtype: the vectors' element type: `"float32"` (default), `"int8"`, `"uint8"`, or
            packed bits, `"binary"` (int8) or `"ubinary"` (uint8), dim/8 bytes a vector.
            Cohere and Voyage quantise on the server; for the others embedkit quantises the
            floats (the rule is in the "providers" guide). `embedkit.unpackbits` unpacks bits.
        on_overflow: an input over the token cap (`Limits.max_tokens_per_input`, or the
            server's): "error" (default: a `TokenLimitError` before sending), "truncate" (cut
            by the server where the protocol can, else here) or "chunk_mean" (the token-weighted,
            re-normalised mean of its chunks). See the "tokens and quotas" guide.
        count_tokens: None (an estimate learned from the server's counts), a callable
            `(text) -> int`, a `tokenizer.json`, "server" (TEI's `/tokenize`), or False (off).

    The flat keywords that `limits=` and `connection=` replaced (`max_batch_size=`,
    `max_concurrency=`, `timeout=`, `transport=`, …) still work for one release, with a
    `DeprecationWarning` naming the new spelling.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        url: URLs | None = None,
        api: Api = "hf",
        token: str | None = None,
        normalize: bool | None = None,
        prompt_name: str | None = None,
        truncate: bool | None = None,
        truncation_direction: Literal["left", "right"] | None = None,
        dimensions: int | None = None,
        pooling: Pooling | None = None,
        device: str | None = None,
        limits: Limits | None = None,
        connection: Connection | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        quota: Quota | None = None,
        cache_size: int = 0,
        cache: EmbeddingCache | None = None,
        backend: Backend | None = None,
        kind: Kind | None = None,
        dtype: Dtype = "float32",
        on_overflow: Overflow = "error",
        count_tokens: TokenCounting = None,
        **deprecated: Unpack[LegacyOptions],
    ) -> None:
        limits, connection = fold_legacy(limits, connection, dict(deprecated))
        self.dtype: Dtype = check_dtype(dtype)
        check_kind(kind)
        if kind is not None and prompt_name is not None:
            raise ValueError(
                "kind= and prompt_name= both choose the prompt; give one (kind='query' is "
                "the model's prompt named 'query')"
            )
        self.deadline = limits.deadline  # the default of embed/embed_many (Limits.deadline)
        # checks both options; reads a tokenizer.json once, here
        self._tokens, truncate = token_options(api, limits, count_tokens, on_overflow, truncate)
        if dimensions is not None and dimensions < 1:
            raise ValueError("dimensions must be a positive integer")
        if truncation_direction not in (None, "left", "right"):
            raise ValueError("truncation_direction must be 'left' or 'right'")
        if pooling not in (None, "mean", "cls"):
            raise ValueError("pooling must be 'mean' or 'cls'")
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.model = model
        self.api: str = api
        self.limits = limits
        self.connection = connection
        self._url = url
        self.max_batch_size = limits.batch_size_for(api)
        self._retry = retry
        self._cache_size = cache_size
        if cache is not None and not isinstance(cache, EmbeddingCache):
            raise TypeError(
                "cache must be an EmbeddingCache (embedkit.SQLiteCache, embedkit.RedisCache, "
                f"or an object with get_many, set_many and timeout), not {type(cache).__name__}"
            )
        self._cache = cache
        self._custom_backend = type(backend).__qualname__ if backend is not None else None
        self._options = Options(
            normalize=normalize,
            prompt_name=prompt_name,
            truncate=truncate,
            truncation_direction=truncation_direction,
            dimensions=dimensions,
            pooling=pooling,
            kind=kind,
            dtype=dtype if dtype != "float32" else None,
        )
        self._backend, self.max_concurrency = build_backend(
            api=api,
            model=model,
            url=url,
            token=token,
            options=self._options,
            limits=limits,
            connection=connection,
            device=device,
            backend=backend,
        )
        self._state = _State.UNOPENED
        # a quota shared with other embedders (a Ray fleet's, a Redis one); None: this
        # embedder's own limits (requests_per_second, inputs_per_second, 429s)
        self._quota: Quota | None = quota
        self._scheduler: Scheduler | None = None
        self._kinds: KindSchedulers | None = None  # the other kinds' schedulers, once open
        self._telemetry: Telemetry | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.info = BackendInfo()
        # a custom backend's floats are quantised here; it is told a kind per call
        self._custom = backend is not None
        self._quantise_here = self._custom and dtype != "float32"
        if self._custom and kind is not None:
            kind_sender(self._backend, kind)  # raises unless the backend carries kinds

    def identity(self) -> dict[str, Any]:
        """What decides the vectors this embedder gives: `embed_file`'s resume fingerprint and
        the persistent cache's key (see `_identity.py` and the "many processes" guide)."""
        openai_float = self.api == "openai" and self.connection.encoding_format != "base64"
        return identity_of(
            api=self.api,
            model=self.model,
            url=self._url,
            options=self._options,
            dtype=self.dtype,
            encoding_format=self.connection.encoding_format if openai_float else None,
            backend=self._custom_backend,
        )

    def describe(self) -> str:
        """What this embedder talks to, for people (never the token): "tei at http://…"."""
        return self._backend.describe()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._backend.describe()} model={self.model!r} "
            f"max_batch_size={self.max_batch_size} max_concurrency={self.max_concurrency} "
            f"state={self._state.value}>"
        )

    # ------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> AsyncEmbedder:
        if self._state is not _State.UNOPENED:
            raise ClientClosedError(
                f"an {type(self).__name__} can be opened once; it is {self._state.value}"
            )
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            stack.push_async_callback(self._backend.aclose)
            for shared in (self._cache, self._quota):  # Redis ones close their connections
                attach = getattr(shared, "attach", None)
                if attach is not None:
                    attach()
                    stack.push_async_callback(shared.detach)  # type: ignore[union-attr]
            info = await self._backend.start()
            self.info = info
            max_batch = self.max_batch_size
            if info.max_batch_size is not None:
                max_batch = min(max_batch, info.max_batch_size)
            # within what the server said (TEI's inputs in flight), or the replicas' caps summed
            max_conc = self._backend.fit_concurrency(max_batch, self.max_concurrency)
            limits = self.limits
            book = self._tokens
            if book is not None:  # TEI's max_input_length; count_tokens="server": /tokenize
                open_book(book, info.max_input_tokens, self._backend)
            retry = self._retry
            concurrency, quota = shared_flow(
                limits,
                retry,
                self._quota,
                max_batch=max_batch,
                max_concurrency=max_conc,
                tokens=book,
            )
            self._telemetry = self._open_telemetry()
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            make_scheduler = scheduler_factory(
                stack=stack,
                tg=tg,
                dimension=info.dimension,
                dtype=self.dtype,
                quantise=self._quantise_here,
                max_batch_size=max_batch,
                max_batch_chars=limits.max_batch_chars,
                concurrency=concurrency,  # shared by every kind's scheduler, like the quota
                retry=retry,
                dedup=limits.dedup,
                cache_size=self._cache_size,
                quota=quota,
                max_queue_wait=limits.max_queue_wait,
                tokens=book,  # one book for every kind: one learned ratio, one budget
                # a persistent cache in front of each kind's queue, keyed by what decides a vector
                cache=(self._cache, self.identity()) if self._cache is not None else None,
            )
            send: Any = self._backend.embed_batch
            if self._custom and self._options.kind is not None:
                send = kind_sender(self._backend, self._options.kind)
            scheduler = await make_scheduler(send)
            if book is not None and isinstance(self._backend, Listening):
                # every kind's answers: one book and one quota, so one listener is enough
                self._backend.listen(scheduler.on_answer)
            self._kinds = KindSchedulers(
                self._backend,
                make_scheduler,
                default_kind=self._options.kind,
                prompt_name=self._options.prompt_name,
            )
            await tg.start(self._backend.run)  # e.g. the balancer's probes of ejected replicas
        except BaseException:
            await stack.aclose()
            self._state = _State.CLOSED
            raise
        self._stack = stack
        self._scheduler = scheduler
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: pending calls fail with `ClientClosedError`, connections are closed."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def running_scheduler(self) -> Scheduler:
        """The scheduler of this open embedder, for embedkit's own bulk engine and Ray worker.

        Internal: applications call `embed`, `embed_many` and `embed_stream` instead. Raises
        `ClientClosedError` unless the embedder is open.
        """
        if self._state is _State.OPEN and self._scheduler is not None:
            return self._scheduler
        if self._state is _State.UNOPENED:
            raise ClientClosedError(
                f"open the {type(self).__name__} first: "
                f"`async with {type(self).__name__}(...) as emb:`"
            )
        raise ClientClosedError(f"this {type(self).__name__} is closed")

    async def warmup(self) -> None:
        """Open connections to the server up to the concurrency limit now.

        Without it they open as the first requests need them, so the first burst waits for
        TCP (and TLS) handshakes. Call it once after opening, e.g. in a web app's start-up.
        Only embedkit's own transport opens connections ahead of time (the default); with
        `Connection(transport="httpx")` or your own client this does nothing.
        """
        await self._backend.warm(int(self.running_scheduler().concurrency.limit))

    # -------------------------------------------------------------------- embedding

    @property
    def dimension(self) -> int | None:
        """The embedding size, once known (from the server's limits or a first answer)."""
        if self._scheduler is not None and self._scheduler.dimension is not None:
            return self._scheduler.dimension
        return self.info.dimension

    async def scheduler_for(self, kind: Kind | None = None) -> Scheduler:
        """The scheduler of calls of `kind` (None: the embedder's default kind).

        Internal, like `running_scheduler`. Each kind has its own scheduler, so texts of
        different kinds never share a request; all of them share one concurrency limit
        and one quota (`_kinds.py`). Raises `ValueError` when the API has no field for a kind.
        """
        scheduler = self.running_scheduler()
        if self._kinds is None:
            check_kind(kind)
            return scheduler
        return await self._kinds.get(kind, scheduler)

    async def embed(
        self,
        text: str,
        *,
        kind: Kind | None = None,
        priority: Priority = "interactive",
        deadline: float | None = None,
    ) -> Matrix:
        """Embed one text: a vector of shape (dim,) (float32 unless the embedder's `dtype`
        says otherwise; dim/8 bytes for the packed-bit dtypes).

        Concurrent calls from many tasks share batched requests.

        Args:
            text: the text.
            kind: "query" or "document": overrides the embedder's default `kind` for this
                call (texts of different kinds never share a request).
            priority: "interactive" (default: sent before queued bulk work, e.g. a search
                query) or "bulk" (queued behind it, as `embed_stream`/`embed_file` are).
            deadline: seconds this call may take in all (queueing, attempts, backoff), then
                `DeadlineExceededError`; default: the embedder's `limits.deadline`.
        """
        matrix = await self._submit((check_text(text),), kind, priority, deadline)
        row: Matrix = as_dtype(matrix[0], self.dtype)
        return row

    def _submit(
        self, texts: Sequence[str], kind: Kind | None, priority: Priority, deadline: float | None
    ) -> Awaitable[Matrix]:
        """Through the scheduler of the call's kind, in its lane, within its deadline, in
        its span.

        Not a coroutine itself (it returns the one to await): one frame less per call.
        """
        if priority != "interactive":
            check_priority(priority)
        if deadline is None:
            deadline = self.deadline
        else:
            check_seconds("deadline", deadline)
        if kind is None or kind == self._options.kind:
            call = self.running_scheduler().submit(texts, priority=priority, deadline=deadline)
        else:
            call = self._submit_kind(texts, kind, priority, deadline)
        telemetry = self._telemetry
        if telemetry is None or not telemetry.enabled():
            return call
        return telemetry.observe(call)

    async def _submit_kind(
        self, texts: Sequence[str], kind: Kind, priority: Priority, deadline: float | None
    ) -> Matrix:
        scheduler = await self.scheduler_for(kind)
        return await scheduler.submit(texts, priority=priority, deadline=deadline)

    def _open_telemetry(self) -> Telemetry | None:
        """OpenTelemetry instruments, when `opentelemetry-api` is installed (the `otel` extra)."""
        if not telemetry_available():
            return None
        return Telemetry.for_backend(
            self._backend,
            model=self.model or self.info.model_id,
            encoding_format=self.connection.encoding_format if self.api == "openai" else None,
        )

    async def embed_many(
        self,
        texts: Sequence[str] | Iterable[str],
        *,
        kind: Kind | None = None,
        priority: Priority = "interactive",
        deadline: float | None = None,
    ) -> Matrix:
        """Embed many texts: a matrix of shape (len(texts), dim), row i for text i (float32
        unless the embedder's `dtype` says otherwise).

        The list is cut into full batches sent concurrently (and shared with any concurrent
        `embed` calls of the same kind). An empty list gives shape (0, dim) when dim is
        known. `kind`, `priority` and `deadline` as for `embed`; a large list that should
        not hold up queries is "bulk".
        """
        items = check_texts(texts)
        self.running_scheduler()  # raises unless open
        if not items:
            dim = self.dimension
            if dim is None:
                raise ValueError(
                    "embed_many([]) cannot know the embedding size before the first answer; "
                    "pass dimensions= or embed something first"
                )
            return as_dtype(np.empty((0, dim), dtype=np.float32), self.dtype)
        matrix: Matrix = as_dtype(await self._submit(items, kind, priority, deadline), self.dtype)
        return matrix

    def stats(self) -> SchedulerStats:
        """Counters, limits and latency percentiles (a frozen snapshot).

        With several URLs, `endpoints` holds each replica's figures (`EndpointStats`).
        `retries["stale connection"]` counts requests embedkit's transport sent again
        because the server had closed a kept-alive connection before reading them.
        """
        stats = self.running_scheduler().stats()
        below = self._backend.backend_stats()
        if below.resent_requests:
            retries = {**stats.retries, "stale connection": below.resent_requests}
            stats = dataclasses.replace(stats, retries=retries)
        if below.endpoints:
            stats = dataclasses.replace(stats, endpoints=below.endpoints)
        return stats
