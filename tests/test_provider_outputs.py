"""`kind=` and `dtype=` beyond `embed`: `embed_stream`, `encode`, `embed_file` (.npy element
type, Parquet's fixed_size_list), the CLI's flags, the Ray worker's column, the framework
field, and the similarity helpers on int8 and packed-bit matrices."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import embedkit
from embedkit import AsyncEmbedder, Connection
from embedkit._cli import build_parser
from embedkit._quantize import quantize

from .fakes import FakeBackend, vectors_for
from .providers import URLS, success, texts_of

TEXTS = [f"record {i} " + "w" * (i % 13) for i in range(300)]


def ollama_transport(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        texts = texts_of("ollama", body)
        return success("ollama", body, vectors_for(texts).tolist())

    return httpx.MockTransport(handle)


# -------------------------------------------------------------------- embed_file


@pytest.mark.parametrize("dtype", ["int8", "ubinary"])
def test_embed_file_npy_is_written_in_the_dtype(tmp_path: Path, dtype: str) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    seen: list[dict[str, Any]] = []
    result = embedkit.embed_file(
        corpus,
        tmp_path / "o.npy",
        api="ollama",
        model="m",
        url=URLS["ollama"],
        dtype=dtype,  # type: ignore[arg-type]
        connection=Connection(transport=ollama_transport(seen)),
    )
    out = np.load(result.output)
    expected = quantize(vectors_for(TEXTS), dtype)  # type: ignore[arg-type]
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)
    assert result.dim == expected.shape[1]


def test_embed_file_parquet_is_a_fixed_size_list_of_the_dtype(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    result = embedkit.embed_file(
        corpus, tmp_path / "o.parquet", backend=FakeBackend(), dtype="int8"
    )
    schema = pq.read_schema(result.output)
    assert schema.field("embedding").type == pa.list_(pa.int8(), 32)
    column = pq.read_table(result.output).column("embedding").combine_chunks()
    matrix = column.values.to_numpy().reshape(len(TEXTS), -1)
    np.testing.assert_array_equal(matrix, quantize(vectors_for(TEXTS), "int8"))


def test_a_run_in_another_dtype_is_not_resumed_into_the_same_output(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    embedkit.embed_file(corpus, tmp_path / "o.npy", backend=FakeBackend())
    with pytest.raises(embedkit.CorpusError):
        embedkit.embed_file(
            corpus, tmp_path / "o.npy", backend=FakeBackend(), dtype="int8", resume=True
        )


# ------------------------------------------------------------- stream and encode


@pytest.mark.asyncio
async def test_embed_stream_and_encode_return_the_dtype() -> None:
    async with AsyncEmbedder(backend=FakeBackend(), dtype="binary") as emb:
        blocks = [m async for _, m in emb.embed_stream(TEXTS, block_size=64)]
        encoded = await emb.encode(TEXTS[:5])
        with pytest.raises(ValueError, match="work on floats"):
            await emb.encode(TEXTS[:5], normalize_embeddings=True)
    expected = quantize(vectors_for(TEXTS), "binary")
    np.testing.assert_array_equal(np.concatenate(blocks), expected)
    assert blocks[0].dtype == np.int8
    np.testing.assert_array_equal(encoded, expected[:5])


@pytest.mark.asyncio
async def test_embed_stream_of_another_kind_sends_that_kind() -> None:
    seen: list[dict[str, Any]] = []
    connection = voyage_recorder(seen)
    emb = AsyncEmbedder("m", api="voyage", url=URLS["voyage"], connection=connection)
    async with emb:
        blocks = [m async for _, m in emb.embed_stream(TEXTS[:40], kind="query")]
    np.testing.assert_array_equal(np.concatenate(blocks), vectors_for(TEXTS[:40]))
    assert {b["input_type"] for b in seen} == {"query"}


@pytest.mark.asyncio
async def test_a_custom_backend_without_kinds_refuses_a_kind() -> None:
    with pytest.raises(ValueError, match="cannot carry kind"):
        AsyncEmbedder(backend=FakeBackend(), kind="query")
    async with AsyncEmbedder(backend=FakeBackend()) as emb:
        with pytest.raises(ValueError, match="cannot carry kind"):
            await emb.embed("a", kind="document")


# ---------------------------------------------------------------------------- CLI


def test_the_cli_takes_every_api_kind_and_dtype() -> None:
    for api in ["hf", "tei", "openai", "local", "cohere", "voyage", "gemini", "ollama"]:
        args = build_parser().parse_args(
            [
                "embed",
                "in.txt",
                "-o",
                "o.npy",
                "--api",
                api,
                "--kind",
                "query",
                "--dtype",
                "ubinary",
            ]
        )
        assert (args.api, args.kind, args.dtype) == (api, "query", "ubinary")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "in.txt", "-o", "o.npy", "--dtype", "float16"])


def test_the_cli_embeds_with_a_dtype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sentence_transformers")
    from embedkit._cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("a cat\na dog\n", encoding="utf-8")
    status = main(["embed", str(corpus), "-o", str(tmp_path / "o.npy"), "--dtype", "int8", "-q"])
    assert status == 0
    out = np.load(tmp_path / "o.npy")
    assert out.dtype == np.int8
    assert out.shape == (2, 384)
    assert np.abs(out).max(axis=1).tolist() == [127, 127]  # each row scaled to its largest


# ---------------------------------------------------------------------------- Ray


def test_the_ray_worker_writes_the_dtype() -> None:
    pa = pytest.importorskip("pyarrow")
    pytest.importorskip("ray")
    from embedkit.ray.worker import _EmbedBatches

    worker = _EmbedBatches(
        column="text",
        output_column="embedding",
        flag_column=None,
        on_bad="fail",
        options={"backend": FakeBackend(), "dtype": "uint8"},
        token=None,
        quota=None,
        inputs_quota=False,
    )

    async def run() -> Any:
        return await worker(pa.table({"text": TEXTS[:10]}))

    out = asyncio.run(run())
    column = out.column("embedding").combine_chunks()
    assert column.type == pa.list_(pa.uint8(), 32)
    matrix = column.values.to_numpy().reshape(10, -1)
    np.testing.assert_array_equal(matrix, quantize(vectors_for(TEXTS[:10]), "uint8"))


# ------------------------------------------------------------------ frameworks


def test_the_framework_classes_take_kind_and_dtype() -> None:
    pytest.importorskip("langchain_core")
    from embedkit.langchain import EmbedkitEmbeddings

    with EmbedkitEmbeddings(backend=FakeBackend(), dtype="int8") as model:
        rows = model.embed_documents(["a", "b"])
    assert rows == quantize(vectors_for(["a", "b"]), "int8").tolist()
    with pytest.raises(ValueError, match="cannot carry kind"):
        EmbedkitEmbeddings(api="openai", model="m", kind="query")


# ------------------------------------------------------------------ similarity


def test_unpackbits_inverts_packing() -> None:
    rng = np.random.default_rng(0)
    floats = rng.normal(size=(5, 20)).astype(np.float32)
    bits = (floats > 0).astype(np.uint8)
    for dtype in ("binary", "ubinary"):
        packed = quantize(floats, dtype)  # type: ignore[arg-type]
        assert packed.shape == (5, 3)
        np.testing.assert_array_equal(embedkit.unpackbits(packed, 20), bits)
    with pytest.raises(TypeError):
        embedkit.unpackbits(floats)


def test_int8_rule_is_per_vector_symmetric() -> None:
    v = np.array([[0.5, -0.25, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(quantize(v, "int8"), [[127, -64, 0, 25], [0, 0, 0, 0]])
    np.testing.assert_array_equal(quantize(v, "uint8"), [[255, 64, 128, 153], [128] * 4])


def test_similarity_on_int8_follows_the_floats() -> None:
    rng = np.random.default_rng(1)
    corpus = rng.normal(size=(200, 64)).astype(np.float32)
    queries = corpus[:5] + rng.normal(scale=0.05, size=(5, 64)).astype(np.float32)
    idx_f, _ = embedkit.top_k(queries, corpus, k=1)
    idx_q, scores = embedkit.top_k(quantize(queries, "int8"), quantize(corpus, "int8"), k=1)
    np.testing.assert_array_equal(idx_q[:, 0], idx_f[:, 0])
    assert scores.min() > 0.95


@pytest.mark.parametrize("dtype", ["binary", "ubinary"])
def test_hamming_similarity_on_packed_bits(dtype: str) -> None:
    rng = np.random.default_rng(2)
    corpus = rng.normal(size=(300, 128)).astype(np.float32)
    queries = corpus[[7, 42]]
    packed_q = quantize(queries, dtype)  # type: ignore[arg-type]
    packed_c = quantize(corpus, dtype)  # type: ignore[arg-type]
    idx, scores = embedkit.top_k(packed_q, packed_c, k=3, bits=True, chunk_size=64)
    assert idx[:, 0].tolist() == [7, 42]
    np.testing.assert_allclose(scores[:, 0], 1.0)
    bits_q = embedkit.unpackbits(packed_q)
    bits_c = embedkit.unpackbits(packed_c)
    hamming = (bits_q[:, None, :] != bits_c[None, :, :]).sum(axis=2)
    expected = 1 - 2 * hamming / 128
    sims = embedkit.cosine_similarity(packed_q, packed_c, bits=True)
    np.testing.assert_allclose(sims, expected, atol=1e-6)
    assert embedkit.cosine_similarity(packed_q[0], packed_c[7], bits=True) == pytest.approx(1.0)
    with pytest.raises(TypeError, match="packed bits"):
        embedkit.top_k(queries, corpus, bits=True)


# ------------------------------------------------------------------- the sync twin


def test_the_blocking_embedder_takes_kind_and_returns_the_dtype() -> None:
    seen: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        return success("gemini", body, vectors_for(texts_of("gemini", body)).tolist())

    connection = Connection(transport=httpx.MockTransport(handle))
    with embedkit.Embedder(
        "m", api="gemini", url=URLS["gemini"], connection=connection, dtype="ubinary"
    ) as emb:
        one = emb.embed("a", kind="query")
        many = emb.embed_many(["a", "b"], kind="document")
        blocks = list(emb.embed_stream(TEXTS[:50], block_size=20, kind="query"))
    expected = quantize(vectors_for(TEXTS[:50]), "ubinary")
    np.testing.assert_array_equal(np.concatenate([m for _, m in blocks]), expected)
    assert blocks[0][1].dtype == np.uint8
    np.testing.assert_array_equal(one, quantize(vectors_for(["a"]), "ubinary")[0])
    np.testing.assert_array_equal(many, quantize(vectors_for(["a", "b"]), "ubinary"))
    kinds = [{r.get("taskType") for r in b["requests"]} for b in seen]
    assert {"RETRIEVAL_DOCUMENT"} in kinds
    assert {"RETRIEVAL_QUERY"} in kinds
    assert all(len(k) == 1 for k in kinds)


def test_kinds_and_dtypes_under_trio() -> None:
    pytest.importorskip("trio")
    import anyio

    async def main() -> tuple[Any, Any]:
        transport = httpx.MockTransport(
            lambda request: success(
                "cohere",
                json.loads(request.content),
                vectors_for(texts_of("cohere", json.loads(request.content))).tolist(),
            )
        )
        emb = AsyncEmbedder(
            "m", api="cohere", url=URLS["cohere"], connection=Connection(transport=transport)
        )
        async with emb:
            return await emb.embed("a", kind="query"), await emb.embed_many(["b"], kind="document")

    one, many = anyio.run(main, backend="trio")
    np.testing.assert_array_equal(one, vectors_for(["a"])[0])
    np.testing.assert_array_equal(many, vectors_for(["b"]))


def voyage_recorder(seen: list[dict[str, Any]]) -> Connection:
    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        return success("voyage", body, vectors_for(texts_of("voyage", body)).tolist())

    return Connection(transport=httpx.MockTransport(handle))


def test_langchain_queries_and_documents_are_sent_as_their_kind() -> None:
    pytest.importorskip("langchain_core")
    from embedkit.langchain import EmbedkitEmbeddings

    seen: list[dict[str, Any]] = []
    options = {"api": "voyage", "model": "m", "url": URLS["voyage"]}
    with EmbedkitEmbeddings(**options, kind="document", connection=voyage_recorder(seen)) as lc:
        lc.embed_documents(["a", "b"])
        lc.embed_query("q")
        asyncio.run(lc.aembed_query("q2"))
    assert sorted(b["input_type"] for b in seen) == ["document", "query", "query"]
    seen.clear()
    with EmbedkitEmbeddings(**options, connection=voyage_recorder(seen)) as plain:
        plain.embed_query("q")  # no kind= given: nothing is sent for it
    assert "input_type" not in seen[0]


def test_llama_index_queries_and_texts_are_sent_as_their_kind() -> None:
    pytest.importorskip("llama_index.core")
    from embedkit.llama_index import EmbedkitEmbedding

    seen: list[dict[str, Any]] = []
    options = {"api": "voyage", "model": "m", "url": URLS["voyage"]}
    with EmbedkitEmbedding(**options, kind="document", connection=voyage_recorder(seen)) as li:
        li.get_query_embedding("q")
        li.get_text_embedding_batch(["a", "b"])
    assert sorted(b["input_type"] for b in seen) == ["document", "query"]
