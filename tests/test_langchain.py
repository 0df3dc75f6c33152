"""`embedkit.langchain.EmbedkitEmbeddings`: LangChain's own standard suites, and what they skip.

The standard suites (`langchain-tests`) run against `EmbedkitEmbeddings` pointed at a real
`embedkit serve` process on loopback. The rest checks what a LangChain user relies on:
configuration as a pydantic model, a hidden token, typed errors, coalescing of concurrent
async calls, and the sync and async methods from every kind of caller.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

import embedkit
from embedkit import Connection, Limits
from embedkit.langchain import EmbedkitEmbeddings

from .fakes import TeiRecorder

# The standard suites are written for pytest-asyncio's auto mode; this project runs strict
# mode, so their coroutine tests get the asyncio mark here (on the inherited functions
# themselves: the suite refuses subclasses that override its tests).
for _name in ("test_aembed_query", "test_aembed_documents"):
    pytest.mark.asyncio(getattr(EmbeddingsIntegrationTests, _name))


class TestStandardUnit(EmbeddingsUnitTests):
    """LangChain's unit suite: construction, and the token read from the environment."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return EmbedkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "org/model"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"HF_TOKEN": "hf_from_env"}, {"model": "org/model"}, {"token": "hf_from_env"}


class TestStandardIntegration(EmbeddingsIntegrationTests):
    """LangChain's integration suite against `embedkit serve` (TEI protocol) on loopback."""

    url = ""

    @pytest.fixture(autouse=True)
    def _server(self, serve_url: str) -> None:
        type(self).url = serve_url

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return EmbedkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"api": "tei", "url": self.url}

    @pytest.fixture
    def model(self) -> Iterator[Embeddings]:
        with EmbedkitEmbeddings(**self.embedding_model_params) as emb:
            yield emb


# ------------------------------------------------------------------------------ helpers


def make(recorder: TeiRecorder, **options: Any) -> EmbedkitEmbeddings:
    return EmbedkitEmbeddings(
        connection=Connection(transport=httpx.MockTransport(recorder)),
        api="tei",
        url="http://tei.test",
        retry=None,
        **options,
    )


# ------------------------------------------------------------------------ configuration


def test_every_asyncembedder_option_is_a_field() -> None:
    parameters = inspect.signature(embedkit.AsyncEmbedder).parameters.values()
    options = {p.name for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD}
    assert options <= set(EmbedkitEmbeddings.model_fields)


def test_unknown_options_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="max_batch"):
        EmbedkitEmbeddings(model="org/model", max_batch=4)  # type: ignore[call-arg]


def test_bad_option_fails_at_construction_without_echoing_the_token() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be at least 1") as caught:
        EmbedkitEmbeddings(limits=Limits(max_batch_size=0), model="org/model", token="hf_SECRET")
    assert "hf_SECRET" not in str(caught.value)


def test_token_is_never_shown() -> None:
    emb = EmbedkitEmbeddings(model="org/model", token="hf_SECRET")
    assert isinstance(emb.token, pydantic.SecretStr)
    assert emb.token.get_secret_value() == "hf_SECRET"
    for shown in (repr(emb), str(emb), str(emb.model_dump()), emb.model_dump_json()):
        assert "hf_SECRET" not in shown
    emb.close()


def test_is_a_langchain_embeddings_with_native_async_methods() -> None:
    assert issubclass(EmbedkitEmbeddings, Embeddings)
    # not LangChain's default, which runs the sync method in a thread pool
    assert EmbedkitEmbeddings.aembed_query is not Embeddings.aembed_query
    assert EmbedkitEmbeddings.aembed_documents is not Embeddings.aembed_documents


# ------------------------------------------------------------------------------ behaviour


def test_rows_come_back_in_order_and_as_lists() -> None:
    recorder = TeiRecorder(index=True)
    texts = [f"text number {i}" + "x" * (i % 7) for i in range(100)]
    with make(recorder, limits=Limits(max_batch_size=16)) as emb:
        rows = emb.embed_documents(texts)
        matrix = emb.embed_matrix(texts)
        assert emb.embed_documents([]) == []
    assert [row[0] for row in rows] == [float(len(t)) for t in texts]
    assert all(type(v) is float for row in rows for v in row)
    assert matrix.dtype == np.float32
    assert matrix.shape == (100, 3)
    assert np.array_equal(matrix[:, 0], [len(t) for t in texts])
    assert max(len(b) for b in recorder.batches) <= 16


