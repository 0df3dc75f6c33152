"""Cohere, Voyage, Gemini and Ollama as their servers see them, and what embedkit makes of
every documented answer: the exact request (URL, headers, body), out-of-order and by-type
answers, error bodies, the providers' batch limits, `kind=` and `dtype=`.

The shared scheduler suites (coalescing, retries, 429 pauses, order) run over these
protocols too, from test_protocols.py and test_errors.py.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

import embedkit
from embedkit import (
    AsyncEmbedder,
    BatchTooLargeError,
    Connection,
    InputError,
    Limits,
    ModelNotFoundError,
    RateLimitError,
    ResponseError,
)
from embedkit._auth import resolve_token
from embedkit._quantize import quantize

from .providers import HOSTED_APIS, URLS, rows_body, success, texts_of

Answer = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A mock server for one API: answers with `answer`, or rows derived from the texts."""

    def __init__(self, api: str, answer: Answer | None = None) -> None:
        self.api = api
        self.answer = answer
        self.requests: list[httpx.Request] = []

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    @property
    def batches(self) -> list[list[str]]:
        return [texts_of(self.api, b) for b in self.bodies]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404, json={"error": "no /info here"})
        self.requests.append(request)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()  # let concurrent requests overlap
        if self.answer is not None:
            return self.answer(request)
        body = json.loads(request.content)
        return success(self.api, body, [row(t) for t in texts_of(self.api, body)])


def row(text: str) -> list[float]:
    return [float(len(text)), -1.0, 0.25, 2.0]


def make(api: str, server: Recorder, model: str = "m", **kwargs: Any) -> AsyncEmbedder:
    kwargs.setdefault("retry", None)
    kwargs.setdefault("url", URLS[api])
    transport = httpx.MockTransport(server.handle)
    return AsyncEmbedder(model, api=api, connection=Connection(transport=transport), **kwargs)


def fixed(status: int, payload: Any, **headers: str) -> Answer:
    return lambda request: httpx.Response(status, json=payload, headers=headers)


# ----------------------------------------------------------------- the exact requests


@pytest.mark.asyncio
async def test_cohere_request() -> None:
    server = Recorder("cohere")
    async with make("cohere", server, "embed-english-v3.0", url=None, token="co-1") as emb:
        await emb.embed_many(["a", "bb"], kind="query")
    request = server.requests[0]
    assert str(request.url) == "https://api.cohere.com/v2/embed"
    assert request.headers["authorization"] == "Bearer co-1"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "model": "embed-english-v3.0",
        "embedding_types": ["float"],
        "input_type": "search_query",
        "texts": ["a", "bb"],
    }


@pytest.mark.asyncio
async def test_cohere_options_and_dtype_in_the_body() -> None:
    server = Recorder("cohere")
    emb = make(
        "cohere",
        server,
        kind="document",
        dtype="int8",
        truncate=True,
        truncation_direction="left",
        dimensions=256,
    )
    async with emb:
        await emb.embed("a")
    assert server.bodies[0] == {
        "model": "m",
        "embedding_types": ["int8"],
        "truncate": "START",
        "output_dimension": 256,
        "input_type": "search_document",
        "texts": ["a"],
    }


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://co.test", "http://co.test/v2/embed"),
        ("http://co.test/v2", "http://co.test/v2/embed"),
        ("http://co.test/v2/embed", "http://co.test/v2/embed"),
    ],
)
async def test_cohere_url_forms(url: str, expected: str) -> None:
    server = Recorder("cohere")
    async with make("cohere", server, url=url, truncate=False) as emb:
        await emb.embed("a")
    assert str(server.requests[0].url) == expected
    assert server.bodies[0]["truncate"] == "NONE"
    assert "input_type" not in server.bodies[0]  # no kind given: the server's rule applies


@pytest.mark.asyncio
async def test_voyage_request() -> None:
    server = Recorder("voyage")
    emb = make(
        "voyage", server, "voyage-3.5", url=None, token="pa-1", truncate=False, dimensions=512
    )
    async with emb:
        await emb.embed_many(["a", "bb"], kind="document")
    request = server.requests[0]
    assert str(request.url) == "https://api.voyageai.com/v1/embeddings"
    assert request.headers["authorization"] == "Bearer pa-1"
    assert json.loads(request.content) == {
        "model": "voyage-3.5",
        "truncation": False,
        "output_dimension": 512,
        "input_type": "document",
        "input": ["a", "bb"],
    }


