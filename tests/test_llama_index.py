"""`embedkit.llama_index.EmbedkitEmbedding`: a real index, real similarity, rows in order.

The index tests embed with `embedkit serve` (the packaged MiniLM, TEI protocol) on loopback,
so a paraphrase must really rank first; the batching tests use a recording MockTransport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pydantic
import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding

import embedkit
from embedkit import Connection, Limits
from embedkit.llama_index import EmbedkitEmbedding

from .fakes import TeiRecorder

CORPUS = [
    "The cat is sleeping on the warm windowsill.",
    "Interest rates were raised by the central bank this morning.",
    "The football match was postponed because of heavy rain.",
    "Fresh bread is baked every morning at the corner bakery.",
    "The new smartphone has a larger battery and a brighter screen.",
]
#: paraphrases of CORPUS[i], sharing almost no words with it
QUERIES = {
    "A kitten naps in the sun by the window.": 0,
    "The bank increased borrowing costs today.": 1,
    "The game was called off due to the storm.": 2,
    "A phone with longer battery life and a better display.": 4,
}


def make(recorder: TeiRecorder, **options: Any) -> EmbedkitEmbedding:
    return EmbedkitEmbedding(
        connection=Connection(transport=httpx.MockTransport(recorder)),
        api="tei",
        url="http://tei.test",
        **options,
    )


@pytest.mark.integration
def test_vector_store_index_ranks_the_paraphrase_first(serve_url: str) -> None:
    with EmbedkitEmbedding(api="tei", url=serve_url) as emb:
        index = VectorStoreIndex.from_documents(
            [Document(text=t, id_=str(i)) for i, t in enumerate(CORPUS)], embed_model=emb
        )
        retriever = index.as_retriever(similarity_top_k=2)
        for query, want in QUERIES.items():
            hits = retriever.retrieve(query)
            assert hits[0].node.get_content() == CORPUS[want], query
            assert hits[0].score is not None
            assert hits[1].score is not None
            assert hits[0].score > hits[1].score
        stats = emb.stats()
    assert stats.texts == len(CORPUS) + len(QUERIES)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_async_retrieval_from_the_same_index(serve_url: str) -> None:
    async with EmbedkitEmbedding(api="tei", url=serve_url) as emb:
        docs = [Document(text=t, id_=str(i)) for i, t in enumerate(CORPUS)]
        index = VectorStoreIndex.from_documents(docs, embed_model=emb, use_async=True)
        retriever = index.as_retriever(similarity_top_k=1)
        results = await asyncio.gather(*(retriever.aretrieve(q) for q in QUERIES))
        for hits, want in zip(results, QUERIES.values(), strict=True):
            assert hits[0].node.get_content() == CORPUS[want]


@pytest.mark.integration
def test_vectors_are_the_servers(serve_url: str) -> None:
    async def direct() -> list[list[float]]:
        async with embedkit.AsyncEmbedder(api="tei", url=serve_url) as emb:
            rows: list[list[float]] = (await emb.embed_many(CORPUS)).tolist()
            return rows

    expected = asyncio.run(direct())
    with EmbedkitEmbedding(api="tei", url=serve_url) as emb:
        got = emb.get_text_embedding_batch(CORPUS)
        query = emb.get_query_embedding(CORPUS[2])
    assert np.allclose(got, expected, atol=1e-6)
    assert np.allclose(query, expected[2], atol=1e-6)


def test_batch_methods_return_rows_in_input_order() -> None:
    recorder = TeiRecorder()
    texts = [f"text {i} " + "x" * (i % 13) for i in range(200)]
    with make(recorder, limits=Limits(max_batch_size=16), embed_batch_size=7) as emb:
        sync_rows = emb.get_text_embedding_batch(texts)
        async_rows = asyncio.run(emb.aget_text_embedding_batch(texts))
        one = emb.get_text_embedding(texts[5])
        aone = asyncio.run(emb.aget_text_embedding(texts[6]))
        query = asyncio.run(emb.aget_query_embedding(texts[7]))
    want = [float(len(t)) for t in texts]
    assert [r[0] for r in sync_rows] == want
    assert [r[0] for r in async_rows] == want
    assert (one[0], aone[0], query[0]) == (want[5], want[6], want[7])
    assert max(len(b) for b in recorder.batches) <= 16


def test_embed_batch_size_maps_onto_embedkit_batching() -> None:
    assert make(TeiRecorder()).embed_batch_size == 32 * 8  # one step fills every request slot
    assert (
        make(TeiRecorder(), limits=Limits(max_batch_size=10, max_concurrency=3)).embed_batch_size
        == 30
    )
    assert make(TeiRecorder(), embed_batch_size=5).embed_batch_size == 5
    recorder = TeiRecorder()
    texts = [f"t{i}" for i in range(64)]
    # LlamaIndex's async path gathers its 16 steps of 4 texts; embedkit's one queue turns
    # them into requests of up to max_batch_size texts, not 16 requests of 4.
    with make(
        recorder, limits=Limits(max_batch_size=32, max_concurrency=1), embed_batch_size=4
    ) as emb:
        rows = asyncio.run(emb.aget_text_embedding_batch(texts))
    assert len(rows) == 64
    assert len(recorder.batches) < 16
    assert max(len(b) for b in recorder.batches) <= 32


def test_is_a_llama_index_base_embedding() -> None:
    emb = EmbedkitEmbedding(model="org/model", token="hf_SECRET")
    assert isinstance(emb, BaseEmbedding)
    assert EmbedkitEmbedding.class_name() == "EmbedkitEmbedding"
    assert emb.model_name == "org/model"
    for shown in (repr(emb), emb.to_json(), str(emb.to_dict())):
        assert "hf_SECRET" not in shown
    assert emb.to_dict()["class_name"] == "EmbedkitEmbedding"
    with pytest.raises(pydantic.ValidationError):
        EmbedkitEmbedding(model="org/model", nonsense=1)  # type: ignore[call-arg]
    emb.close()


def test_errors_are_typed_and_close_is_final() -> None:
    emb = make(TeiRecorder(status=401))
    with pytest.raises(embedkit.AuthenticationError):
        emb.get_query_embedding("refused")
    with pytest.raises(embedkit.AuthenticationError):
        asyncio.run(emb.aget_text_embedding_batch(["refused"]))
    emb.close()
    with pytest.raises(embedkit.ClientClosedError):
        emb.get_text_embedding("closed")
