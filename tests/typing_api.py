"""The public API as a type checker sees it. Never run: mypy checks it (pyproject's mypy `files`).

Each line uses embedkit the way the docs do, and `assert_type` pins what comes back. A line
marked `# type: ignore[...]` must be an error: mypy's strict mode warns about an unused ignore,
so if a mistake stops being caught, the check fails.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import embedkit
from embedkit import (
    AsyncEmbedder,
    BackendInfo,
    Connection,
    Embedder,
    EmbedkitError,
    Limits,
    RateLimitError,
    RetryPolicy,
    SchedulerStats,
    StatusError,
)

Vectors = npt.NDArray[np.float32]


async def no_sleep(seconds: float) -> None:
    """Retries without waiting, as the testing guide shows."""


def handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=[[0.0, 1.0]])


async def texts_later() -> AsyncIterator[str]:
    yield "streamed"


async def async_api() -> None:
    emb = AsyncEmbedder(
        "thenlper/gte-large",
        connection=Connection(timeout=httpx.Timeout(30.0), transport=httpx.MockTransport(handler)),
        limits=Limits(max_batch_size=32, max_concurrency=8),
        api="hf",
        token="hf_...",
        normalize=True,
        truncate=True,
        truncation_direction="right",
        retry=RetryPolicy(attempts=3, sleep=no_sleep),
    )
    async with emb as opened:
        assert_type(opened, AsyncEmbedder)
        assert_type(await emb.embed("one"), Vectors)
        assert_type(await emb.embed_many(["one", "two"]), Vectors)
        assert_type(await emb.embed_many(t for t in ("a", "b")), Vectors)
        assert_type(await emb.encode(["one"], batch_size=16, normalize_embeddings=True), Vectors)
        assert_type(emb.dimension, int | None)
        assert_type(emb.info, BackendInfo)
        assert_type(emb.stats(), SchedulerStats)
        assert_type(emb.stats().requests, int)
        assert_type(emb.stats().latency_p50, float | None)
        async for start, block in emb.embed_stream(["a", "b"], block_size=2):
            assert_type(start, int)
            assert_type(block, Vectors)
        async for _start, _block in emb.embed_stream(texts_later()):
            pass

        await emb.embed(b"bytes")  # type: ignore[arg-type]
        await emb.embed_many([1, 2])  # type: ignore[list-item]
    await emb.aclose()

    AsyncEmbedder("m", api="grpc")  # type: ignore[arg-type]
    AsyncEmbedder("m", pooling="max")  # type: ignore[arg-type]
    AsyncEmbedder("m", truncation_direction="up")  # type: ignore[arg-type]
    AsyncEmbedder("m", connection=Connection(encoding_format="hex"), api="openai")  # type: ignore[arg-type]
    AsyncEmbedder("m", "http://positional.url")  # type: ignore[call-arg]
    AsyncEmbedder(api="tei", url="http://127.0.0.1:8080", retry=None)
    AsyncEmbedder(
        "text-embedding-3-small",
        connection=Connection(encoding_format="float"),
        api="openai",
        dimensions=256,
    )
    AsyncEmbedder("m", connection=Connection(http_client=httpx.AsyncClient()))
    AsyncEmbedder(
        connection=Connection(verify="/ca.pem", cert=("c.pem", "k.pem")),
        api="tei",
        url="https://tei",
    )
    AsyncEmbedder(
        "m",
        connection=Connection(
            verify=ssl.create_default_context(), http2=True, max_response_size=None
        ),
    )
    AsyncEmbedder("m", connection=Connection(verify=1.5))  # type: ignore[arg-type]


def blocking_api() -> None:
    with Embedder("thenlper/gte-large") as emb:
        assert_type(emb, Embedder)
        assert_type(emb.embed("one"), Vectors)
        assert_type(emb.embed_many(["one", "two"]), Vectors)
        assert_type(emb.encode("one"), Vectors)
        assert_type(emb.dimension, int | None)
        assert_type(emb.aio, AsyncEmbedder)
        stream = emb.embed_stream(iter(["a", "b"]))
        assert_type(stream, Iterator[tuple[int, Vectors]])
        emb.embed(None)  # type: ignore[arg-type]
    emb.close()


def errors() -> None:
    try:
        pass
    except RateLimitError as exc:
        assert_type(exc.status_code, int)
        assert_type(exc.message, str)
        assert_type(exc.retry_after, float | None)
        assert_type(exc.request_id, str | None)
    except embedkit.BatchTooLargeError as exc:
        assert_type(exc.max_batch_size, int | None)
    except StatusError as exc:
        assert_type(exc.status_code, int)
    except EmbedkitError:
        pass


def configuration() -> None:
    assert_type(embedkit.DEFAULT_MAX_BATCH_SIZE, int)
    assert_type(embedkit.OPENAI_MAX_BATCH_SIZE, int)
    assert_type(embedkit.DEFAULT_MAX_CONCURRENCY, int)
    assert_type(embedkit.DEFAULT_RETRY, RetryPolicy)
    assert_type(embedkit.DEFAULT_TIMEOUT, httpx.Timeout)
    assert_type(embedkit.__version__, str)
    policy = RetryPolicy(attempts=5, backoff=0.1, max_backoff=2.0, timeout=60.0)
    assert_type(policy == embedkit.DEFAULT_RETRY, bool)
    RetryPolicy(5)  # type: ignore[call-arg]
    RetryPolicy(sleep=lambda seconds: None)  # type: ignore[arg-type,return-value]


def similarity(corpus: Vectors, queries: Vectors) -> None:
    indices, scores = embedkit.top_k(queries, corpus, k=5)
    assert_type(indices, npt.NDArray[np.intp])
    assert_type(scores, Vectors)
    embedkit.top_k(queries, corpus, k=5, chunk_size=1024)
    embedkit.cosine_similarity(queries, corpus)
    embedkit.top_k(queries, corpus, 5, 1024)  # type: ignore[call-arg]
    packed = embedkit.quantize(corpus, "ubinary")
    embedkit.top_k(embedkit.quantize(queries, "ubinary"), packed, k=5, bits=True)
    embedkit.cosine_similarity(packed, packed, bits=True)
    assert_type(embedkit.unpackbits(packed, 384), npt.NDArray[np.uint8])
    embedkit.quantize(corpus, "float16")  # type: ignore[arg-type]


async def kinds_and_dtypes() -> None:
    async with AsyncEmbedder(
        "embed-english-v3.0", api="cohere", kind="document", dtype="int8"
    ) as emb:
        await emb.embed("q", kind="query")
        await emb.embed_many(["d"], kind="document")
        await emb.embed("q", kind="passage")  # type: ignore[arg-type]
    AsyncEmbedder("m", api="mistral")  # type: ignore[arg-type]
    AsyncEmbedder("m", api="gemini", dtype="float16")  # type: ignore[arg-type]


class MyBackend:
    """A custom backend satisfies the `Backend` protocol structurally."""

    async def start(self) -> BackendInfo:
        return BackendInfo(dimension=2)

    async def embed_batch(self, texts: list[str]) -> Vectors:
        return np.zeros((len(texts), 2), dtype=np.float32)

    async def aclose(self) -> None:
        pass

    def describe(self) -> str:
        return "mine"


def custom_backend() -> None:
    backend: embedkit.Backend = MyBackend()
    AsyncEmbedder(backend=backend)
    AsyncEmbedder(backend=object())  # type: ignore[arg-type]


def bulk_files(updates: list[embedkit.FileProgress]) -> None:
    result = embedkit.embed_file(
        "docs.jsonl", "docs.parquet", id_field="id", resume=True, api="tei", url="http://tei"
    )
    assert_type(result, embedkit.FileResult)
    assert_type(result.rows, int)
    embedkit.embed_file("a.txt", "a.npy", limits=Limits(max_concurrency=4), progress=updates.append)
    embedkit.embed_file("a.txt", "a.npy", max_concurency=4)  # type: ignore[call-arg]
    embedkit.embed_file("a.txt", "a.npy", limits=Limits(max_batch_size="32"))  # type: ignore[arg-type]
    embedkit.embed_file("a.txt", "a.npy", on_bad="drop")  # type: ignore[arg-type]
    with Embedder(api="tei", url="http://tei") as emb:
        embedkit.embed_file("a.txt", "a.npy", embedder=emb)
    Embedder(limits=Limits(max_batch_size="32"), api="tei")  # type: ignore[arg-type]


async def bulk_files_async(emb: AsyncEmbedder) -> None:
    result = await embedkit.aembed_file("a.csv", "a.parquet", column="body", embedder=emb)
    assert_type(result.output, Path)
    try:
        await embedkit.aembed_file("a.csv", "a.parquet", api="tei", url="http://tei")
    except embedkit.CorpusError as exc:
        assert_type(exc, embedkit.CorpusError)
