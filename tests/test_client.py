"""AsyncEmbedder and Embedder: life cycle, the blocking twin, reprs, statistics."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Literal

import anyio
import httpx
import numpy as np
import orjson
import pytest

import embedkit
from embedkit import Connection, Limits

from .fakes import vector_for, vectors_for


class Server:
    """A MockTransport HF server that records the size of every batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        inputs = orjson.loads(request.content)["inputs"]
        self.batches.append(len(inputs))
        return httpx.Response(200, json=vectors_for(inputs).tolist())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


@pytest.mark.asyncio
async def test_using_an_unopened_embedder_says_how_to_open_it() -> None:
    emb = embedkit.AsyncEmbedder("m", connection=Connection(transport=Server().transport()))
    with pytest.raises(embedkit.ClientClosedError, match="async with"):
        await emb.embed("x")


@pytest.mark.asyncio
async def test_a_closed_embedder_refuses_work_and_cannot_be_reopened() -> None:
    emb = embedkit.AsyncEmbedder("m", connection=Connection(transport=Server().transport()))
    async with emb:
        await emb.embed("x")
    with pytest.raises(embedkit.ClientClosedError, match="closed"):
        await emb.embed("y")
    with pytest.raises(embedkit.ClientClosedError):
        async with emb:
            pass
    assert "state=closed" in repr(emb)


@pytest.mark.asyncio
async def test_leaving_the_block_fails_calls_still_waiting() -> None:
    gate = anyio.Event()

    async def slow_handler(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200, json=[[1.0]])

    outcome: list[BaseException] = []
    transport = httpx.MockTransport(slow_handler)
    async with (
        anyio.create_task_group() as tg,
        embedkit.AsyncEmbedder("m", connection=Connection(transport=transport)) as emb,
    ):

        async def caller() -> None:
            try:
                await emb.embed("waiting")
            except embedkit.ClientClosedError as exc:
                outcome.append(exc)

        tg.start_soon(caller)
        while emb.stats().in_flight == 0:
            await anyio.lowlevel.checkpoint()
    assert len(outcome) == 1


@pytest.mark.asyncio
async def test_embed_returns_a_vector_and_embed_many_a_matrix() -> None:
    async with embedkit.AsyncEmbedder(
        "m", connection=Connection(transport=Server().transport())
    ) as emb:
        vector = await emb.embed("hello")
        matrix = await emb.embed_many(("a", "b", "c"))  # any iterable
        assert emb.dimension == 32
        empty = await emb.embed_many([])
    assert vector.shape == (32,)
    assert vector.dtype == np.float32
    np.testing.assert_array_equal(vector, vector_for("hello"))
    assert matrix.shape == (3, 32)
    assert matrix.flags.c_contiguous
    assert empty.shape == (0, 32)


@pytest.mark.asyncio
async def test_stats_are_a_frozen_snapshot() -> None:
    server = Server()
    async with embedkit.AsyncEmbedder(
        "m", connection=Connection(transport=server.transport())
    ) as emb:
        await emb.embed_many([f"t{i}" for i in range(100)])
        stats = emb.stats()
    assert stats.texts == 100
    assert stats.requests == len(server.batches)
    assert stats.mean_batch_size == pytest.approx(100 / len(server.batches))
    assert stats.latency_p50 is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.requests = 0  # type: ignore[misc]


def test_the_blocking_embedder_matches_the_async_one() -> None:
    server = Server()
    with embedkit.Embedder("m", connection=Connection(transport=server.transport())) as emb:
        matrix = emb.embed_many(["a", "b"])
        vector = emb.embed("c")
        assert emb.dimension == 32
        assert emb.stats().texts == 3
        assert repr(emb).startswith("<Embedder ")
    np.testing.assert_array_equal(matrix, vectors_for(["a", "b"]))
    np.testing.assert_array_equal(vector, vector_for("c"))
    with pytest.raises(embedkit.ClientClosedError):
        emb.embed("after close")


def test_calls_from_many_threads_are_coalesced() -> None:
    server = Server()
    texts = [f"thread text {i}" for i in range(400)]
    with (
        embedkit.Embedder(
            "m",
            connection=Connection(transport=server.transport()),
            limits=Limits(max_concurrency=2),
        ) as emb,
        concurrent.futures.ThreadPoolExecutor(16) as pool,
    ):
        vectors = list(pool.map(emb.embed, texts))
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_array_equal(vector, vector_for(text))
    assert len(server.batches) < len(texts) / 2


def test_constructor_rejects_bad_settings_at_once() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        embedkit.AsyncEmbedder("m", limits=Limits(max_batch_size=0))


def test_the_default_batch_size_follows_the_api_and_an_explicit_one_wins() -> None:
    openai = embedkit.AsyncEmbedder("m", api="openai", url="http://127.0.0.1:9/v1")
    assert openai.max_batch_size == embedkit.OPENAI_MAX_BATCH_SIZE == 64
    apis: tuple[Literal["hf", "tei"], ...] = ("hf", "tei")
    for api in apis:
        emb = embedkit.AsyncEmbedder("m", api=api, url="http://127.0.0.1:9")
        assert emb.max_batch_size == embedkit.DEFAULT_MAX_BATCH_SIZE == 32
    told = embedkit.AsyncEmbedder(
        "m", limits=Limits(max_batch_size=8), api="openai", url="http://127.0.0.1:9/v1"
    )
    assert told.max_batch_size == 8
    with embedkit.Embedder("m", api="openai", url="http://127.0.0.1:9/v1") as blocking:
        assert blocking.stats().max_batch_size == 64
    with pytest.raises(ValueError, match="max_concurrency"):
        embedkit.AsyncEmbedder("m", limits=Limits(max_concurrency=0))
    with pytest.raises(ValueError, match="api must be"):
        embedkit.AsyncEmbedder("m", api="grpc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="requests_per_second"):
        embedkit.AsyncEmbedder("m", limits=Limits(requests_per_second=0))
    with pytest.raises(ValueError, match="prompt_name"):
        embedkit.AsyncEmbedder("m", api="openai", prompt_name="query")
    with pytest.raises(ValueError, match="url"):
        embedkit.AsyncEmbedder(api="tei")


def test_retry_policy_reads_well_and_compares_by_value() -> None:
    assert embedkit.RetryPolicy(attempts=3) == embedkit.RetryPolicy(attempts=3)
    assert embedkit.RetryPolicy(attempts=3) != embedkit.RetryPolicy(attempts=4)
    assert repr(embedkit.RetryPolicy(attempts=3)).startswith("RetryPolicy(attempts=3,")
    with pytest.raises(ValueError, match="attempts"):
        embedkit.RetryPolicy(attempts=0)