def test_concurrent_aembed_query_calls_share_requests() -> None:
    recorder = TeiRecorder(index=True)
    texts = [f"query {i}" for i in range(300)]

    async def main(emb: EmbedkitEmbeddings) -> list[list[float]]:
        return await asyncio.gather(*(emb.aembed_query(t) for t in texts))

    with make(recorder, limits=Limits(max_batch_size=32, max_concurrency=2)) as emb:
        rows = asyncio.run(main(emb))
        stats = emb.stats()
    assert [row[0] for row in rows] == [float(len(t)) for t in texts]
    assert stats.texts == 300
    assert stats.requests == len(recorder.batches) <= 20  # 300 calls, ~10 full batches


def test_successive_event_loops_share_one_embedder() -> None:
    recorder = TeiRecorder(index=True)
    with make(recorder) as emb:
        first = asyncio.run(emb.aembed_query("first loop"))
        second = asyncio.run(emb.aembed_documents(["second loop", "again"]))
        third = emb.embed_query("sync, between loops")
    assert first[0] == len("first loop")
    assert [r[0] for r in second] == [len("second loop"), len("again")]
    assert third[0] == len("sync, between loops")


def test_sync_methods_work_inside_a_running_event_loop() -> None:
    """A Jupyter cell calls `embed_query` while the notebook's loop is running."""
    recorder = TeiRecorder(index=True)

    async def cell(emb: EmbedkitEmbeddings) -> list[float]:
        return emb.embed_query("called from inside a running loop")

    with make(recorder) as emb:
        row = asyncio.run(cell(emb))
    assert row[0] == len("called from inside a running loop")


def test_callers_on_several_threads_and_loops_coalesce() -> None:
    """FastAPI sync routes run in worker threads; each thread here also runs its own loop."""
    recorder = TeiRecorder(index=True)
    results: dict[int, list[list[float]]] = {}
    barrier = threading.Barrier(4)

    def worker(k: int, emb: EmbedkitEmbeddings) -> None:
        async def main() -> list[list[float]]:
            barrier.wait()
            return await asyncio.gather(*(emb.aembed_query(f"t{k}-{i}") for i in range(50)))

        results[k] = asyncio.run(main())

    with make(recorder, limits=Limits(max_concurrency=1)) as emb:
        threads = [threading.Thread(target=worker, args=(k, emb)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        stats = emb.stats()
    for k in range(4):
        assert [r[0] for r in results[k]] == [float(len(f"t{k}-{i}")) for i in range(50)]
    assert stats.texts == 200
    assert stats.requests < 200 / 4  # four loops, one queue: batches mix their texts


def test_errors_are_embedkits_typed_exceptions() -> None:
    with make(TeiRecorder(status=401, index=True)) as emb:
        with pytest.raises(embedkit.AuthenticationError):
            emb.embed_query("refused")
        with pytest.raises(embedkit.AuthenticationError):
            asyncio.run(emb.aembed_documents(["refused too"]))
        with pytest.raises(ValueError, match="empty string"):
            emb.embed_query("")
        with pytest.raises(TypeError):
            emb.embed_documents([None])  # type: ignore[list-item]


def test_close_is_explicit_and_final() -> None:
    recorder = TeiRecorder(index=True)
    emb = make(recorder)
    assert emb.embed_query("open") == [4.0, 0.0, 1.0]
    emb.close()
    emb.close()  # twice is fine
    with pytest.raises(embedkit.ClientClosedError):
        emb.embed_query("closed")
    with pytest.raises(embedkit.ClientClosedError):
        asyncio.run(emb.aembed_query("closed"))


@pytest.mark.asyncio
async def test_aclose_from_async_code() -> None:
    recorder = TeiRecorder(index=True)
    async with make(recorder) as emb:
        assert (await emb.aembed_query("abc"))[0] == 3.0
    with pytest.raises(embedkit.ClientClosedError):
        await emb.aembed_query("closed")


def test_a_vector_store_built_and_searched() -> None:
    """LangChain's own in-memory store drives both methods."""
    recorder = TeiRecorder(index=True)
    texts = ["a", "bbbb", "cc"]
    with make(recorder) as emb:
        store = InMemoryVectorStore.from_texts(texts, emb)
        found = store.similarity_search_by_vector(emb.embed_query("zzzz"), k=3)
    assert {d.page_content for d in found} == set(texts)


def test_flat_keywords_still_work_and_warn() -> None:
    """The framework classes take the deprecated flat keywords like AsyncEmbedder does."""
    with pytest.warns(DeprecationWarning, match=r"max_concurrency= as flat keyword"):
        emb = EmbedkitEmbeddings(model="org/model", max_concurrency=3)
    with emb:
        assert emb.limits == embedkit.Limits(max_concurrency=3)
        assert "max_concurrency" not in emb.model_dump()  # folded into limits
