"""`embedkit serve`: the three protocols' bodies and status codes, loading, keys, batching.

Most tests run the ASGI app in-process (`httpx.ASGITransport`, lifespan entered by hand) over
the session's loaded model; the `integration` ones talk to `python -m embedkit.serve` as a real
process over real sockets, with the embedkit client.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

import embedkit
from embedkit import AsyncEmbedder, RetryPolicy
from embedkit._backends.local import LocalModel

pytest.importorskip(
    "sentence_transformers", reason='needs the extra: pip install "embedkit[local]"'
)
pytest.importorskip("starlette", reason='needs the extra: pip install "embedkit[serve]"')

from starlette.applications import Starlette

from embedkit import Connection, Limits
from embedkit.serve import _run as serve_run
from embedkit.serve import build_parser, create_app, is_loopback

BASE = "http://serve"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["The cat is sleeping on the warm windowsill.", "A cat naps in the sun by the window."]
LONG = "the river runs down to the sea " * 60  # about 420 tokens: over the model's 256


@contextlib.asynccontextmanager
async def serving(app: object, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan in this task and give a client that talks to it in-process."""
    async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
        if ready:
            await app.state.engine.wait_ready()  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


@pytest.fixture
def app(local_model: LocalModel) -> Starlette:
    """The app over the session's loaded model (its lifespan is entered by `serving`)."""
    return create_app(local_model)


def expected(local_model: LocalModel, texts: list[str], **options: object) -> np.ndarray:
    return local_model.encode(texts, **options)  # type: ignore[arg-type]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------------ HF


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path", ["/models/any/name", "/hf-inference/models/x/pipeline/feature-extraction"]
)
async def test_hf_answers_one_vector_for_a_string_and_a_matrix_for_a_list(
    app: Starlette, local_model: LocalModel, path: str
) -> None:
    async with serving(app) as client:
        one = await client.post(path, json={"inputs": TEXTS[0]})
        many = await client.post(path, json={"inputs": TEXTS})
        assert one.status_code == 200
        assert one.headers["content-type"] == "application/json"
        vector = np.array(one.json(), dtype=np.float32)
        matrix = np.array(many.json(), dtype=np.float32)
        assert vector.shape == (384,)
        assert matrix.shape == (2, 384)
        np.testing.assert_allclose(matrix, expected(local_model, TEXTS), atol=1e-5)
        np.testing.assert_allclose(vector, matrix[0], atol=1e-5)


@pytest.mark.asyncio
async def test_hf_options_at_the_top_level_or_under_parameters(
    app: Starlette, local_model: LocalModel
) -> None:
    async with serving(app) as client:
        top = await client.post(
            "/models/m", json={"inputs": TEXTS, "normalize": False, "dimensions": 64}
        )
        nested = await client.post(
            "/models/m",
            json={"inputs": TEXTS, "parameters": {"normalize": False, "dimensions": 64}},
        )
        raw = expected(local_model, TEXTS, normalize=False)[:, :64]
        np.testing.assert_allclose(np.array(top.json()), raw, atol=1e-4)
        np.testing.assert_allclose(np.array(nested.json()), raw, atol=1e-4)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": []}, "`inputs` cannot be empty"),
        ({"inputs": ""}, "`inputs[0]` is an empty string"),
        ({"inputs": [1, 2]}, "`inputs` must be a string or a list of strings"),
        ({"text": "x"}, "`inputs` is required"),
        ({"inputs": ["x"] * 33}, "batch size 33 > maximum allowed batch size 32"),
        ({"inputs": "x", "normalize": "yes"}, "`normalize` must be a boolean"),
        ({"inputs": LONG, "truncate": False}, "must have less than 256 tokens. Given: "),
    ],
)
async def test_hf_errors_are_400_with_an_error_string(
    app: Starlette, body: dict[str, object], message: str
) -> None:
    async with serving(app) as client:
        response = await client.post("/models/m", json=body)
        assert response.status_code == 400
        assert set(response.json()) == {"error"}
        assert message in response.json()["error"]


# ----------------------------------------------------------------------------- TEI


@pytest.mark.asyncio
async def test_tei_embed_is_always_two_dimensional(app: Starlette, local_model: LocalModel) -> None:
    async with serving(app) as client:
        one = await client.post("/embed", json={"inputs": TEXTS[0]})
        assert np.array(one.json()).shape == (1, 384)
        cut = await client.post("/embed", json={"inputs": TEXTS, "dimensions": 128})
        matrix = np.array(cut.json(), dtype=np.float32)
        assert matrix.shape == (2, 128)
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(matrix, expected(local_model, TEXTS, dimensions=128), atol=1e-5)


