"""The client over real sockets, against a loopback uvicorn server speaking hf, tei and openai.

The server is a small Starlette app defined here. It runs in a background thread, on its own
event loop, serving a socket this module binds and listens on first: connections queue in the
kernel until uvicorn accepts them, so nothing has to wait for the server to "be up".

Each row the server returns is a function of its text (`row_for`), so a test can check that
row i really is text i's, whatever batching and concurrency happened on the way.
"""

from __future__ import annotations

import base64
import dataclasses
import socket
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import pytest

import embedkit

uvicorn = pytest.importorskip("uvicorn", reason='needs the extra: pip install "embedkit[serve]"')
pytest.importorskip("starlette", reason='needs the extra: pip install "embedkit[serve]"')

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from embedkit import Connection, Limits  # noqa: E402

pytestmark = pytest.mark.integration

DIM = 8
TOKEN = "hf_integrationFAKEtoken"
TEI_MAX_BATCH = 8


def row_for(text: str) -> list[float]:
    """The embedding the test server gives `text` (exact in float32)."""
    codes = [ord(c) for c in text]
    return [float(len(text)), float(sum(codes) % 1000), float(codes[0]), float(codes[-1])] + [
        float(i) / 4 for i in range(DIM - 4)
    ]


def rows_for(texts: list[str]) -> np.ndarray:
    return np.array([row_for(t) for t in texts], dtype=np.float32)


@dataclasses.dataclass
class Seen:
    """What the server was sent, per route."""

    batches: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)
    bodies: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    headers: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    info_calls: int = 0

    def record(self, route: str, request: Request, body: dict[str, Any], texts: list[str]) -> None:
        self.batches.setdefault(route, []).append(texts)
        self.bodies.setdefault(route, []).append(body)
        self.headers.setdefault(route, []).append(dict(request.headers))


def build_app(seen: Seen) -> Starlette:
    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    async def hf(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"error": "Invalid credentials"}, status_code=401)
        body = await request.json()
        inputs = body["inputs"]
        texts = [inputs] if isinstance(inputs, str) else inputs
        seen.record("hf", request, body, texts)
        if isinstance(inputs, str):  # a sentence-transformers model: 1-D for one string
            return JSONResponse(row_for(inputs))
        return JSONResponse([row_for(t) for t in texts])

    async def hf_tokens(request: Request) -> Response:
        """A plain transformers model: [1, T, H] per text, T = the text's length."""
        body = await request.json()
        seen.record("hf_tokens", request, body, body["inputs"])
        return JSONResponse(
            [[[[float(k), float(len(t))] for k in range(len(t))]] for t in body["inputs"]]
        )

    async def tei_info(request: Request) -> Response:
        seen.info_calls += 1
        return JSONResponse(
            {
                "model_id": "BAAI/bge-small-en-v1.5",
                "max_client_batch_size": TEI_MAX_BATCH,
                "max_concurrent_requests": 512,
                "max_batch_tokens": 16384,
                "auto_truncate": False,
            }
        )

    async def tei_embed(request: Request) -> Response:
        body = await request.json()
        texts = body["inputs"]
        seen.record("tei", request, body, texts)
        if len(texts) > TEI_MAX_BATCH:
            message = f"batch size {len(texts)} > maximum allowed batch size {TEI_MAX_BATCH}"
            return JSONResponse(
                {"error": message, "error_type": "Validation"},
                status_code=422,
                headers={"x-request-id": "tei-422"},
            )
        if any(t == "poison" for t in texts):
            return JSONResponse(
                {"error": "`inputs` must have less than 512 tokens", "error_type": "Validation"},
                status_code=422,
            )
        return JSONResponse([row_for(t) for t in texts])

    async def openai(request: Request) -> Response:
        body = await request.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        seen.record("openai", request, body, texts)
        if body.get("model") != "text-embedding-test":
            return JSONResponse(
                {"error": {"message": f"model {body.get('model')} not found", "type": "invalid"}},
                status_code=404,
            )
        fmt = body.get("encoding_format", "float")

        def encode(row: list[float]) -> Any:
            if fmt == "base64":
                return base64.b64encode(np.array(row, dtype="<f4").tobytes()).decode()
            return row

        data = [
            {"object": "embedding", "index": i, "embedding": encode(row_for(t))}
            for i, t in enumerate(texts)
        ]
        data.reverse()  # servers may answer out of order: the client places rows by index
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": {"total_tokens": 1}}
        )

    return Starlette(
        routes=[
            Route("/hf/models/m", hf, methods=["POST"]),
            Route("/hf/models/tokens", hf_tokens, methods=["POST"]),
            Route("/tei/info", tei_info, methods=["GET"]),
            Route("/tei/embed", tei_embed, methods=["POST"]),
            Route("/tei-without-info/embed", tei_embed, methods=["POST"]),
            Route("/v1/embeddings", openai, methods=["POST"]),
        ]
    )


