"""examples/webapp: the FastAPI app under uvicorn, against `embedkit serve`, 200 clients at once.

Both servers are real processes on loopback. Every answer is checked against vectors the test
gets from `embedkit serve` directly, and `/stats` must show that the app's embedder sent the
backend far fewer requests than the app answered: texts from concurrent web requests shared
batches.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest

import embedkit

from .servers import ROOT, free_port, python_server, running

APP_DIR = ROOT / "examples" / "webapp"
CLIENTS = 200

pytestmark = pytest.mark.integration


def load_app_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webapp_example", APP_DIR / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def webapp(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`uvicorn app:app` from examples/webapp, pointed at `embedkit serve` (TEI protocol)."""
    port = free_port()
    argv = python_server(["-m", "uvicorn", "app:app", "--app-dir", str(APP_DIR)])
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log = tmp_path_factory.mktemp("webapp") / "uvicorn.log"
    env = {"EMBEDKIT_URL": serve_url, "EMBEDKIT_API": "tei"}
    base = f"http://127.0.0.1:{port}"
    with running(argv, health_url=base + "/stats", log=log, timeout=120.0, env=env):
        yield base


async def expected_vectors(serve_url: str, texts: list[str]) -> np.ndarray:
    async with embedkit.AsyncEmbedder(api="tei", url=serve_url) as emb:
        return await emb.embed_many(texts)


def test_two_hundred_concurrent_clients_get_correct_answers_in_few_batches(
    webapp: str, serve_url: str
) -> None:
    corpus: list[str] = load_app_module().CORPUS
    queries = {
        "A kitten naps in the sun by the window.": 0,
        "The bank increased borrowing costs today.": 1,
        "The game was called off due to the storm.": 2,
        "A phone with longer battery life and a better display.": 4,
    }
    texts = [f"Web request number {i} asks about topic {i % 17}." for i in range(CLIENTS // 2)]
    want = asyncio.run(expected_vectors(serve_url, texts))
    corpus_vectors = asyncio.run(expected_vectors(serve_url, corpus))
    query_list = list(queries)
    query_vectors = asyncio.run(expected_vectors(serve_url, query_list))
    # unit-length rows from the server: the dot product is the cosine
    ranking = np.argsort(-(query_vectors @ corpus_vectors.T), axis=1)[:, :3]

    async def main() -> tuple[list[httpx.Response], list[httpx.Response], dict, dict]:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=webapp, limits=limits, timeout=60.0) as client:
            before = (await client.get("/stats")).json()
            embeds = [client.post("/embed", json={"texts": [t]}) for t in texts]
            searches = [
                client.get("/search", params={"q": query_list[i % len(queries)], "k": 3})
                for i in range(CLIENTS - len(texts))
            ]
            answers = await asyncio.gather(*embeds, *searches)
            after = (await client.get("/stats")).json()
        return answers[: len(texts)], answers[len(texts) :], before, after

    embed_answers, search_answers, before, after = asyncio.run(main())

    for i, answer in enumerate(embed_answers):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["dimension"] == want.shape[1]
        assert np.allclose(body["embeddings"][0], want[i], atol=1e-5), i
    for i, answer in enumerate(search_answers):
        assert answer.status_code == 200, answer.text
        hits = answer.json()
        query = query_list[i % len(queries)]
        assert [h["index"] for h in hits] == ranking[i % len(queries)].tolist()
        assert hits[0]["index"] == queries[query]  # the paraphrase ranks first
        assert hits[0]["text"] == corpus[queries[query]]
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]

    answered = (after["app"]["embed_requests"] + after["app"]["search_requests"]) - (
        before["app"]["embed_requests"] + before["app"]["search_requests"]
    )
    sent = after["embedder"]["requests"] - before["embedder"]["requests"]
    assert answered == CLIENTS
    assert after["embedder"]["texts"] - before["embedder"]["texts"] == CLIENTS
    # 200 web requests, one text each: the app's one embedder sent them in shared batches
    assert sent <= CLIENTS // 5, f"{sent} backend requests for {answered} web requests"
    assert after["embedder"]["failed_texts"] == 0


def test_bad_input_is_a_422_and_nothing_is_sent(webapp: str) -> None:
    with httpx.Client(base_url=webapp, timeout=30.0) as client:
        before = client.get("/stats").json()["embedder"]["requests"]
        empty = client.post("/embed", json={"texts": ["fine", ""]})
        none = client.post("/embed", json={"texts": []})
        after = client.get("/stats").json()["embedder"]["requests"]
    assert empty.status_code == 422
    assert "empty string" in empty.text
    assert none.status_code == 422
    assert after == before


def test_the_app_module_is_documented() -> None:
    module = load_app_module()
    assert module.__doc__ is not None
    assert "uvicorn app:app" in module.__doc__
    assert isinstance(module.app.title, str)
    assert Path(module.__file__).parent == APP_DIR


def test_four_workers_share_one_redis_cache_and_quota(tmp_path: Path) -> None:
    """`uvicorn --workers 4` with EMBEDKIT_REDIS_URL: a text one worker embedded is not resent."""
    from devtools.redis import running_redis

    from .fakes import vector_for
    from .hashserver import HashServer

    port = free_port()
    argv = python_server(["-m", "uvicorn", "app:app", "--app-dir", str(APP_DIR)])
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    argv += ["--workers", "4"]
    base = f"http://127.0.0.1:{port}"
    texts = [f"Question {i} from a visitor." for i in range(60)]
    with running_redis(tmp_path) as redis_server, HashServer.running(dim=8) as server:
        env = {
            "EMBEDKIT_URL": server.url,
            "EMBEDKIT_API": "tei",
            "EMBEDKIT_REDIS_URL": redis_server.url,
            "EMBEDKIT_REQUESTS_PER_SECOND": "200",
        }
        with running(argv, health_url=base + "/stats", log=tmp_path / "uvicorn.log", env=env):

            async def round_of_requests() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
                    calls = [client.post("/embed", json={"texts": [t]}) for t in texts]
                    return await asyncio.gather(*calls)

            first = asyncio.run(round_of_requests())
            sent = server.texts
            second = asyncio.run(round_of_requests())
            assert server.texts == sent  # every text came from the shared cache
    for answers in (first, second):
        for text, answer in zip(texts, answers, strict=True):
            assert answer.status_code == 200, answer.text
            assert np.array_equal(answer.json()["embeddings"][0], vector_for(text, 8))