@pytest.mark.asyncio
async def test_tei_info_and_health(app: Starlette) -> None:
    async with serving(app) as client:
        health = await client.get("/health")
        info = (await client.get("/info")).json()
        assert health.status_code == 200
        assert info["model_id"] == MODEL
        assert info["max_client_batch_size"] == 32
        assert info["max_concurrent_requests"] == 512
        assert info["max_input_length"] == 256
        assert info["auto_truncate"] is True
        assert info["version"] == f"embedkit-{embedkit.__version__}"
        assert info["embedkit"]["dimension"] == 384


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "status", "error_type", "message"),
    [
        ({"inputs": []}, 400, "Empty", "`inputs` cannot be empty"),
        ({"inputs": ["ok", ""]}, 400, "Empty", "`inputs[1]` is an empty string"),
        (
            {"inputs": ["x"] * 33},
            422,
            "Validation",
            "batch size 33 > maximum allowed batch size 32",
        ),
        ({"inputs": LONG, "truncate": False}, 422, "Validation", "must have less than 256 tokens"),
        (
            {"inputs": "x", "prompt_name": "nope"},
            422,
            "Validation",
            "Prompt name `nope` is not defined",
        ),
        (
            {"inputs": "x", "dimensions": 385},
            422,
            "Validation",
            "at most the model's dimension 384",
        ),
        ({"inputs": "x", "dimensions": 0}, 422, "Validation", "`dimensions` must be a positive"),
        ({"inputs": "x", "truncation_direction": "up"}, 422, "Validation", "'left' or 'right'"),
        ({"inputs": 5}, 422, "Validation", "must be a string or a list of strings"),
        ([1, 2], 422, "Validation", "must be a JSON object"),
    ],
)
async def test_tei_errors_carry_error_type_and_tei_status(
    app: Starlette, body: object, status: int, error_type: str, message: str
) -> None:
    async with serving(app) as client:
        response = await client.post("/embed", json=body)
        assert response.status_code == status
        assert response.json()["error_type"] == error_type
        assert message in response.json()["error"]


@pytest.mark.asyncio
async def test_tei_truncation_is_the_servers_default_unless_asked(local_model: LocalModel) -> None:
    async with serving(create_app(local_model, auto_truncate=False)) as client:
        refused = await client.post("/embed", json={"inputs": LONG})
        allowed = await client.post("/embed", json={"inputs": LONG, "truncate": True})
        left = await client.post(
            "/embed",
            json={"inputs": LONG + " end", "truncate": True, "truncation_direction": "Left"},
        )
        info = (await client.get("/info")).json()
    assert refused.status_code == 422
    assert allowed.status_code == 200
    assert left.status_code == 200
    assert info["auto_truncate"] is False


@pytest.mark.asyncio
async def test_body_size_limit_and_bad_json(app: Starlette) -> None:
    async with serving(app) as client:
        big = b'{"inputs": "' + b"a" * 2_000_000 + b'"}'
        declared = await client.post(
            "/embed", content=big, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.headers["content-type"].startswith("text/plain")

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(big), 500_000):
                yield big[start : start + 500_000]

        streamed = await client.post("/v1/embeddings", content=chunks())
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "request_too_large"
        hf = await client.post("/models/m", content=big)
        assert hf.status_code == 413
        assert "length limit exceeded" in hf.json()["error"]

        bad = await client.post("/embed", content=b"{not json")
        assert bad.status_code == 400
        assert "Failed to parse the request body as JSON" in bad.text


# -------------------------------------------------------------------------- OpenAI


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
async def test_openai_float_and_base64_agree(
    app: Starlette, local_model: LocalModel, path: str
) -> None:
    async with serving(app) as client:
        floats = await client.post(path, json={"model": "whatever", "input": TEXTS})
        packed = await client.post(
            path, json={"model": "whatever", "input": TEXTS, "encoding_format": "base64"}
        )
        body = floats.json()
        assert body["object"] == "list"
        assert body["model"] == MODEL
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert body["data"][0]["object"] == "embedding"
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 10
        as_floats = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        as_b64 = np.stack(
            [
                np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                for d in packed.json()["data"]
            ]
        )
        np.testing.assert_allclose(as_floats, as_b64, atol=1e-6)
        np.testing.assert_allclose(as_b64, expected(local_model, TEXTS), atol=1e-5)