@dataclasses.dataclass
class LiveServer:
    url: str
    seen: Seen


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    seen = Seen()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue here until uvicorn accepts them
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        build_app(seen), lifespan="off", log_level="warning", http="h11", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", seen)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive()


@pytest.fixture(autouse=True)
def _default_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """Use embedkit's own default transport, as a user would, not a proxy from the env."""
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


async def embed_concurrently(emb: embedkit.AsyncEmbedder, texts: list[str]) -> np.ndarray:
    """Many tasks each awaiting `embed(text)` at once, as a busy web app would."""
    out: list[np.ndarray | None] = [None] * len(texts)

    async def one(i: int) -> None:
        out[i] = await emb.embed(texts[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(texts)):
            tg.start_soon(one, i)
    return np.stack(out)  # type: ignore[arg-type]


TEXTS = [f"document number {i}: " + "words " * (i % 7) for i in range(150)]


@pytest.mark.asyncio
async def test_hf_over_real_sockets(live: LiveServer) -> None:
    async with embedkit.AsyncEmbedder(
        "m",
        limits=Limits(max_batch_size=16),
        url=f"{live.url}/hf/models/m",
        token=TOKEN,
        normalize=False,
    ) as emb:
        many = await emb.embed_many(TEXTS)
        single = await emb.embed("a lone text")
        sent_before = emb.stats().requests
        concurrent = await embed_concurrently(emb, [t + "." for t in TEXTS[:60]])
        sent = emb.stats().requests - sent_before
    assert many.dtype == np.float32
    assert many.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(many, rows_for(TEXTS))
    np.testing.assert_array_equal(single, row_for("a lone text"))
    np.testing.assert_array_equal(concurrent, rows_for([t + "." for t in TEXTS[:60]]))
    batches = live.seen.batches["hf"]
    assert max(len(b) for b in batches) <= 16
    assert all(body["normalize"] is False for body in live.seen.bodies["hf"])
    assert all(h["authorization"] == f"Bearer {TOKEN}" for h in live.seen.headers["hf"])
    assert all(h["content-type"] == "application/json" for h in live.seen.headers["hf"])
    # 60 concurrent embed() calls were coalesced: at most ⌈60/16⌉ + max_concurrency requests.
    assert sent <= 4 + embedkit.DEFAULT_MAX_CONCURRENCY


@pytest.mark.asyncio
async def test_hf_errors_and_pooling_over_real_sockets(live: LiveServer) -> None:
    async with embedkit.AsyncEmbedder(
        "m", url=f"{live.url}/hf/models/m", token="wrong", retry=None
    ) as emb:
        with pytest.raises(embedkit.AuthenticationError) as info:
            await emb.embed("x")
    assert info.value.status_code == 401
    assert info.value.message == "Invalid credentials"

    async with embedkit.AsyncEmbedder(
        "tokens", url=f"{live.url}/hf/models/tokens", pooling="mean"
    ) as emb:
        pooled = await emb.embed_many(["abc", "hello"])
    np.testing.assert_array_equal(pooled, [[1.0, 3.0], [2.0, 5.0]])


@pytest.mark.asyncio
async def test_tei_over_real_sockets(live: LiveServer) -> None:
    before = len(live.seen.batches.get("tei", []))
    async with embedkit.AsyncEmbedder(
        limits=Limits(max_batch_size=64),
        api="tei",
        url=f"{live.url}/tei",
        token=TOKEN,
        truncate=True,
    ) as emb:
        assert emb.info.model_id == "BAAI/bge-small-en-v1.5"
        assert emb.info.max_batch_size == TEI_MAX_BATCH
        many = await emb.embed_many(TEXTS)
        concurrent = await embed_concurrently(emb, [t + "!" for t in TEXTS[:40]])
        stats = emb.stats()
    np.testing.assert_array_equal(many, rows_for(TEXTS))
    np.testing.assert_array_equal(concurrent, rows_for([t + "!" for t in TEXTS[:40]]))
    batches = live.seen.batches["tei"][before:]
    assert max(len(b) for b in batches) <= TEI_MAX_BATCH  # /info's limit, never exceeded
    assert stats.max_batch_size == TEI_MAX_BATCH
    assert live.seen.info_calls >= 1
    assert all(body["truncate"] is True for body in live.seen.bodies["tei"][before:])


@pytest.mark.asyncio
async def test_tei_refusals_over_real_sockets(live: LiveServer) -> None:
    results: dict[str, Any] = {}

    async def one(emb: embedkit.AsyncEmbedder, text: str) -> None:
        try:
            results[text] = await emb.embed(text)
        except embedkit.InputError as exc:
            results[text] = exc

    async with embedkit.AsyncEmbedder(api="tei", url=f"{live.url}/tei", retry=None) as emb:
        with pytest.raises(embedkit.InputError, match="less than 512 tokens") as info:
            await emb.embed("poison")
        assert info.value.status_code == 422
        # A bad text sharing a batch with good ones fails alone.
        async with anyio.create_task_group() as tg:
            for text in ["good one", "poison", "good two"]:
                tg.start_soon(one, emb, text)
    assert isinstance(results["poison"], embedkit.InputError)
    np.testing.assert_array_equal(results["good one"], row_for("good one"))
    np.testing.assert_array_equal(results["good two"], row_for("good two"))


@pytest.mark.asyncio
async def test_tei_batch_size_refusal_over_real_sockets(live: LiveServer) -> None:
    """Without /info the client learns the limit from the 422 and splits."""
    before = len(live.seen.batches.get("tei", []))
    async with embedkit.AsyncEmbedder(
        limits=Limits(max_batch_size=32), api="tei", url=f"{live.url}/tei-without-info", retry=None
    ) as emb:
        many = await emb.embed_many(TEXTS[:64])
        assert emb.stats().max_batch_size == TEI_MAX_BATCH
    np.testing.assert_array_equal(many, rows_for(TEXTS[:64]))
    sizes = [len(b) for b in live.seen.batches["tei"][before:]]
    assert sizes[0] == 32
    assert sum(size for size in sizes if size <= TEI_MAX_BATCH) == 64


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding_format", ["base64", "float"])
async def test_openai_over_real_sockets(live: LiveServer, encoding_format: str) -> None:
    before = len(live.seen.batches.get("openai", []))
    async with embedkit.AsyncEmbedder(
        "text-embedding-test",
        connection=Connection(encoding_format=encoding_format),
        limits=Limits(max_batch_size=32),
        api="openai",
        url=f"{live.url}/v1",
        token=TOKEN,
        dimensions=DIM,
    ) as emb:
        many = await emb.embed_many(TEXTS)
        concurrent = await embed_concurrently(emb, [t + "?" for t in TEXTS[:50]])
    np.testing.assert_array_equal(many, rows_for(TEXTS))
    np.testing.assert_array_equal(concurrent, rows_for([t + "?" for t in TEXTS[:50]]))
    bodies = live.seen.bodies["openai"][before:]
    assert all(b["encoding_format"] == encoding_format for b in bodies)
    assert all(b["dimensions"] == DIM for b in bodies)
    assert max(len(b) for b in live.seen.batches["openai"][before:]) <= 32
    assert all(h["authorization"] == f"Bearer {TOKEN}" for h in live.seen.headers["openai"])


@pytest.mark.asyncio
async def test_openai_unknown_model_over_real_sockets(live: LiveServer) -> None:
    async with embedkit.AsyncEmbedder(
        "no-such-model", api="openai", url=f"{live.url}/v1", retry=None
    ) as emb:
        with pytest.raises(embedkit.ModelNotFoundError, match="no-such-model not found"):
            await emb.embed("x")


def test_the_blocking_embedder_over_real_sockets(live: LiveServer) -> None:
    with embedkit.Embedder(api="tei", url=f"{live.url}/tei") as emb:
        matrix = emb.embed_many(TEXTS[:20])
        vector = emb.embed("one more")
    np.testing.assert_array_equal(matrix, rows_for(TEXTS[:20]))
    np.testing.assert_array_equal(vector, row_for("one more"))