@pytest.mark.asyncio
async def test_voyage_asks_for_the_dtype() -> None:
    server = Recorder("voyage")
    async with make("voyage", server, dtype="ubinary") as emb:
        await emb.embed("a")
    assert server.bodies[0]["output_dtype"] == "ubinary"


@pytest.mark.asyncio
async def test_gemini_request() -> None:
    server = Recorder("gemini")
    emb = make("gemini", server, "gemini-embedding-001", url=None, token="AIza-1", dimensions=768)
    async with emb:
        await emb.embed_many(["a", "bb"], kind="query")
    request = server.requests[0]
    assert str(request.url) == (
        "https://generativelanguage.googleapis.com/v1beta/models/"
        "gemini-embedding-001:batchEmbedContents"
    )
    assert request.headers["x-goog-api-key"] == "AIza-1"
    assert "authorization" not in request.headers
    part = {"model": "models/gemini-embedding-001", "taskType": "RETRIEVAL_QUERY"}
    part["outputDimensionality"] = 768  # type: ignore[assignment]
    assert json.loads(request.content) == {
        "requests": [
            {**part, "content": {"parts": [{"text": "a"}]}},
            {**part, "content": {"parts": [{"text": "bb"}]}},
        ]
    }


@pytest.mark.asyncio
async def test_gemini_model_path_and_full_url() -> None:
    server = Recorder("gemini")
    full = "http://g.test/v1/models/text-embedding-004:batchEmbedContents"
    async with make("gemini", server, "models/text-embedding-004", url=full) as emb:
        await emb.embed("a")
    assert str(server.requests[0].url) == full
    assert server.bodies[0]["requests"][0]["model"] == "models/text-embedding-004"
    assert "taskType" not in server.bodies[0]["requests"][0]


@pytest.mark.asyncio
async def test_ollama_request() -> None:
    server = Recorder("ollama")
    emb = make("ollama", server, "nomic-embed-text", url=None, truncate=False, dimensions=64)
    async with emb:
        await emb.embed_many(["a", "bb"])
    request = server.requests[0]
    assert str(request.url) == "http://127.0.0.1:11434/api/embed"
    assert "authorization" not in request.headers
    assert json.loads(request.content) == {
        "model": "nomic-embed-text",
        "truncate": False,
        "dimensions": 64,
        "input": ["a", "bb"],
    }


@pytest.mark.parametrize("api", HOSTED_APIS)
def test_a_model_name_is_required(api: str) -> None:
    with pytest.raises(ValueError, match="needs a model name"):
        AsyncEmbedder(None, api=api)


# ------------------------------------------------------------------------- answers


@pytest.mark.asyncio
@pytest.mark.parametrize("api", HOSTED_APIS)
async def test_rows_in_input_order_as_float32(api: str) -> None:
    server = Recorder(api)
    texts = ["a", "bbb", "cc"]
    async with make(api, server) as emb:
        matrix = await emb.embed_many(texts)
    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(matrix, [row(t) for t in texts])


@pytest.mark.asyncio
async def test_voyage_out_of_order_rows_are_placed_by_index() -> None:
    shuffled = {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [2.0], "index": 2},
            {"object": "embedding", "embedding": [0.0], "index": 0},
            {"object": "embedding", "embedding": [1.0], "index": 1},
        ],
        "usage": {"total_tokens": 3},
    }
    async with make("voyage", Recorder("voyage", fixed(200, shuffled))) as emb:
        matrix = await emb.embed_many(["x", "y", "z"])
    np.testing.assert_array_equal(matrix[:, 0], [0.0, 1.0, 2.0])


@pytest.mark.asyncio
async def test_cohere_legacy_float_list_is_read() -> None:
    legacy = {"id": "1", "embeddings": [[1.0, 2.0]], "texts": ["a"], "meta": {}}
    async with make("cohere", Recorder("cohere", fixed(200, legacy))) as emb:
        vector = await emb.embed("a")
    np.testing.assert_array_equal(vector, [1.0, 2.0])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("api", "payload", "needle"),
    [
        ("cohere", {"embeddings": {"int8": [[1]]}}, "no 'float' embeddings"),
        ("cohere", {"id": "1"}, "no 'embeddings'"),
        ("cohere", {"embeddings": {"float": [[1.0], [2.0]]}}, "sent 1 texts"),
        ("voyage", {"data": [{"index": 0}]}, "no 'embedding'"),
        ("voyage", {"data": [{"embedding": [1.0], "index": 5}]}, "indexes"),
        ("voyage", {"detail": "x"}, "no 'data'"),
        ("gemini", {"embeddings": [{"value": [1.0]}]}, "no 'values'"),
        ("gemini", {}, "no 'embeddings'"),
        ("gemini", {"embeddings": [{"values": ["1"]}]}, "numbers"),
        ("ollama", {"model": "m"}, "no 'embeddings'"),
        ("ollama", {"embeddings": [[1.0, 2.0], [1.0]]}, "sent 1 texts"),
        ("ollama", {"embeddings": [[]]}, "dimension 0"),
    ],
)
async def test_malformed_answers_are_response_errors(api: str, payload: Any, needle: str) -> None:
    async with make(api, Recorder(api, fixed(200, payload))) as emb:
        with pytest.raises(ResponseError, match=needle):
            await emb.embed("a")