@pytest.mark.asyncio
async def test_openai_single_string_and_dimensions(app: Starlette) -> None:
    async with serving(app) as client:
        response = await client.post("/v1/embeddings", json={"input": TEXTS[0], "dimensions": 32})
        data = response.json()["data"]
        assert len(data) == 1
        assert len(data[0]["embedding"]) == 32
        assert np.linalg.norm(data[0]["embedding"]) == pytest.approx(1.0, abs=1e-5)
        models = (await client.get("/v1/models")).json()
        assert models["data"][0]["id"] == MODEL


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"input": []}, "`input` cannot be empty", "input"),
        ({"input": [[1, 2, 3]]}, "token arrays are not supported", "input"),
        ({"input": "x", "encoding_format": "hex"}, "'float' or 'base64'", "encoding_format"),
        ({"input": ["x"] * 40}, "batch size 40 > maximum allowed batch size 32", "input"),
        ({"input": "x", "model": 3}, "`model` must be a string", "model"),
    ],
)
async def test_openai_errors_are_nested_objects(
    app: Starlette, body: dict[str, object], message: str, param: str
) -> None:
    async with serving(app) as client:
        response = await client.post("/v1/embeddings", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert message in error["message"]


# ------------------------------------------------------------------------- loading


@pytest.mark.asyncio
async def test_while_loading_503_with_estimated_time_or_held_with_wait_for_model(
    local_model: LocalModel,
) -> None:
    gate = anyio.Event()

    async def load() -> LocalModel:
        await gate.wait()
        return local_model

    app = create_app(load=load)
    engine = app.state.engine
    async with serving(app, ready=False) as client:
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["error_type"] == "Unhealthy"
        hf = await client.post("/models/x", json={"inputs": "hi"})
        assert hf.status_code == 503
        assert hf.json()["error"] == f"Model {MODEL} is currently loading"
        assert hf.json()["estimated_time"] >= 1
        assert int(hf.headers["retry-after"]) >= 1
        tei = await client.post("/embed", json={"inputs": "hi"})
        assert (tei.status_code, tei.json()["error_type"]) == (503, "Unhealthy")
        openai = await client.post("/v1/embeddings", json={"input": "hi"})
        assert openai.status_code == 503
        assert openai.json()["error"]["code"] == "model_loading"
        assert openai.json()["estimated_time"] >= 1

        answers: dict[str, httpx.Response] = {}

        async def held(
            name: str, path: str, body: dict[str, object], headers: dict[str, str]
        ) -> None:
            answers[name] = await client.post(path, json=body, headers=headers)

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                held, "header", "/models/x", {"inputs": "hi"}, {"x-wait-for-model": "true"}
            )
            tg.start_soon(
                held,
                "option",
                "/models/x",
                {"inputs": "hi", "options": {"wait_for_model": True}},
                {},
            )
            tg.start_soon(held, "tei", "/embed", {"inputs": "hi"}, {"x-wait-for-model": "true"})
            await anyio.wait_all_tasks_blocked()
            assert engine.held == 3
            assert answers == {}
            gate.set()
        assert {name: r.status_code for name, r in answers.items()} == {
            "header": 200,
            "option": 200,
            "tei": 200,
        }
        assert (await client.get("/health")).status_code == 200


@pytest.mark.asyncio
async def test_the_client_waits_through_loading(local_model: LocalModel) -> None:
    gate = anyio.Event()
    waits: list[float] = []

    async def load() -> LocalModel:
        await gate.wait()
        return local_model

    async def sleep(seconds: float) -> None:  # the client's backoff: the model finishes loading
        waits.append(seconds)
        gate.set()
        await anyio.lowlevel.checkpoint()

    app = create_app(load=load)
    async with (
        serving(app, ready=False),
        AsyncEmbedder(
            connection=Connection(transport=httpx.ASGITransport(app=app)),
            url=f"{BASE}/models/x",
            api="hf",
            retry=RetryPolicy(sleep=sleep),
        ) as emb,
    ):
        vector = await emb.embed(TEXTS[0])
        stats = emb.stats()
    assert vector.shape == (384,)
    assert sum(stats.retries.values()) == 1  # one 503, then the held request succeeded
    assert waits
    assert min(waits) >= 1  # it waited what the server estimated, without really sleeping


@pytest.mark.asyncio
async def test_a_model_that_fails_to_load_is_reported(local_model: LocalModel) -> None:
    async def load() -> LocalModel:
        raise RuntimeError("weights are corrupt")

    app = create_app(load=load)
    async with serving(app) as client:
        health = await client.get("/health")
        tei = await client.post(
            "/embed", json={"inputs": "hi"}, headers={"x-wait-for-model": "true"}
        )
        hf = await client.post("/models/x", json={"inputs": "hi"})
    assert health.status_code == 503
    assert "failed to load: RuntimeError: weights are corrupt" in health.json()["error"]
    assert (tei.status_code, tei.json()["error_type"]) == (424, "Backend")
    assert hf.status_code == 500


