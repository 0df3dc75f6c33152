"""Against Infinity, a real third-party OpenAI-compatible server, serving the same packaged model.

The cross-check: the same texts embedded via Infinity, via `embedkit serve` and with
`api="local"` give the same vectors (cosine > 0.9999), and the vectors mean something: a
paraphrase scores clearly above an unrelated sentence.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from embedkit import AsyncEmbedder, Connection
from embedkit._backends.local import LocalModel

from .local_fixtures import INFINITY_MODEL

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "corpus.txt"

PARAPHRASES = [
    ("The weather today is cold and rainy.", "It is chilly and wet outside this afternoon."),
    ("How do I reset my password?", "What are the steps to change my account password?"),
    ("He bought a new car last week.", "Last week he purchased a new automobile."),
    ("The stock market fell sharply today.", "Share prices dropped steeply in today's trading."),
]
UNRELATED = [
    ("The weather today is cold and rainy.", "Electrons carry a negative charge."),
    ("How do I reset my password?", "The salmon swim upstream each autumn to spawn."),
    ("He bought a new car last week.", "The choir sang carols in the town square."),
    ("The stock market fell sharply today.", "A hedgehog rustled through the leaves."),
]


def corpus_lines(n: int) -> list[str]:
    lines = [line.strip() for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line][:n]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


async def embed_concurrently(emb: AsyncEmbedder, texts: list[str], parts: int = 6) -> np.ndarray:
    """Many callers at once, each with a slice: rows must still come back in order."""
    size = -(-len(texts) // parts)
    results: dict[int, np.ndarray] = {}

    async def part(k: int) -> None:
        results[k] = await emb.embed_many(texts[k * size : (k + 1) * size])

    async with anyio.create_task_group() as tg:
        for k in range(parts):
            tg.start_soon(part, k)
    return np.concatenate([results[k] for k in range(parts)])


@pytest.mark.asyncio
@pytest.mark.parametrize("encoding", ["base64", "float"])
async def test_infinity_via_the_openai_protocol(
    infinity_url: str,
    local_model: LocalModel,
    encoding: str,
    http_transport: httpx.AsyncBaseTransport | None,
) -> None:
    texts = corpus_lines(120)
    async with AsyncEmbedder(
        INFINITY_MODEL,
        connection=Connection(encoding_format=encoding, transport=http_transport),
        api="openai",
        url=infinity_url,
    ) as emb:
        one = await emb.embed(texts[0])
        matrix = await embed_concurrently(emb, texts)
        stats = emb.stats()
    assert one.shape == (384,)
    assert matrix.shape == (120, 384)
    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]
    assert cosines(matrix, local_model.encode(texts)).min() > 0.9999
    assert stats.failed_texts == 0


@pytest.mark.asyncio
async def test_infinity_embedkit_serve_and_local_agree(
    infinity_url: str, serve_url: str, local_model: LocalModel
) -> None:
    texts = [*corpus_lines(64), *(t for pair in PARAPHRASES + UNRELATED for t in pair)]
    async with AsyncEmbedder(INFINITY_MODEL, api="openai", url=infinity_url) as emb:
        via_infinity = await embed_concurrently(emb, texts)
    async with AsyncEmbedder("any", api="openai", url=serve_url + "/v1") as emb:
        via_serve = await embed_concurrently(emb, texts)
    async with AsyncEmbedder(api="local") as emb:
        via_local = await embed_concurrently(emb, texts)

    assert cosines(via_infinity, via_local).min() > 0.9999
    assert cosines(via_serve, via_local).min() > 0.9999
    assert cosines(via_infinity, via_serve).min() > 0.9999

    index = {text: i for i, text in enumerate(texts)}
    for vectors in (via_infinity, via_serve, via_local):

        def score(a: str, b: str, vectors: np.ndarray = vectors) -> float:
            return float(vectors[index[a]] @ vectors[index[b]])

        paraphrase = [score(a, b) for a, b in PARAPHRASES]
        unrelated = [score(a, b) for a, b in UNRELATED]
        assert min(paraphrase) > 0.6, paraphrase
        assert max(unrelated) < 0.3, unrelated
        assert min(paraphrase) > max(unrelated) + 0.4