# -------------------------------------------------------------------------- errors


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("api", "status", "payload", "cls", "message"),
    [
        ("cohere", 401, {"id": "x", "message": "invalid api token"}, embedkit.AuthenticationError,
         "invalid api token"),
        ("cohere", 429, {"message": "You are using a Trial key"}, RateLimitError, "Trial key"),
        ("cohere", 400, {"message": "invalid request: input_type is required"}, InputError,
         "input_type"),
        ("voyage", 400, {"detail": "Input cannot contain empty strings"}, InputError,
         "empty strings"),
        ("voyage", 429, {"detail": "Rate limit exceeded"}, RateLimitError, "Rate limit"),
        ("gemini", 400, {"error": {"code": 400, "message": "API key not valid.",
                                   "status": "INVALID_ARGUMENT"}}, InputError, "API key"),
        ("gemini", 403, {"error": {"code": 403, "message": "Permission denied",
                                   "status": "PERMISSION_DENIED"}},
         embedkit.AuthenticationError, "Permission"),
        ("ollama", 404, {"error": 'model "m" not found, try pulling it first'},
         ModelNotFoundError, "pulling"),
        ("ollama", 400, {"error": "the input length exceeds the context length"}, InputError,
         "context length"),
    ],
)  # fmt: skip
async def test_error_bodies(
    api: str, status: int, payload: Any, cls: type[Exception], message: str
) -> None:
    async with make(api, Recorder(api, fixed(status, payload))) as emb:
        with pytest.raises(cls, match=message):
            await emb.embed("a")


@pytest.mark.asyncio
async def test_gemini_429_retry_delay_is_the_retry_after() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    async with make("gemini", Recorder("gemini", fixed(429, body))) as emb:
        with pytest.raises(RateLimitError) as info:
            await emb.embed("a")
    assert info.value.retry_after == 37.0


@pytest.mark.asyncio
async def test_gemini_retry_after_header_wins_over_retry_delay() -> None:
    body = {"error": {"code": 429, "message": "slow", "details": [{"retryDelay": "37s"}]}}
    answer = fixed(429, body, **{"retry-after": "2"})
    async with make("gemini", Recorder("gemini", answer)) as emb:
        with pytest.raises(RateLimitError) as info:
            await emb.embed("a")
    assert info.value.retry_after == 2.0


@pytest.mark.asyncio
async def test_ollama_busy_503_is_a_rate_limit() -> None:
    busy = {"error": "server busy, please try again.  maximum pending requests exceeded"}
    async with make("ollama", Recorder("ollama", fixed(503, busy))) as emb:
        with pytest.raises(RateLimitError, match="busy"):
            await emb.embed("a")


async def no_sleep(seconds: float) -> None:
    """Retries go on at once."""


@pytest.mark.asyncio
async def test_ollama_busy_lowers_concurrency_then_succeeds() -> None:
    busy = {"error": "server busy, please try again.  maximum pending requests exceeded"}
    server = Recorder("ollama")
    first = True

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal first
        if first:
            first = False
            return httpx.Response(503, json=busy)
        body = json.loads(request.content)
        return success("ollama", body, [row(t) for t in texts_of("ollama", body)])

    server.answer = answer
    retry = embedkit.RetryPolicy(sleep=no_sleep)
    async with make("ollama", server, retry=retry, limits=Limits(max_concurrency=8)) as emb:
        await emb.embed("a")
        stats = emb.stats()
    assert stats.concurrency_limit < 8  # halved like after a 429 (a plain 503 keeps it)
    assert stats.retries == {"503": 1}
    assert len(server.requests) == 2


# -------------------------------------------------------------- limits and splitting


@pytest.mark.asyncio
@pytest.mark.parametrize(("api", "limit"), [("cohere", 96), ("voyage", 128), ("gemini", 100)])
async def test_the_providers_batch_limit_caps_a_larger_configured_one(api: str, limit: int) -> None:
    server = Recorder(api)
    texts = [f"t{i}" for i in range(limit * 2 + 5)]
    async with make(api, server, limits=Limits(max_batch_size=1000)) as emb:
        matrix = await emb.embed_many(texts)
        assert emb.stats().max_batch_size == limit
    assert max(len(b) for b in server.batches) == limit
    np.testing.assert_array_equal(matrix, [row(t) for t in texts])