# -------------------------------------------------------------------------- API key

KEY = "sk-embedkit-test-key-0123456789"


@pytest.mark.asyncio
async def test_api_key_is_required_everywhere_but_health(
    local_model: LocalModel, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(local_model, api_key=KEY)
    async with serving(app) as client:
        assert (await client.get("/health")).status_code == 200
        missing_tei = await client.post("/embed", json={"inputs": "hi"})
        assert (missing_tei.status_code, missing_tei.content) == (401, b"")
        wrong_hf = await client.post(
            "/models/x", json={"inputs": "hi"}, headers={"authorization": "Bearer nope"}
        )
        assert wrong_hf.status_code == 401
        assert "error" in wrong_hf.json()
        wrong_openai = await client.post(
            "/v1/embeddings", json={"input": "hi"}, headers={"authorization": KEY}
        )
        assert wrong_openai.status_code == 401
        assert wrong_openai.json()["error"]["code"] == "invalid_api_key"
        assert (await client.get("/info")).status_code == 401
        good = await client.post(
            "/embed", json={"inputs": "hi"}, headers={"authorization": f"Bearer {KEY}"}
        )
        assert good.status_code == 200
        for response in (missing_tei, wrong_hf, wrong_openai, good):
            assert KEY not in response.text
        transport = httpx.ASGITransport(app=app)
        async with AsyncEmbedder(
            connection=Connection(transport=transport), api="tei", url=BASE, token=KEY
        ) as emb:
            assert (await emb.embed_many(TEXTS)).shape == (2, 384)
            assert KEY not in repr(emb)
        async with AsyncEmbedder(
            connection=Connection(transport=transport),
            api="openai",
            model="m",
            url=BASE,
            token="wrong",
        ) as emb:
            with pytest.raises(embedkit.AuthenticationError) as caught:
                await emb.embed("hi")
            assert KEY not in str(caught.value)
    assert KEY not in caplog.text


# ------------------------------------------------------------------ batching, limits


@pytest.mark.asyncio
async def test_concurrent_requests_are_batched_server_side(local_model: LocalModel) -> None:
    app = create_app(local_model)
    texts = [f"Request number {i} carries its own sentence." for i in range(48)]
    async with serving(app) as client:
        answers: dict[int, list[float]] = {}

        async def one(i: int) -> None:
            response = await client.post("/models/m", json={"inputs": texts[i]})
            answers[i] = response.json()

        async with anyio.create_task_group() as tg:
            for i in range(len(texts)):
                tg.start_soon(one, i)
        stats = app.state.engine.stats()
        info = (await client.get("/info")).json()
    assert stats["texts"] == 48
    assert stats["batches"] <= 12, stats
    assert info["embedkit"]["batching"]["texts"] == 48
    matrix = np.array([answers[i] for i in range(len(texts))], dtype=np.float32)
    np.testing.assert_allclose(matrix, expected(local_model, texts), atol=1e-5)


@pytest.mark.asyncio
async def test_too_many_texts_in_flight_is_429(local_model: LocalModel) -> None:
    async with serving(create_app(local_model, max_concurrent_requests=2)) as client:
        tei = await client.post("/embed", json={"inputs": ["a", "b", "c"]})
        hf = await client.post("/models/m", json={"inputs": ["a", "b", "c"]})
        ok = await client.post("/embed", json={"inputs": ["a", "b"]})
    assert (tei.status_code, tei.json()["error_type"]) == (429, "Overloaded")
    assert hf.status_code == 429
    assert ok.status_code == 200


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "tei", "openai"])
async def test_the_client_splits_batches_the_server_refuses(
    local_model: LocalModel, api: str
) -> None:
    app = create_app(local_model, max_client_batch_size=8)
    texts = [f"Sentence {i} for the splitting test." for i in range(40)]
    url = {"hf": f"{BASE}/models/m", "tei": BASE, "openai": f"{BASE}/v1"}[api]
    async with (
        serving(app),
        AsyncEmbedder(
            "m",
            connection=Connection(transport=httpx.ASGITransport(app=app)),
            limits=Limits(max_batch_size=32),
            api=api,
            url=url,
        ) as emb,
    ):
        matrix = await emb.embed_many(texts)
        stats = emb.stats()
    np.testing.assert_allclose(matrix, expected(local_model, texts), atol=1e-5)
    if api == "tei":  # TEI's /info says 8 up front
        assert stats.splits == 0
    else:
        assert stats.splits >= 1
        assert stats.max_batch_size == 8


