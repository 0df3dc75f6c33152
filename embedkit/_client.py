"""`AsyncEmbedder` and `Embedder`: configuration, life cycle and wiring.

An embedder owns a backend (HTTP or local) and a scheduler that feeds it. Everything that
embeds — `embed`, `embed_many`, `embed_stream`, `encode`, `embed_file` and the CLI,
`embedkit serve` — goes through the same scheduler, so coalescing, limits and retries apply
everywhere. Texts are checked by `_texts.check_text` before they reach it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, TypedDict

import anyio
import anyio.from_thread
import httpx
import numpy as np
from anyio.from_thread import BlockingPortal

from ._auth import resolve_token
from ._backends import (
    DEFAULT_MAX_RESPONSE_SIZE,
    DEFAULT_TIMEOUT,
    PROTOCOLS,
    Backend,
    BackendInfo,
    BalancedBackend,
    Endpoint,
    HttpBackend,
    OpenAIProtocol,
    Options,
    Replica,
)
from ._config import CertTypes, Matrix, Pooling, VerifyTypes
from ._core import (
    DEFAULT_RETRY,
    AdaptiveConcurrency,
    Cooldown,
    Quota,
    RetryPolicy,
    Scheduler,
    SchedulerStats,
    TokenBucket,
)
from ._errors import ClientClosedError
from ._texts import check_text, check_texts

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "OPENAI_MAX_BATCH_SIZE",
    "AsyncEmbedder",
    "Embedder",
    "EmbedderOptions",
]

DEFAULT_MAX_BATCH_SIZE = 32
#: The default `max_batch_size` for `api="openai"`. OpenAI-compatible servers state no batch
#: limit (OpenAI and Infinity accept 2,048 inputs) and pay per request (HTTP and validation
#: on the server; OpenAI's requests-per-minute quota), so a request carries more texts.
OPENAI_MAX_BATCH_SIZE = 64


def default_max_batch_size(api: str) -> int:
    """The `max_batch_size` an embedder for `api` uses unless told one."""
    return OPENAI_MAX_BATCH_SIZE if api == "openai" else DEFAULT_MAX_BATCH_SIZE


DEFAULT_MAX_CONCURRENCY = 8

Api = Literal["hf", "tei", "openai", "local"]
#: One URL, one `Endpoint`, or several of either (replicas of one model, same protocol).
URLs = str | Endpoint | Sequence[str | Endpoint]


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _check_timeout(timeout: httpx.Timeout | float | None) -> None:
    """A zero or negative timeout would fail every request: refuse it here instead."""
    if isinstance(timeout, httpx.Timeout):
        values = [("connect", timeout.connect), ("read", timeout.read)]
        values += [("write", timeout.write), ("pool", timeout.pool)]
    elif timeout is None:
        return
    else:
        values = [("", timeout)]
    for part, value in values:
        if value is not None and not (value > 0):
            where = f"timeout.{part}" if part else "timeout"
            raise ValueError(
                f"{where} must be a positive number of seconds (or None for no limit), "
                f"not {value!r}"
            )


def _endpoints(url: URLs | None) -> list[Endpoint]:
    """`url=` as a list of endpoints: [] for None (the protocol's default URL)."""
    if url is None:
        return []
    if isinstance(url, (str, Endpoint)):
        items: list[str | Endpoint] = [url]
    elif isinstance(url, Sequence):
        items = list(url)
        if not items:
            raise ValueError("url= got an empty list; give at least one URL")
    else:
        raise TypeError(
            f"url= takes a URL, an Endpoint or a list of them, not {type(url).__name__}"
        )
    endpoints = []
    for item in items:
        if isinstance(item, str):
            endpoints.append(Endpoint(item))
        elif isinstance(item, Endpoint):
            endpoints.append(item)
        else:
            raise TypeError(
                f"url= items must be URL strings or Endpoints, not {type(item).__name__}"
            )
    seen = [e.url for e in endpoints]
    if len(set(seen)) != len(seen):
        raise ValueError("url= names the same URL twice")
    return endpoints


class EmbedderOptions(TypedDict, total=False):
    """`AsyncEmbedder`'s arguments, as keywords: what `embed_file(..., **options)` accepts.

    A test keeps it in step with `AsyncEmbedder.__init__`.
    """

    model: str | None
    url: URLs | None
    api: Api
    token: str | None
    normalize: bool | None
    prompt_name: str | None
    truncate: bool | None
    truncation_direction: Literal["left", "right"] | None
    dimensions: int | None
    pooling: Pooling | None
    encoding_format: Literal["base64", "float"]
    max_batch_size: int | None
    max_batch_chars: int | None
    max_concurrency: int
    adaptive_concurrency: bool
    requests_per_second: float | None
    inputs_per_second: float | None
    retry: RetryPolicy | None
    timeout: httpx.Timeout | float | None
    transport: httpx.AsyncBaseTransport | None
    http_client: httpx.AsyncClient | None
    wait_for_model: bool | None
    use_cache: bool | None
    dedup: bool
    cache_size: int
    backend: Backend | None
    device: str | None
    verify: VerifyTypes
    cert: CertTypes | None
    http2: bool
    max_response_size: int | None
    quota: Quota | None


class AsyncEmbedder:
    """An async embedding client that batches concurrent calls into few, full requests.

    Use it as `async with AsyncEmbedder(...) as emb:`; inside, `await emb.embed(text)` from
    any number of tasks, or `await emb.embed_many(texts)`.

    Args:
        model: the model id (hf, openai, local) — for `api="local"` also a folder path.
        url: where to send requests. hf: the full URL (default: the HF router URL for
            `model`); tei: the server root; openai: the API base (default OpenAI's).
            Several URLs (or `Endpoint`s) of the same protocol: replicas of one model,
            balanced by expected finish time, with failover (see the "many replicas" guide).
        api: `"hf"`, `"tei"`, `"openai"` or `"local"` (a model in this process).
        token: the API token; default `HF_TOKEN` / the huggingface CLI token file
            (hf, tei) or `OPENAI_API_KEY` (openai). Never shown in reprs, logs or errors.
        normalize: ask for unit-length vectors (None: the server's default).
        prompt_name: a prompt the model defines (e.g. "query"), hf/tei/local.
        truncate: let the server truncate over-long inputs instead of refusing them.
        truncation_direction: "left" or "right".
        dimensions: Matryoshka output size (tei, openai, local; hf when the model has it).
        pooling: "mean" or "cls" to pool token-level answers (hf models without pooling).
        encoding_format: openai: "base64" (default, fast) or "float".
        max_batch_size: texts per request at most (lowered to the server's own limit);
            default `OPENAI_MAX_BATCH_SIZE` (64) for openai, else `DEFAULT_MAX_BATCH_SIZE` (32).
        max_batch_chars: characters per request at most, to stay under body limits.
        max_concurrency: requests in flight at most; adaptive below this after 429s. With
            several URLs, per replica (an `Endpoint` may set its own); the total is the sum.
        adaptive_concurrency: halve concurrency on 429 and grow it back on success.
        requests_per_second: a client-side request rate limit (token bucket).
        inputs_per_second: a client-side limit on texts per second.
        retry: a `RetryPolicy`, or None to never retry.
        timeout: httpx timeout for the client embedkit builds.
        transport: an httpx transport (e.g. `httpx.MockTransport` in tests).
        http_client: an `httpx.AsyncClient` to use instead (you keep ownership).
        wait_for_model: force HF's `x-wait-for-model` header on or off; default: on after
            the first 503 "loading".
        use_cache: False asks HF not to answer from its result cache.
        dedup: send identical in-flight texts once.
        cache_size: keep an LRU cache of this many recent vectors (0: none).
        backend: a ready `Backend` object (overrides api/url); the seam for custom backends.
        device: the torch device for `api="local"` (default "cpu").
        verify: TLS verification as httpx takes it: True (httpx's trust store: certifi,
            or `SSL_CERT_FILE`/`SSL_CERT_DIR`), False, a CA bundle path, or an `ssl.SSLContext`.
        cert: a client certificate: a file, `(cert, key)` or `(cert, key, password)`.
        http2: send over httpx's stock transport with HTTP/2 (`pip install embedkit[http2]`).
        max_response_size: a response body larger than this (bytes as received) is a
            `ResponseError`; None: no limit.
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
        encoding_format: Literal["base64", "float"] = "base64",
        max_batch_size: int | None = None,
        max_batch_chars: int | None = 500_000,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        adaptive_concurrency: bool = True,
        requests_per_second: float | None = None,
        inputs_per_second: float | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        wait_for_model: bool | None = None,
        use_cache: bool | None = None,
        dedup: bool = True,
        cache_size: int = 0,
        backend: Backend | None = None,
        device: str | None = None,
        verify: VerifyTypes = True,
        cert: CertTypes | None = None,
        http2: bool = False,
        max_response_size: int | None = DEFAULT_MAX_RESPONSE_SIZE,
        quota: Quota | None = None,
    ) -> None:
        if max_batch_size is None:
            max_batch_size = default_max_batch_size(api)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if dimensions is not None and dimensions < 1:
            raise ValueError("dimensions must be a positive integer")
        if truncation_direction not in (None, "left", "right"):
            raise ValueError("truncation_direction must be 'left' or 'right'")
        if pooling not in (None, "mean", "cls"):
            raise ValueError("pooling must be 'mean' or 'cls'")
        for name, rate in (
            ("requests_per_second", requests_per_second),
            ("inputs_per_second", inputs_per_second),
        ):
            if rate is not None and not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"{name} must be a positive number")
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        _check_timeout(timeout)
        self.model = model
        self.api: str = api
        self._url = url
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_concurrency
        self._max_batch_chars = max_batch_chars
        self._adaptive = adaptive_concurrency
        self._rps = requests_per_second
        self._ips = inputs_per_second
        self._retry = retry
        self._dedup = dedup
        self._cache_size = cache_size
        self._options = Options(
            normalize=normalize,
            prompt_name=prompt_name,
            truncate=truncate,
            truncation_direction=truncation_direction,
            dimensions=dimensions,
            pooling=pooling,
        )
        if backend is not None:
            self._backend: Backend = backend
        elif api == "local":
            for name, value in (("url", url), ("token", token), ("http_client", http_client)):
                if value is not None:
                    raise ValueError(
                        f"api='local' runs the model in this process; {name}= does not apply"
                    )
            if encoding_format != "base64":
                raise ValueError(
                    "api='local' returns arrays directly; encoding_format= does not apply"
                )
            from ._backends import LocalBackend  # the optional [local] extra

            self._backend = LocalBackend(model, options=self._options, device=device)
        elif api in PROTOCOLS:
            endpoints = _endpoints(url)
            self.endpoints = endpoints

            def http_backend(
                endpoint_url: str | None, endpoint_token: str | None, cap: int
            ) -> HttpBackend:
                if api == "openai":
                    protocol: Any = OpenAIProtocol(
                        model=model,
                        url=endpoint_url,
                        options=self._options,
                        encoding_format=encoding_format,
                    )
                else:
                    protocol = PROTOCOLS[api](model=model, url=endpoint_url, options=self._options)
                return HttpBackend(
                    protocol,
                    token=resolve_token(api, endpoint_token),
                    client=http_client,
                    transport=transport,
                    timeout=timeout,
                    max_connections=max(cap * 2, 16),
                    wait_for_model=wait_for_model,
                    use_cache=use_cache,
                    verify=verify,
                    cert=cert,
                    http2=http2,
                    max_response_size=max_response_size,
                )

            if len(endpoints) <= 1:
                one = endpoints[0] if endpoints else None
                if one is not None and one.max_concurrency is not None:
                    self.max_concurrency = max_concurrency = one.max_concurrency
                self._backend = http_backend(
                    one.url if one else None,
                    one.token if one is not None and one.token is not None else token,
                    max_concurrency,
                )
            else:
                replicas = []
                for endpoint in endpoints:
                    cap = endpoint.max_concurrency or max_concurrency
                    backend_ = http_backend(
                        endpoint.url,
                        endpoint.token if endpoint.token is not None else token,
                        cap,
                    )
                    replicas.append(
                        Replica(
                            backend_,
                            name=backend_.describe().split(" ", 1)[1],
                            probe=backend_.probe,
                            max_concurrency=cap,
                            weight=endpoint.weight,
                            adaptive=adaptive_concurrency,
                        )
                    )
                self._backend = BalancedBackend(replicas)
                self.max_concurrency = sum(r.concurrency.maximum for r in replicas)
        else:
            raise ValueError(f"api must be one of 'hf', 'tei', 'openai', 'local', not {api!r}")
        self._state = _State.UNOPENED
        # a quota shared with other embedders (a Ray fleet's, a Redis one); None: this
        # embedder's own limits (requests_per_second, inputs_per_second, 429s)
        self._quota: Quota | None = quota
        self._scheduler: Scheduler | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.info = BackendInfo()

    def identity(self) -> dict[str, Any]:
        """What decides the vectors this embedder gives (`embed_file`'s resume fingerprint).

        The URL may carry credentials, so only a hash of it is kept.
        """
        import hashlib

        url = self._url
        if url is not None and not isinstance(url, str):
            url = " ".join(e.url for e in _endpoints(url))
        options = self._options
        return {
            "api": self.api,
            "model": self.model,
            "url_sha256": hashlib.sha256(url.encode()).hexdigest()[:16] if url else None,
            "normalize": options.normalize,
            "prompt_name": options.prompt_name,
            "dimensions": options.dimensions,
            "truncate": options.truncate,
        }

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
            info = await self._backend.start()
            self.info = info
            max_batch = self.max_batch_size
            if info.max_batch_size is not None:
                max_batch = min(max_batch, info.max_batch_size)
            max_conc = self.max_concurrency
            balanced = self._backend if isinstance(self._backend, BalancedBackend) else None
            if balanced is not None:
                # The scheduler's total is the sum of the replicas' caps (each within its /info).
                max_conc = balanced.fit_caps(max_batch)
            elif info.max_inputs_in_flight is not None:
                # TEI counts inputs, not requests, against max_concurrent_requests.
                max_conc = max(1, min(max_conc, info.max_inputs_in_flight // max_batch))
            retry = self._retry
            cooldown = Cooldown(sleep=retry.sleep) if retry is not None else Cooldown()
            scheduler = Scheduler(
                self._backend.embed_batch,
                max_batch_size=max_batch,
                max_batch_chars=self._max_batch_chars,
                concurrency=AdaptiveConcurrency(max_conc, adaptive=self._adaptive),
                retry=retry,
                cooldown=cooldown,
                request_rate=TokenBucket(self._rps) if self._rps else None,
                input_rate=TokenBucket(self._ips, burst=max(float(max_batch), self._ips / 10))
                if self._ips
                else None,
                dedup=self._dedup,
                cache_size=self._cache_size,
                learn_rate=self._adaptive,
                quota=self._quota,
            )
            scheduler.dimension = info.dimension
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            stack.callback(scheduler.close)
            await tg.start(scheduler.run)
            if balanced is not None:
                await tg.start(balanced.run)  # probes ejected replicas
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

    # -------------------------------------------------------------------- embedding

    @property
    def dimension(self) -> int | None:
        """The embedding size, once known (from the server's limits or a first answer)."""
        if self._scheduler is not None and self._scheduler.dimension is not None:
            return self._scheduler.dimension
        return self.info.dimension

    async def embed(self, text: str) -> Matrix:
        """Embed one text: a float32 vector of shape (dim,).

        Concurrent calls from many tasks share batched requests.
        """
        matrix = await self.running_scheduler().submit([check_text(text)])
        row: Matrix = matrix[0]
        return row

    async def embed_many(self, texts: Sequence[str] | Iterable[str]) -> Matrix:
        """Embed many texts: a float32 matrix of shape (len(texts), dim), row i for text i.

        The list is cut into full batches sent concurrently (and shared with any concurrent
        `embed` calls). An empty list gives shape (0, dim) when dim is known.
        """
        items = check_texts(texts)
        scheduler = self.running_scheduler()
        if not items:
            dim = self.dimension
            if dim is None:
                raise ValueError(
                    "embed_many([]) cannot know the embedding size before the first answer; "
                    "pass dimensions= or embed something first"
                )
            return np.empty((0, dim), dtype=np.float32)
        return await scheduler.submit(items)

    def stats(self) -> SchedulerStats:
        """Counters, limits and latency percentiles (a frozen snapshot).

        With several URLs, `endpoints` holds each replica's figures (`EndpointStats`).
        `retries["stale connection"]` counts requests embedkit's transport sent again
        because the server had closed a kept-alive connection before reading them.
        """
        stats = self.running_scheduler().stats()
        backend = self._backend
        if isinstance(backend, HttpBackend) and backend.resent_requests:
            retries = {**stats.retries, "stale connection": backend.resent_requests}
            stats = dataclasses.replace(stats, retries=retries)
        elif isinstance(backend, BalancedBackend):
            stats = dataclasses.replace(stats, endpoints=backend.endpoint_stats())
        return stats

    # ------------------------------------------------------------- bulk (in _bulk.py)

    def embed_stream(
        self,
        texts: Iterable[str] | AsyncIterable[str],
        *,
        block_size: int = 1024,
        max_blocks_in_flight: int | None = None,
        sort_by_length: bool = False,
        dedup: bool = True,
    ) -> AsyncGenerator[tuple[int, Matrix], None]:
        """Embed an iterable or async iterable of any length, in order, with bounded memory.

        `async for start, matrix in emb.embed_stream(texts):` — `matrix[k]` is the vector of
        text `start + k`; blocks come in input order and hold `block_size` rows (the last may
        hold fewer). At most `max_blocks_in_flight` blocks are read ahead (default: enough
        to keep every concurrency slot busy), so a generator over a huge file is never read
        further than the embedder can use, and neither the input nor the output is held.
        Duplicates within a block are sent once; `sort_by_length` groups texts of similar
        length into the same requests (then restores the order). A non-str, empty or
        invalid (lone surrogate) text raises `TypeError`/`ValueError` naming its index, after
        the blocks before it.

        A plain iterable is read on the event loop, a block at a time: if reading it can
        block for long (a network disk), pass an async iterable, or use `Embedder.embed_stream`,
        which reads in the calling thread. Leaving the loop early drops what was queued (at
        once with `contextlib.aclosing`, otherwise when the generator is collected).
        """
        from ._bulk import astream, default_depth

        scheduler = self.running_scheduler()
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        depth = max_blocks_in_flight or default_depth(
            block_size, self.max_concurrency, scheduler.max_batch_size
        )
        return astream(
            scheduler,
            texts,
            block_size=block_size,
            depth=depth,
            sort_by_length=sort_by_length,
            dedup=dedup,
        )

    async def encode(
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
        """`SentenceTransformer.encode`, for people who know it: (n, dim) float32, (dim,) for a str.

        Args:
            sentences: a string, or an iterable of strings.
            batch_size: texts per step of the work (and of the progress bar). Requests are
                cut by the embedder's `max_batch_size`, because they are shared with every
                other caller of this embedder.
            show_progress_bar: a bar on stderr; None shows it when the "embedkit" logger
                is at INFO or DEBUG, as sentence-transformers does.
            normalize_embeddings: scale every row to unit length, here in numpy (so it holds
                whatever the server does). False adds nothing: rows are what the embedder
                returns (TEI normalizes unless the embedder has `normalize=False`).
            prompt_name: must equal the embedder's own `prompt_name` (the server applies it,
                so it cannot change per call); anything else raises `ValueError`.
            prompt: a literal string prepended to every sentence, here in the client.
            convert_to_numpy: only True (the result is always a numpy array).
            precision: only "float32".
            truncate_dim: keep the first `truncate_dim` dimensions (before normalizing).

        Like sentence-transformers, the whole input is sorted by length before it is sent
        and put back in order after; duplicates are sent once.
        """
        from ._bulk import encode

        if not convert_to_numpy:
            raise ValueError("convert_to_numpy=False is not supported: encode returns numpy")
        result = await encode(
            self.running_scheduler(),
            sentences,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            normalize_embeddings=normalize_embeddings,
            prompt_name=prompt_name,
            configured_prompt_name=self._options.prompt_name,
            prompt=prompt,
            precision=precision,
            truncate_dim=truncate_dim,
            max_concurrency=self.max_concurrency,
        )
        return result


class Embedder:
    """The blocking twin of `AsyncEmbedder`, for scripts and notebooks.

    It runs an `AsyncEmbedder` on an event loop in a background thread (an anyio blocking
    portal). Takes the same arguments as `AsyncEmbedder` (a test keeps the two signatures in
    step). Use `with Embedder(...) as emb: emb.embed_many(texts)`.
    Calls from several threads at once are coalesced like concurrent async calls.
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
        encoding_format: Literal["base64", "float"] = "base64",
        max_batch_size: int | None = None,
        max_batch_chars: int | None = 500_000,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        adaptive_concurrency: bool = True,
        requests_per_second: float | None = None,
        inputs_per_second: float | None = None,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        timeout: httpx.Timeout | float | None = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        wait_for_model: bool | None = None,
        use_cache: bool | None = None,
        dedup: bool = True,
        cache_size: int = 0,
        backend: Backend | None = None,
        device: str | None = None,
        verify: VerifyTypes = True,
        cert: CertTypes | None = None,
        http2: bool = False,
        max_response_size: int | None = DEFAULT_MAX_RESPONSE_SIZE,
        quota: Quota | None = None,
    ) -> None:
        self._async = AsyncEmbedder(
            model,
            url=url,
            api=api,
            token=token,
            normalize=normalize,
            prompt_name=prompt_name,
            truncate=truncate,
            truncation_direction=truncation_direction,
            dimensions=dimensions,
            pooling=pooling,
            encoding_format=encoding_format,
            max_batch_size=max_batch_size,
            max_batch_chars=max_batch_chars,
            max_concurrency=max_concurrency,
            adaptive_concurrency=adaptive_concurrency,
            requests_per_second=requests_per_second,
            inputs_per_second=inputs_per_second,
            retry=retry,
            timeout=timeout,
            transport=transport,
            http_client=http_client,
            wait_for_model=wait_for_model,
            use_cache=use_cache,
            dedup=dedup,
            cache_size=cache_size,
            backend=backend,
            device=device,
            verify=verify,
            cert=cert,
            http2=http2,
            max_response_size=max_response_size,
            quota=quota,
        )
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

    def embed(self, text: str) -> Matrix:
        """Embed one text: a float32 vector of shape (dim,)."""
        result: Matrix = self.running_portal().call(self._async.embed, text)
        return result

    def embed_many(self, texts: Sequence[str] | Iterable[str]) -> Matrix:
        """Embed many texts: a float32 matrix of shape (len(texts), dim)."""
        result: Matrix = self.running_portal().call(self._async.embed_many, texts)
        return result

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
        depth = max_blocks_in_flight or default_depth(
            block_size, self._async.max_concurrency, scheduler.max_batch_size
        )
        return stream_blocking(
            portal,
            scheduler,
            texts,
            block_size=block_size,
            depth=depth,
            sort_by_length=sort_by_length,
            dedup=dedup,
        )

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
        result: Matrix = self.running_portal().call(
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