@pytest.mark.parametrize(
    ("api", "expected"), [("cohere", 96), ("voyage", 128), ("gemini", 100), ("ollama", 32)]
)
def test_default_batch_sizes(api: str, expected: int) -> None:
    assert AsyncEmbedder("m", api=api).max_batch_size == expected


REFUSALS = {
    "cohere": (400, {"message": "invalid request: total number of texts must be at most 3 - "
                                "received {n}"}),
    "gemini": (400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                               "* BatchEmbedContentsRequest.requests: at most 3 requests can be "
                               "in one batch"}}),
}  # fmt: skip


@pytest.mark.asyncio
@pytest.mark.parametrize("api", sorted(REFUSALS))
async def test_a_batch_size_refusal_splits_the_batch(api: str) -> None:
    status, template = REFUSALS[api]

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        texts = texts_of(api, body)
        if len(texts) > 3:
            refusal = json.loads(json.dumps(template).replace("{n}", str(len(texts))))
            return httpx.Response(status, json=refusal)
        return success(api, body, [row(t) for t in texts])

    server = Recorder(api, answer)
    texts = [f"t{i}" for i in range(8)]
    async with make(api, server, limits=Limits(max_batch_size=8, max_concurrency=1)) as emb:
        matrix = await emb.embed_many(texts)
        assert emb.stats().max_batch_size == 3
    np.testing.assert_array_equal(matrix, [row(t) for t in texts])
    assert server.batches[0] == texts
    assert all(len(b) <= 3 for b in server.batches[1:])


def test_refusal_maps_to_batch_too_large_with_the_size() -> None:
    from embedkit._backends.protocols import CohereProtocol, Options
    from embedkit._errors import error_from_response

    protocol = CohereProtocol(model="m", url=None, options=Options())
    body = b'{"message": "invalid request: total number of texts must be at most 96 - received 97"}'
    error = protocol.refine_error(error_from_response(400, body, httpx.Headers()), body)
    assert isinstance(error, BatchTooLargeError)
    assert error.max_batch_size == 96


# ------------------------------------------------------------------------------ kind


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("api", "field", "query", "document"),
    [
        ("cohere", "input_type", "search_query", "search_document"),
        ("voyage", "input_type", "query", "document"),
        ("gemini", "taskType", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT"),
        ("tei", "prompt_name", "query", "document"),
        ("hf", "prompt_name", "query", "document"),
    ],
)
async def test_kinds_are_never_coalesced(api: str, field: str, query: str, document: str) -> None:
    server = Recorder(api)
    emb = make(api, server, kind="document", limits=Limits(max_batch_size=64))
    async with emb, anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(functools.partial(emb.embed, f"q{i}", kind="query" if i % 2 else None))
    assert sum(len(b) for b in server.batches) == 12
    for body, batch in zip(server.bodies, server.batches, strict=True):
        value = body["requests"][0][field] if api == "gemini" else body[field]
        if api == "gemini":
            assert {r[field] for r in body["requests"]} == {value}
        expected = query if all(int(t[1:]) % 2 for t in batch) else document
        assert value == expected
        assert len({int(t[1:]) % 2 for t in batch}) == 1  # one kind a request
    assert len(server.requests) < 12  # still coalesced within a kind


@pytest.mark.asyncio
async def test_kinds_share_one_concurrency_limit() -> None:
    in_flight = peak = 0
    gate = anyio.Event()

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        body = json.loads(request.content)
        return success("voyage", body, [row(t) for t in texts_of("voyage", body)])

    emb = AsyncEmbedder(
        "m",
        api="voyage",
        url=URLS["voyage"],
        connection=Connection(transport=httpx.MockTransport(handle)),
        limits=Limits(max_concurrency=2, max_batch_size=1),
    )
    async with emb, anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(
                functools.partial(emb.embed, f"t{i}", kind="query" if i % 2 else "document")
            )
        await anyio.wait_all_tasks_blocked()
        assert peak == 2
        gate.set()
    assert peak == 2


