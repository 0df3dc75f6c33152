"""`embedkit serve` in the Ollama (`/api/embed`) and Cohere (`/v2/embed`) dialects, and the
embedkit client's `api="ollama"` / `api="cohere"` against it: in-process over the session's
loaded model, and end to end against a real `python -m embedkit.serve` on loopback.

Quantised answers are checked against a numpy quantisation of the float answer: Cohere's
are made by the server (`embedding_types`), Ollama's by the client (floats only on the wire).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

import embedkit
from embedkit import AsyncEmbedder, Connection, Limits
from embedkit._backends.local import LocalModel

pytest.importorskip(
    "sentence_transformers", reason='needs the extra: pip install "embedkit[local]"'
)
pytest.importorskip("starlette", reason='needs the extra: pip install "embedkit[serve]"')

from starlette.applications import Starlette

from embedkit.serve import create_app

BASE = "http://serve"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = [
    "The cat is sleeping on the warm windowsill.",
    "A cat naps in the sun by the window.",
    "Stock markets fell sharply on Monday.",
]


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        await app.state.engine.wait_ready()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


@pytest.fixture
def app(local_model: LocalModel) -> Starlette:
    return create_app(local_model)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------- Ollama


@pytest.mark.asyncio
async def test_ollama_answer(app: Starlette, local_model: LocalModel) -> None:
    async with serving(app) as client:
        one = (await client.post("/api/embed", json={"model": "x", "input": TEXTS[0]})).json()
        many = (await client.post("/api/embed", json={"model": "x", "input": TEXTS})).json()
        cut = await client.post("/api/embed", json={"input": TEXTS, "dimensions": 16})
    assert set(many) == {"model", "embeddings", "total_duration", "load_duration",
                         "prompt_eval_count"}  # fmt: skip
    assert many["model"] == MODEL
    assert many["prompt_eval_count"] > 10
    assert many["total_duration"] > 0
    assert np.array(one["embeddings"]).shape == (1, 384)  # always 2-D
    matrix = np.array(many["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(matrix, local_model.encode(TEXTS), atol=1e-5)
    assert np.array(cut.json()["embeddings"]).shape == (3, 16)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"input": []}, 400, "cannot be empty"),
        ({"model": "x"}, 400, "`input` is required"),
        ({"input": "x", "truncate": "yes"}, 400, "`truncate` must be a boolean"),
        ({"input": ["x"] * 40}, 400, "maximum allowed batch size 32"),
    ],
)
async def test_ollama_errors(
    app: Starlette, body: dict[str, Any], status: int, needle: str
) -> None:
    async with serving(app) as client:
        response = await client.post("/api/embed", json=body)
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert needle in response.json()["error"]


@pytest.mark.asyncio
async def test_ollama_overload_is_503_server_busy(local_model: LocalModel) -> None:
    app = create_app(local_model, max_concurrent_requests=1)
    async with serving(app) as client:
        response = await client.post("/api/embed", json={"input": ["a", "b"]})
    assert response.status_code == 503
    assert response.json()["error"].startswith("server busy")


# ------------------------------------------------------------------------- Cohere


@pytest.mark.asyncio
async def test_cohere_answer_by_type(app: Starlette, local_model: LocalModel) -> None:
    types = ["float", "int8", "uint8", "binary", "ubinary"]
    body = {"model": "x", "texts": TEXTS, "input_type": "search_query", "embedding_types": types}
    async with serving(app) as client:
        answer = (await client.post("/v2/embed", json=body)).json()
    assert answer["response_type"] == "embeddings_by_type"
    assert answer["texts"] == TEXTS
    assert answer["meta"]["billed_units"]["input_tokens"] > 10
    floats = np.array(answer["embeddings"]["float"], dtype=np.float32)
    np.testing.assert_allclose(floats, local_model.encode(TEXTS), atol=1e-5)  # no prompts
    for name in types[1:]:
        got = np.array(answer["embeddings"][name])
        np.testing.assert_array_equal(got, embedkit.quantize(floats, name))  # type: ignore[arg-type]
    assert np.array(answer["embeddings"]["ubinary"]).shape == (3, 48)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"texts": ["x"] * 97}, "total number of texts must be at most 96 - received 97"),
        ({"texts": "x"}, "must be a list"),
        ({"texts": ["x"], "input_type": "search"}, "input_type must be one of"),
        ({"texts": ["x"], "embedding_types": ["float16"]}, "embedding_types"),
        ({"texts": ["x"], "truncate": "MIDDLE"}, "truncate must be"),
        ({"texts": []}, "cannot be empty"),
    ],
)
async def test_cohere_errors(app: Starlette, body: dict[str, Any], needle: str) -> None:
    async with serving(app) as client:
        response = await client.post("/v2/embed", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"id", "message"}
    assert needle in response.json()["message"]


@pytest.mark.asyncio
async def test_cohere_input_type_picks_the_models_prompt(
    local_model: LocalModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the packaged model names "query" and "document" prompts, both empty: give one text
    for prompts in (
        local_model.prompts,
        local_model._st.prompts,
        local_model._without_normalize().prompts,
    ):
        monkeypatch.setitem(prompts, "query", "query: ")
    with_prompt = local_model.encode(TEXTS[:1], prompt_name="query")
    async with serving(create_app(local_model)) as client:
        body = {"texts": TEXTS[:1], "input_type": "search_query"}
        query = (await client.post("/v2/embed", json=body)).json()
        body["input_type"] = "search_document"  # the model's empty "document" prompt
        document = (await client.post("/v2/embed", json=body)).json()
    q = np.array(query["embeddings"]["float"], dtype=np.float32)
    d = np.array(document["embeddings"]["float"], dtype=np.float32)
    np.testing.assert_allclose(q, with_prompt, atol=1e-5)
    np.testing.assert_allclose(d, local_model.encode(TEXTS[:1]), atol=1e-5)
    assert cosines(q, d)[0] < 0.9999  # the prompt changed the query's vector


# ------------------------------------------------- the embedkit client, in-process


def asgi_client(app: Starlette, api: str, **kwargs: Any) -> AsyncEmbedder:
    transport = httpx.ASGITransport(app=app)
    return AsyncEmbedder("x", api=api, url=BASE, connection=Connection(transport=transport),
                         **kwargs)  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["ollama", "cohere"])
@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
async def test_quantised_results_agree_with_numpy(app: Starlette, api: str, dtype: str) -> None:
    kind = "document" if api == "cohere" else None
    async with app.router.lifespan_context(app):
        await app.state.engine.wait_ready()
        async with asgi_client(app, api, kind=kind) as floats_emb:
            floats = await floats_emb.embed_many(TEXTS)
        async with asgi_client(app, api, kind=kind, dtype=dtype) as emb:
            quantised = await emb.embed_many(TEXTS)
    expected = embedkit.quantize(floats, dtype)  # type: ignore[arg-type]
    assert quantised.dtype == expected.dtype
    assert quantised.shape == expected.shape
    np.testing.assert_array_equal(quantised, expected)


# ------------------------------------------------------------------- a real process


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["ollama", "cohere"])
async def test_the_embedkit_client_against_a_real_embedkit_serve(
    serve_url: str,
    local_model: LocalModel,
    api: str,
    http_transport: httpx.AsyncBaseTransport | None,
) -> None:
    texts = [f"Line {i}: {t}" for i in range(20) for t in TEXTS]
    emb = AsyncEmbedder(
        "x",
        api=api,
        url=serve_url,
        connection=Connection(transport=http_transport),
        limits=Limits(max_batch_size=16),
        kind="document" if api == "cohere" else None,
    )
    results: dict[int, np.ndarray] = {}
    async with emb:
        one = await emb.embed(TEXTS[0])

        async def part(k: int) -> None:
            results[k] = await emb.embed_many(texts[k * 12 : (k + 1) * 12])

        async with anyio.create_task_group() as tg:
            for k in range(5):
                tg.start_soon(part, k)
        stats = emb.stats()
    matrix = np.concatenate([results[k] for k in range(5)])
    assert one.shape == (384,)
    assert matrix.shape == (60, 384)
    assert cosines(matrix, local_model.encode(texts)).min() > 0.9999
    assert stats.requests < 60  # coalesced


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["ollama", "cohere"])
@pytest.mark.parametrize("dtype", ["int8", "binary"])
async def test_quantised_answers_from_a_real_embedkit_serve(
    serve_url: str, api: str, dtype: str
) -> None:
    kind = "query" if api == "cohere" else None
    async with AsyncEmbedder("x", api=api, url=serve_url, kind=kind) as emb:
        floats = await emb.embed_many(TEXTS)
    async with AsyncEmbedder("x", api=api, url=serve_url, kind=kind, dtype=dtype) as emb:
        quantised = await emb.embed_many(TEXTS)
    expected = embedkit.quantize(floats, dtype)  # type: ignore[arg-type]
    assert quantised.dtype == expected.dtype
    # the same texts in the same batch: the same floats, so the same bytes
    np.testing.assert_array_equal(quantised, expected)
