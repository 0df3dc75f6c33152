"""The wire formats as a server sees them (URL, body, headers) and as the client decodes them.

Every test talks to an `httpx.MockTransport`, so no network is needed; `Server` below answers
like an hf, tei, openai, cohere, voyage, gemini or ollama server would and records what it
was sent (the hosted APIs' shapes are in tests/providers.py; their own tests in
test_providers.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import numpy as np
import pytest

import embedkit
from embedkit import AsyncEmbedder, Connection, Limits, ResponseError
from embedkit._config import CONNECTION_FIELDS, LIMITS_FIELDS

from .providers import ALL_APIS, POST_PATHS, URLS, rows_body, texts_of


def vector(text: str) -> list[float]:
    """A row that says which text it belongs to."""
    return [float(len(text)), float(ord(text[0])), 0.5]


def b64(row: list[float]) -> str:
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")


class Server:
    """Answers like an hf, tei or openai server, and records every request."""

    def __init__(
        self,
        api: str,
        *,
        info: dict[str, Any] | None = None,
        answer: Callable[[list[str], dict[str, Any]], httpx.Response] | None = None,
    ) -> None:
        self.api = api
        self.info = info
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.info_requests: list[httpx.Request] = []
        self.batches: list[list[str]] = []
        self.inputs_in_flight = 0
        self.max_inputs_in_flight = 0

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.info_requests.append(request)
            if request.url.path == "/info" and self.info is not None:
                return httpx.Response(200, json=self.info)
            return httpx.Response(404, json={"error": "not found"})
        self.requests.append(request)
        body = json.loads(request.content)
        texts = texts_of(self.api, body)
        self.batches.append(texts)
        self.inputs_in_flight += len(texts)
        self.max_inputs_in_flight = max(self.max_inputs_in_flight, self.inputs_in_flight)
        try:
            for _ in range(3):  # let other requests in, so overlap is visible
                await anyio.lowlevel.checkpoint()
            if self.answer is not None:
                return self.answer(texts, body)
            return self.default_answer(texts, body)
        finally:
            self.inputs_in_flight -= len(texts)

    def default_answer(self, texts: list[str], body: dict[str, Any]) -> httpx.Response:
        rows = [vector(t) for t in texts]
        if self.api not in ("hf", "tei", "openai"):
            return httpx.Response(200, json=rows_body(self.api, body, rows))
        if self.api != "openai":
            return httpx.Response(200, json=rows)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {"object": "embedding", "index": i, "embedding": b64(r) if as_base64 else r}
            for i, r in enumerate(rows)
        ]
        return httpx.Response(200, json={"object": "list", "data": data, "model": body["model"]})


def embedder(api: str, server: Server, **kwargs: Any) -> AsyncEmbedder:
    kwargs.setdefault("retry", None)
    kwargs.setdefault("url", URLS[api])
    connection = kwargs.pop("connection", None) or Connection()
    connection = dataclasses.replace(connection, transport=server.transport())
    return AsyncEmbedder("m", connection=connection, api=api, **kwargs)


def clean(matrix: np.ndarray, shape: tuple[int, ...]) -> None:
    assert matrix.shape == shape
    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]


async def no_sleep(seconds: float) -> None:
    """A stand-in for anyio.sleep: retries go on at once."""


# ------------------------------------------------------------------------------- URLs


@pytest.mark.asyncio
async def test_hf_default_url_is_the_router() -> None:
    server = Server("hf")
    async with AsyncEmbedder(
        "thenlper/gte-large", connection=Connection(transport=server.transport())
    ) as emb:
        await emb.embed("a")
    assert str(server.requests[0].url) == (
        "https://router.huggingface.co/hf-inference/models/thenlper/gte-large"
        "/pipeline/feature-extraction"
    )
    assert server.requests[0].method == "POST"
    assert server.info_requests == []  # hf has no /info


@pytest.mark.asyncio
async def test_hf_model_id_is_quoted_in_the_router_url() -> None:
    server = Server("hf")
    async with AsyncEmbedder(
        "org/model name", connection=Connection(transport=server.transport())
    ) as emb:
        await emb.embed("a")
    assert server.requests[0].url.raw_path == (
        b"/hf-inference/models/org/model%20name/pipeline/feature-extraction"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "https://xyz.us-east-1.aws.endpoints.huggingface.cloud",
        "https://api-inference.huggingface.co/models/thenlper/gte-large",
        "http://127.0.0.1:8080/embed?x=1",
    ],
)
async def test_hf_url_is_used_exactly(url: str) -> None:
    server = Server("hf")
    async with AsyncEmbedder(
        "m", connection=Connection(transport=server.transport()), url=url
    ) as emb:
        await emb.embed("a")
    assert str(server.requests[0].url) == url


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["http://tei.test:8080", "http://tei.test:8080/"])
async def test_tei_url_is_the_server_root(url: str) -> None:
    server = Server("tei", info={"model_id": "BAAI/bge-small-en-v1.5"})
    async with AsyncEmbedder(
        connection=Connection(transport=server.transport()), api="tei", url=url
    ) as emb:
        await emb.embed("a")
        assert emb.info.model_id == "BAAI/bge-small-en-v1.5"
    assert str(server.requests[0].url) == "http://tei.test:8080/embed"
    assert [str(r.url) for r in server.info_requests] == ["http://tei.test:8080/info"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "https://api.openai.com/v1/embeddings"),
        ("http://infinity.test:7997", "http://infinity.test:7997/embeddings"),
        ("http://vllm.test/v1/", "http://vllm.test/v1/embeddings"),
        ("http://proxy.test/v1/embeddings", "http://proxy.test/v1/embeddings"),
    ],
)
async def test_openai_url_is_the_base(url: str | None, expected: str) -> None:
    server = Server("openai")
    async with AsyncEmbedder(
        "text-embedding-3-small",
        connection=Connection(transport=server.transport()),
        api="openai",
        url=url,
    ) as emb:
        await emb.embed("a")
    assert str(server.requests[0].url) == expected


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model": None, "api": "hf"}, "model id"),
        ({"model": "m", "api": "tei"}, "url="),
        ({"model": None, "api": "openai"}, "model name"),
    ],
)
def test_missing_model_or_url_raises_at_construction(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AsyncEmbedder(kwargs.pop("model"), **kwargs)


# ------------------------------------------------------------------------------- bodies


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "tei"])
async def test_hf_style_body_without_options_has_only_inputs(api: str) -> None:
    server = Server(api)
    async with embedder(api, server) as emb:
        await emb.embed("one")
        await emb.embed_many(["two", "three"])
    assert server.bodies == [{"inputs": ["one"]}, {"inputs": ["two", "three"]}]


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "tei"])
async def test_hf_style_body_carries_every_option_at_the_top_level(api: str) -> None:
    server = Server(api)
    options = {
        "normalize": False,
        "prompt_name": "query",
        "truncate": True,
        "truncation_direction": "left",
        "dimensions": 3,
    }
    async with embedder(api, server, **options) as emb:
        await emb.embed("one")
    assert server.bodies == [{"inputs": ["one"], **options}]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "option", [{"normalize": True}, {"truncate": False}, {"prompt_name": "doc"}]
)
async def test_only_the_options_given_are_sent(option: dict[str, Any]) -> None:
    server = Server("tei")
    async with embedder("tei", server, **option) as emb:
        await emb.embed("one")
    assert server.bodies == [{"inputs": ["one"], **option}]


@pytest.mark.asyncio
async def test_pooling_is_not_sent_to_the_server() -> None:
    server = Server("hf")
    async with embedder("hf", server, pooling="mean") as emb:
        await emb.embed("one")
    assert server.bodies == [{"inputs": ["one"]}]


@pytest.mark.asyncio
async def test_openai_body_asks_for_base64_explicitly_by_default() -> None:
    server = Server("openai")
    async with embedder("openai", server) as emb:
        await emb.embed_many(["one", "two"])
    assert server.bodies == [{"model": "m", "input": ["one", "two"], "encoding_format": "base64"}]


@pytest.mark.asyncio
async def test_openai_body_float_and_dimensions() -> None:
    server = Server("openai")
    async with embedder(
        "openai", server, connection=Connection(encoding_format="float"), dimensions=3
    ) as emb:
        await emb.embed("one")
    assert server.bodies == [
        {"model": "m", "input": ["one"], "encoding_format": "float", "dimensions": 3}
    ]


@pytest.mark.parametrize(
    "option",
    [
        {"prompt_name": "query"},
        {"normalize": True},
        {"truncate": True},
        {"truncation_direction": "left"},
        {"pooling": "mean"},
    ],
)
def test_options_openai_cannot_carry_raise_at_construction(option: dict[str, Any]) -> None:
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"api='openai' cannot carry {name}="):
        AsyncEmbedder("m", api="openai", **option)


def test_tei_cannot_pool() -> None:
    with pytest.raises(ValueError, match="cannot carry pooling="):
        AsyncEmbedder(api="tei", url="http://tei.test", pooling="mean")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"truncation_direction": "up"}, "truncation_direction"),
        ({"pooling": "max"}, "pooling"),
        ({"dimensions": 0}, "dimensions"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"api": "grpc"}, "api must be"),
        ({"api": "openai", "encoding_format": "hex"}, "encoding_format"),
        ({"requests_per_second": 0}, "requests_per_second"),
        ({"inputs_per_second": float("inf")}, "inputs_per_second"),
    ],
)
def test_bad_configuration_raises_at_construction(kwargs: dict[str, Any], needle: str) -> None:
    """Whether a setting lives on the embedder, on `Limits` or on `Connection`, a bad value
    fails where it is given, before anything is sent."""
    limits = {k: kwargs.pop(k) for k in list(kwargs) if k in LIMITS_FIELDS}
    connection = {k: kwargs.pop(k) for k in list(kwargs) if k in CONNECTION_FIELDS}
    with pytest.raises(ValueError, match=needle):
        AsyncEmbedder(
            "m",
            limits=Limits(**limits) if limits else None,
            connection=Connection(**connection) if connection else None,
            **kwargs,
        )


# ------------------------------------------------------------------------------ headers


@pytest.mark.asyncio
@pytest.mark.parametrize("api", [a for a in ALL_APIS if a != "gemini"])
async def test_headers_with_a_token(api: str) -> None:
    server = Server(api)
    async with embedder(api, server, token="tok-123") as emb:
        await emb.embed("a")
    headers = server.requests[0].headers
    assert headers["authorization"] == "Bearer tok-123"
    assert server.requests[0].url.path == POST_PATHS[api]
    assert headers["content-type"] == "application/json"
    assert "x-use-cache" not in headers
    assert "x-wait-for-model" not in headers


@pytest.mark.asyncio
async def test_tei_info_request_carries_the_token() -> None:
    server = Server("tei", info={})
    async with embedder("tei", server, token="tok-123"):
        pass
    assert server.info_requests[0].headers["authorization"] == "Bearer tok-123"


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ALL_APIS)
async def test_no_token_no_authorization_header(api: str) -> None:
    server = Server(api)
    async with embedder(api, server) as emb:
        await emb.embed("a")
    assert "authorization" not in server.requests[0].headers


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "tei"])
async def test_use_cache_false_sends_x_use_cache(api: str) -> None:
    server = Server(api)
    async with embedder(api, server, connection=Connection(use_cache=False)) as emb:
        await emb.embed("a")
    assert server.requests[0].headers["x-use-cache"] == "false"


@pytest.mark.asyncio
async def test_openai_never_gets_hf_headers() -> None:
    server = Server("openai")
    async with embedder(
        "openai", server, connection=Connection(use_cache=False, wait_for_model=True)
    ) as emb:
        await emb.embed("a")
    assert "x-use-cache" not in server.requests[0].headers
    assert "x-wait-for-model" not in server.requests[0].headers


def loading_once(server: Server) -> Callable[[list[str], dict[str, Any]], httpx.Response]:
    """503 "loading" to the first request, embeddings after."""

    def answer(texts: list[str], body: dict[str, Any]) -> httpx.Response:
        if len(server.requests) == 1:
            # estimated_time 0 keeps the test instant whatever the retry policy's clock.
            return httpx.Response(
                503, json={"error": "Model m is currently loading", "estimated_time": 0.0}
            )
        return httpx.Response(200, json=[vector(t) for t in texts])

    return answer


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("api", "options", "headers"),
    [
        ("hf", {}, [None, "true", "true"]),  # turned on by the 503, and kept for the next call
        ("tei", {}, [None, "true"]),  # TEI learns it too
        ("hf", {"connection": Connection(wait_for_model=False)}, [None, None]),  # forced off
    ],
    ids=["hf", "tei", "hf-forced-off"],
)
async def test_wait_for_model_after_a_first_503_loading(
    api: str, options: dict[str, Any], headers: list[str | None]
) -> None:
    server = Server(api)
    server.answer = loading_once(server)
    retry = embedkit.RetryPolicy(sleep=no_sleep)
    async with embedder(api, server, retry=retry, **options) as emb:
        for text in ["a", "b"][: len(headers) - 1]:  # the first call is sent twice
            await emb.embed(text)
    assert [r.headers.get("x-wait-for-model") for r in server.requests] == headers


@pytest.mark.asyncio
async def test_wait_for_model_forced_on() -> None:
    server = Server("hf")
    async with embedder("hf", server, connection=Connection(wait_for_model=True)) as emb:
        await emb.embed("a")
    assert server.requests[0].headers["x-wait-for-model"] == "true"


# ------------------------------------------------------------------------ response shapes


def fixed(payload: Any) -> Callable[[list[str], dict[str, Any]], httpx.Response]:
    return lambda texts, body: httpx.Response(200, json=payload)


@pytest.mark.asyncio
async def test_hf_one_dimensional_answer_for_one_string() -> None:
    server = Server("hf", answer=fixed([0.25, 0.5, 0.75]))
    async with embedder("hf", server) as emb:
        v = await emb.embed("a")
        m = await emb.embed_many(["a"])
    clean(v, (3,))
    clean(m, (1, 3))
    np.testing.assert_array_equal(v, [0.25, 0.5, 0.75])
    np.testing.assert_array_equal(m[0], v)


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ALL_APIS)
async def test_rows_come_back_in_input_order(api: str) -> None:
    server = Server(api)
    texts = [chr(ord("a") + i) * (i + 1) for i in range(10)]
    async with embedder(api, server, limits=Limits(max_batch_size=3)) as emb:
        m = await emb.embed_many(texts)
    clean(m, (10, 3))
    np.testing.assert_array_equal(m, [vector(t) for t in texts])
    assert max(len(b) for b in server.batches) == 3


@pytest.mark.asyncio
async def test_hf_token_level_answer_needs_pooling() -> None:
    tokens = [[[1.0, 2.0], [3.0, 4.0]]]
    server = Server("hf", answer=fixed(tokens))
    async with embedder("hf", server) as emb:
        with pytest.raises(ResponseError, match="pooling='mean'"):
            await emb.embed("a")


@pytest.mark.asyncio
@pytest.mark.parametrize(("pooling", "expected"), [("mean", [2.0, 3.0]), ("cls", [1.0, 2.0])])
async def test_hf_token_level_answer_pooled(pooling: str, expected: list[float]) -> None:
    server = Server("hf", answer=fixed([[[1.0, 2.0], [3.0, 4.0]]]))
    async with embedder("hf", server, pooling=pooling) as emb:
        v = await emb.embed("a")
    clean(v, (2,))
    np.testing.assert_array_equal(v, expected)


@pytest.mark.asyncio
async def test_hf_ragged_token_level_answer_pooled() -> None:
    def answer(texts: list[str], body: dict[str, Any]) -> httpx.Response:
        # [1, T_i, H] per text, T_i = len(text): ragged across texts.
        return httpx.Response(
            200, json=[[[[float(len(t)), float(k)] for k in range(len(t))]] for t in texts]
        )

    server = Server("hf", answer=answer)
    async with embedder("hf", server, pooling="mean") as emb:
        m = await emb.embed_many(["a", "bbb"])
    clean(m, (2, 2))
    np.testing.assert_array_equal(m, [[1.0, 0.0], [3.0, 1.0]])


def openai_answer(
    reorder: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> Callable[[list[str], dict[str, Any]], httpx.Response]:
    def answer(texts: list[str], body: dict[str, Any]) -> httpx.Response:
        as_base64 = body["encoding_format"] == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": b64(vector(t)) if as_base64 else vector(t),
            }
            for i, t in enumerate(texts)
        ]
        return httpx.Response(200, json={"object": "list", "data": reorder(data)})

    return answer


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding_format", ["base64", "float"])
async def test_openai_rows_out_of_order_are_placed_by_index(encoding_format: str) -> None:
    server = Server("openai", answer=openai_answer(lambda data: data[::-1]))
    texts = ["a", "bb", "ccc", "dddd"]
    async with embedder(
        "openai", server, connection=Connection(encoding_format=encoding_format)
    ) as emb:
        m = await emb.embed_many(texts)
    clean(m, (4, 3))
    np.testing.assert_array_equal(m, [vector(t) for t in texts])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("reorder", "needle"),
    [
        (lambda data: data[:-1], "returned 2 embeddings"),
        (lambda data: [*data, data[0]], "returned 4 embeddings"),
        (lambda data: [data[0], data[0], data[2]], "indexes"),
        (lambda data: [{**d, "index": d["index"] + 1} for d in data], "indexes"),
        (lambda data: [{"index": d["index"]} for d in data], "no 'embedding'"),
    ],
)
@pytest.mark.parametrize("encoding_format", ["base64", "float"])
async def test_openai_inconsistent_answers(
    reorder: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    needle: str,
    encoding_format: str,
) -> None:
    server = Server("openai", answer=openai_answer(reorder))
    async with embedder(
        "openai", server, connection=Connection(encoding_format=encoding_format)
    ) as emb:
        with pytest.raises(ResponseError, match=needle):
            await emb.embed_many(["a", "b", "c"])


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "payload",
    [
        {"object": "list"},
        {"data": "nope"},
        [[1.0, 2.0]],
        {"data": [{"index": 0, "embedding": [1.0, "x"]}]},
        {"data": [{"index": 0, "embedding": "!!notbase64!!"}]},
        {"data": [{"index": 0, "embedding": [1.0, float("inf")]}]},
    ],
)
async def test_openai_malformed_answers(payload: Any) -> None:
    content = json.dumps(payload).encode()  # allows Infinity, which real servers may emit
    server = Server("openai", answer=lambda texts, body: httpx.Response(200, content=content))
    async with embedder("openai", server) as emb:
        with pytest.raises(ResponseError):
            await emb.embed("a")


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "tei"])
@pytest.mark.parametrize(
    "payload",
    [
        [[1.0, 2.0]],  # one row for two texts
        [[1.0, 2.0], [3.0]],  # ragged
        [[1.0, 2.0], [3.0, None]],  # null
        [[1.0, 2.0], [3.0, "4"]],  # a string
        [],  # nothing
        {"error": "surprise"},  # an error body with status 200
    ],
)
async def test_hf_style_malformed_answers(api: str, payload: Any) -> None:
    server = Server(api, answer=fixed(payload))
    async with embedder(api, server) as emb:
        with pytest.raises(ResponseError):
            await emb.embed_many(["a", "b"])


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", [b"[[1.0, NaN]]", b"[[1.0, Infinity]]", b"[[1e39, 1.0]]"])
async def test_non_finite_values_are_refused(bad: bytes) -> None:
    server = Server("hf", answer=lambda texts, body: httpx.Response(200, content=bad))
    async with embedder("hf", server) as emb:
        with pytest.raises(ResponseError):
            await emb.embed("a")


@pytest.mark.asyncio
async def test_integer_answers_become_float32() -> None:
    server = Server("tei", answer=fixed([[1, 2, 3]]))
    async with embedder("tei", server) as emb:
        clean(await emb.embed_many(["a"]), (1, 3))


# ------------------------------------------------------------- the caller's own mistakes


BAD_SINGLE = [
    (None, TypeError),
    (b"bytes", TypeError),
    (3, TypeError),
    (["a"], TypeError),
    ("", ValueError),
]
BAD_MANY = [
    ("a string", TypeError),
    (b"bytes", TypeError),
    (["ok", None], TypeError),
    (["ok", b"bytes"], TypeError),
    (["ok", 1.5], TypeError),
    (["ok", ""], ValueError),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("text", "error"), BAD_SINGLE)
async def test_embed_refuses_bad_input_before_sending(text: Any, error: type[Exception]) -> None:
    server = Server("hf")
    async with embedder("hf", server) as emb:
        with pytest.raises(error):
            await emb.embed(text)
    assert server.requests == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("texts", "error"), BAD_MANY)
async def test_embed_many_refuses_bad_input_before_sending(
    texts: Any, error: type[Exception]
) -> None:
    server = Server("hf")
    async with embedder("hf", server) as emb:
        with pytest.raises(error) as info:
            await emb.embed_many(texts)
    assert server.requests == []
    if isinstance(texts, list):
        assert "texts[1]" in str(info.value)


@pytest.mark.asyncio
async def test_one_bad_text_fails_the_call_without_sending_the_good_ones() -> None:
    server = Server("hf")
    async with embedder("hf", server) as emb:
        with pytest.raises(TypeError):
            await emb.embed_many(["fine"] * 50 + [None])  # type: ignore[list-item]
    assert server.requests == []


@pytest.mark.asyncio
async def test_str_subclasses_and_generators_are_accepted() -> None:
    class Name(str):
        pass

    server = Server("hf")
    async with embedder("hf", server) as emb:
        v = await emb.embed(Name("abc"))
        m = await emb.embed_many(t for t in ["x", "yy"])
    np.testing.assert_array_equal(v, vector("abc"))
    clean(m, (2, 3))
    assert server.bodies[0] == {"inputs": ["abc"]}


@pytest.mark.asyncio
async def test_embed_many_empty_with_known_dimension() -> None:
    server = Server("tei")
    async with embedder("tei", server, dimensions=3) as emb:
        out = await emb.embed_many([])
    clean(out, (0, 3))
    assert server.requests == []


@pytest.mark.asyncio
async def test_embed_many_empty_after_a_first_answer() -> None:
    server = Server("hf")
    async with embedder("hf", server) as emb:
        await emb.embed("a")
        out = await emb.embed_many([])
    clean(out, (0, 3))
    assert len(server.requests) == 1


@pytest.mark.asyncio
async def test_embed_many_empty_with_unknown_dimension_is_a_clear_error() -> None:
    server = Server("hf")
    async with embedder("hf", server) as emb:
        with pytest.raises(ValueError, match="dimensions="):
            await emb.embed_many([])
    assert server.requests == []


# ------------------------------------------------------------------------- TEI's /info


@pytest.mark.asyncio
async def test_tei_max_client_batch_size_lowers_the_batch_size() -> None:
    server = Server("tei", info={"model_id": "bge", "max_client_batch_size": 4})
    texts = [f"text {i}" for i in range(37)]
    async with embedder("tei", server, limits=Limits(max_batch_size=32)) as emb:
        m = await emb.embed_many(texts)
        assert emb.stats().max_batch_size == 4
    assert max(len(b) for b in server.batches) <= 4
    assert sorted(t for b in server.batches for t in b) == sorted(texts)
    np.testing.assert_array_equal(m, [vector(t) for t in texts])


@pytest.mark.asyncio
async def test_tei_max_concurrent_requests_bounds_inputs_in_flight() -> None:
    info = {"max_client_batch_size": 4, "max_concurrent_requests": 8}
    server = Server("tei", info=info)
    texts = [f"text {i}" for i in range(64)]
    emb = embedder("tei", server, limits=Limits(max_batch_size=32, max_concurrency=16))
    async with emb, anyio.create_task_group() as tg:
        for t in texts:
            tg.start_soon(emb.embed, t)
    assert server.max_inputs_in_flight <= 8
    assert max(len(b) for b in server.batches) <= 4
    assert sum(len(b) for b in server.batches) == 64


@pytest.mark.asyncio
async def test_tei_configured_limit_below_the_server_limit_wins() -> None:
    server = Server("tei", info={"max_client_batch_size": 32})
    async with embedder("tei", server, limits=Limits(max_batch_size=5)) as emb:
        await emb.embed_many([f"t{i}" for i in range(12)])
    assert max(len(b) for b in server.batches) == 5


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "info",
    [
        None,  # /info answers 404
        {"max_client_batch_size": 0, "max_concurrent_requests": -1},
        {"max_client_batch_size": "4"},
    ],
)
async def test_tei_unusable_info_falls_back_to_configured_limits(
    info: dict[str, Any] | None,
) -> None:
    server = Server("tei", info=info)
    async with embedder("tei", server, limits=Limits(max_batch_size=6)) as emb:
        await emb.embed_many([f"t{i}" for i in range(12)])
    assert max(len(b) for b in server.batches) == 6


@pytest.mark.asyncio
async def test_tei_info_transport_failure_is_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    server = Server("tei")

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            raise httpx.ConnectError("refused")
        return await server.handle(request)

    async with AsyncEmbedder(
        connection=Connection(transport=httpx.MockTransport(handler)),
        api="tei",
        url=URLS["tei"],
        retry=None,
    ) as emb:
        await emb.embed("a")
    assert len(server.requests) == 1
    assert "info" in caplog.text