@pytest.mark.parametrize("api", ["openai", "ollama"])
def test_apis_without_a_kind_field_refuse_it_at_construction(api: str) -> None:
    with pytest.raises(ValueError, match="cannot carry kind"):
        AsyncEmbedder("m", api=api, url=URLS[api], kind="query")


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["openai", "ollama"])
async def test_apis_without_a_kind_field_refuse_it_per_call(api: str) -> None:
    server = Recorder(api)
    async with make(api, server) as emb:
        with pytest.raises(ValueError, match="cannot carry kind"):
            await emb.embed("a", kind="query")
    assert server.requests == []


def test_bad_kind_and_kind_with_prompt_name() -> None:
    with pytest.raises(ValueError, match="kind must be"):
        AsyncEmbedder("m", api="tei", url=URLS["tei"], kind="passage")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both choose the prompt"):
        AsyncEmbedder("m", api="tei", url=URLS["tei"], kind="query", prompt_name="query")


# ----------------------------------------------------------------------------- dtype


def rows_for(dtype: str) -> list[list[float]]:
    return np.asarray(quantize(np.array([row("ab"), row("c")]), dtype)).tolist()  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("api", ["cohere", "voyage"])
async def test_server_side_dtypes_come_back_as_numpy_arrays(api: str, dtype: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(200, json=rows_body(api, body, rows_for(dtype)))

    async with make(api, Recorder(api, answer), dtype=dtype) as emb:
        matrix = await emb.embed_many(["ab", "c"])
    expected = quantize(np.array([row("ab"), row("c")], dtype=np.float32), dtype)  # type: ignore[arg-type]
    assert matrix.dtype == expected.dtype
    np.testing.assert_array_equal(matrix, expected)
    if dtype in ("binary", "ubinary"):
        assert matrix.shape == (2, 1)  # 4 dimensions packed into one byte


@pytest.mark.asyncio
@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
@pytest.mark.parametrize("api", ["gemini", "ollama", "openai", "tei"])
async def test_float_only_servers_are_quantised_here(api: str, dtype: str) -> None:
    server = Recorder(api)
    async with make(api, server, dtype=dtype) as emb:
        vector = await emb.embed("abc")
        matrix = await emb.embed_many(["abc", "d"])
    expected = quantize(np.array([row("abc"), row("d")], dtype=np.float32), dtype)  # type: ignore[arg-type]
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(vector, expected[0])
    assert vector.dtype == matrix.dtype == expected.dtype
    assert "embedding_types" not in server.bodies[0]
    assert "output_dtype" not in server.bodies[0]


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype must be one of"):
        AsyncEmbedder("m", api="tei", url=URLS["tei"], dtype="float16")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_embed_many_empty_has_the_packed_width() -> None:
    async with make("ollama", Recorder("ollama"), dtype="ubinary", dimensions=64) as emb:
        empty = await emb.embed_many([])
    assert empty.shape == (0, 8)
    assert empty.dtype == np.uint8


# ---------------------------------------------------------------------------- tokens


@pytest.mark.parametrize(
    ("api", "names"),
    [
        ("cohere", ["COHERE_API_KEY", "CO_API_KEY"]),
        ("voyage", ["VOYAGE_API_KEY"]),
        ("gemini", ["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
    ],
)
def test_tokens_come_from_the_providers_variables(
    api: str, names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf-not-for-them")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert resolve_token(api, None) is None  # never the HF token
    monkeypatch.setenv(names[-1], "second")
    assert resolve_token(api, None).reveal() == "second"  # type: ignore[union-attr]
    monkeypatch.setenv(names[0], "first")
    assert resolve_token(api, None).reveal() == "first"  # type: ignore[union-attr]


def test_ollama_reads_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf-x")
    assert resolve_token("ollama", None) is None


@pytest.mark.asyncio
async def test_a_gemini_key_quoted_back_is_redacted() -> None:
    echo = fixed(400, {"error": {"code": 400, "message": "API key AIza-secret not valid"}})
    async with make("gemini", Recorder("gemini", echo), token="AIza-secret") as emb:
        with pytest.raises(InputError) as info:
            await emb.embed("a")
    assert "AIza-secret" not in str(info.value)
    assert "AIza-secret" not in repr(emb)


@pytest.mark.parametrize(
    ("api", "expected"), [("cohere", 3), ("voyage", 3), ("ollama", 3), ("gemini", None)]
)
def test_the_tokens_each_api_reports(api: str, expected: int | None) -> None:
    from embedkit._backends.protocols import PROTOCOLS, Options

    protocol = PROTOCOLS[api](model="m", url=URLS[api], options=Options())
    body = json.dumps(rows_body(api, json.loads(protocol.body(["a"])), [[1.0]])).encode()
    assert protocol.reported_tokens(body) == expected
    assert protocol.reported_tokens(b"not json") is None