# ----------------------------------------------------------------------- running it


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.20")


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_run_warns_when_listening_beyond_this_machine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], host: str, warned: bool
) -> None:
    import uvicorn

    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: configs.append(self.config)
    )
    serve_run.run(host=host, port=9, api_key=KEY)
    err = capsys.readouterr().err
    assert ("WARNING: embedkit serve is listening on 0.0.0.0:9" in err) is warned
    assert KEY not in err
    assert configs[0].host == host
    assert configs[0].port == 9


def test_main_reads_the_command_line_and_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[object, dict[str, object]]] = []
    monkeypatch.setattr(serve_run, "run", lambda model, **kw: calls.append((model, kw)))
    monkeypatch.setenv("EMBEDKIT_API_KEY", KEY)
    serve_run.main(["--port", "8123", "--max-client-batch-size", "16", "--no-auto-truncate"])
    model, options = calls[0]
    assert model is None
    assert options["port"] == 8123
    assert options["api_key"] == KEY
    assert options["max_client_batch_size"] == 16
    assert options["auto_truncate"] is False
    assert build_parser().parse_args([]).host == "127.0.0.1"
    with pytest.raises(SystemExit, match="never downloads models"):
        serve_run.main(["--model", "no-such-org/no-such-model"])


# ------------------------------------------------------------------- a real process


@pytest.mark.integration
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("api", "path", "encoding"),
    [
        ("hf", "/models/x", "base64"),
        ("tei", "", "base64"),
        ("openai", "/v1", "base64"),
        ("openai", "/v1", "float"),
    ],
)
async def test_the_embedkit_client_against_a_real_embedkit_serve(
    serve_url: str,
    local_model: LocalModel,
    api: str,
    path: str,
    encoding: str,
    http_transport: httpx.AsyncBaseTransport | None,
) -> None:
    texts = [f"Line {i}: {t}" for i in range(20) for t in TEXTS]
    async with AsyncEmbedder(
        "x",
        connection=Connection(encoding_format=encoding, transport=http_transport),
        api=api,
        url=serve_url + path,
    ) as emb:
        one = await emb.embed(TEXTS[0])
        results: dict[int, np.ndarray] = {}

        async def part(k: int) -> None:
            results[k] = await emb.embed_many(texts[k * 8 : (k + 1) * 8])

        async with anyio.create_task_group() as tg:
            for k in range(5):
                tg.start_soon(part, k)
    matrix = np.concatenate([results[k] for k in range(5)])
    local = expected(local_model, texts)
    assert one.shape == (384,)
    assert matrix.shape == (40, 384)
    assert matrix.dtype == np.float32
    assert cosines(matrix, local).min() > 0.9999
    assert cosines(one[None, :], expected(local_model, TEXTS[:1])).min() > 0.9999


@pytest.mark.integration
def test_a_real_embedkit_serve_answers_errors_as_tei_does(serve_url: str) -> None:
    too_many = httpx.post(serve_url + "/embed", json={"inputs": ["x"] * 33})
    assert too_many.status_code == 422
    assert too_many.json() == {
        "error": "batch size 33 > maximum allowed batch size 32",
        "error_type": "Validation",
    }
    big = httpx.post(serve_url + "/embed", content=b"x" * 2_000_001)
    assert big.status_code == 413
    info = httpx.get(serve_url + "/info").json()
    assert info["model_id"] == MODEL


# --------------------------------------------------------------------------- the guide

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "local-and-serve.md"


def guide_blocks(language: str) -> list[str]:
    parts = GUIDE.read_text(encoding="utf-8").split("```")
    return [part[len(language) + 1 :] for part in parts[1::2] if part.startswith(language + "\n")]


def test_the_guide_serve_commands_parse() -> None:
    commands = []
    for block in guide_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0]
            for prefix in ("embedkit serve", "python -m embedkit.serve"):
                if prefix in line:
                    commands.append(line.split(prefix, 1)[1].split())
    assert len(commands) >= 5
    for argv in commands:
        build_parser().parse_args(argv)


def test_the_guide_local_examples_run(
    local_model: LocalModel, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = [b for b in guide_blocks("python") if "127.0.0.1:8080" not in b]
    assert len(blocks) >= 3
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), {})
    assert "(384,) (2, 384) float32" in capsys.readouterr().out


@pytest.mark.integration
def test_the_guide_server_examples_run(serve_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = [b for b in guide_blocks("python") if "127.0.0.1:8080" in b]
    assert blocks
    for block in blocks:
        exec(compile(block.replace("http://127.0.0.1:8080", serve_url), str(GUIDE), "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0::2] == ["hf", "tei", "openai"]
    assert all(float(score) > 0.6 for score in printed[1::2])
