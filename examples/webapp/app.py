"""A FastAPI app that embeds through one shared `embedkit.AsyncEmbedder`.

    pip install -c constraints.txt -e ".[serve]" fastapi
    embedkit serve --port 8080 &                                   # or any TEI / HF / OpenAI server
    EMBEDKIT_URL=http://127.0.0.1:8080 EMBEDKIT_API=tei \\
        uvicorn app:app --app-dir examples/webapp --port 8000

With several worker processes, share one quota and one cache through Redis (`pip install
"embedkit[redis]"`; see the "many processes" guide):

    EMBEDKIT_URL=http://127.0.0.1:8080 EMBEDKIT_API=tei \\
    EMBEDKIT_REDIS_URL=redis://127.0.0.1:6379/0 EMBEDKIT_REQUESTS_PER_SECOND=50 \\
        uvicorn app:app --app-dir examples/webapp --port 8000 --workers 4

* The lifespan opens one `AsyncEmbedder` for the whole process and embeds a small corpus at
  start-up; a dependency hands the embedder to the routes. Every request's `await emb.embed…`
  joins the same queue, so texts from many concurrent web requests leave in shared batches.
* `POST /embed` `{"texts": [...]}` → `{"embeddings": [[...], ...], "dimension": d}`.
* `GET /search?q=...&k=3` → the k corpus sentences most similar to q (`embedkit.top_k`).
* `GET /stats` → requests this app answered, and the embedder's counters: compare
  `app.embed_requests + app.search_requests` with `embedder.requests`.

Configuration from the environment: `EMBEDKIT_URL`, `EMBEDKIT_API` (hf, tei, openai, local;
default tei), `EMBEDKIT_MODEL`, and the token variables embedkit always reads (`HF_TOKEN`,
`OPENAI_API_KEY`). For many workers: `EMBEDKIT_REDIS_URL` (one `RedisQuota` and one
`RedisCache` for every worker), `EMBEDKIT_REQUESTS_PER_SECOND` (the quota's rate, for all the
workers together; unset: learned from 429s), `EMBEDKIT_CACHE` (a `SQLiteCache` file, when the
workers share one machine and no Redis).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypedDict

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

import embedkit

CORPUS = [
    "The cat is sleeping on the warm windowsill.",
    "Interest rates were raised by the central bank this morning.",
    "The football match was postponed because of heavy rain.",
    "Fresh bread is baked every morning at the corner bakery.",
    "The new smartphone has a larger battery and a brighter screen.",
    "Volcanic eruptions can send ash high into the atmosphere.",
    "She practises the violin for two hours every evening.",
    "The museum opened an exhibition of ancient Egyptian jewellery.",
    "Regular exercise lowers the risk of heart disease.",
    "The train to the airport leaves every fifteen minutes.",
    "Tomatoes grow best in full sun with plenty of water.",
    "The company reported record profits for the third quarter.",
]


@dataclasses.dataclass
class Counts:
    """What this app answered (so /stats can show how much embedkit coalesced)."""

    embed_requests: int = 0
    search_requests: int = 0
    texts: int = 0


class State(TypedDict):
    embedder: embedkit.AsyncEmbedder
    corpus: np.ndarray
    counts: Counts


def shared_options() -> dict[str, Any]:
    """The quota and cache every worker process shares, from the environment."""
    redis_url = os.environ.get("EMBEDKIT_REDIS_URL")
    rate = os.environ.get("EMBEDKIT_REQUESTS_PER_SECOND")
    options: dict[str, Any] = {}
    if redis_url:
        options["quota"] = embedkit.RedisQuota(
            redis_url, name="webapp", requests_per_second=float(rate) if rate else None
        )
        options["cache"] = embedkit.RedisCache(redis_url)
    elif rate:
        options["limits"] = embedkit.Limits(requests_per_second=float(rate))
    if os.environ.get("EMBEDKIT_CACHE"):
        options["cache"] = embedkit.SQLiteCache(os.environ["EMBEDKIT_CACHE"])
    return options


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    """One embedder for the process: opened at start-up, closed at shutdown."""
    async with embedkit.AsyncEmbedder(
        os.environ.get("EMBEDKIT_MODEL"),
        url=os.environ.get("EMBEDKIT_URL"),
        api=os.environ.get("EMBEDKIT_API", "tei"),  # type: ignore[arg-type]
        **shared_options(),
    ) as emb:
        corpus = await emb.embed_many(CORPUS)
        yield {"embedder": emb, "corpus": corpus, "counts": Counts()}


app = FastAPI(title="embedkit web app example", lifespan=lifespan)


def get_embedder(request: Request) -> embedkit.AsyncEmbedder:
    """The process's one embedder (a FastAPI dependency)."""
    emb: embedkit.AsyncEmbedder = request.state.embedder
    return emb


def get_counts(request: Request) -> Counts:
    counts: Counts = request.state.counts
    return counts


Embedder = Annotated[embedkit.AsyncEmbedder, Depends(get_embedder)]
Counter = Annotated[Counts, Depends(get_counts)]


class EmbedRequest(BaseModel):
    texts: list[str] = Field(min_length=1, max_length=256)


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimension: int


class Hit(BaseModel):
    index: int
    text: str
    score: float


def http_error(exc: Exception) -> HTTPException:
    """embedkit's typed errors as HTTP answers: the caller's fault, ours, or the backend's."""
    if isinstance(exc, (TypeError, ValueError)):
        return HTTPException(422, str(exc))
    if isinstance(exc, (embedkit.RateLimitError, embedkit.ModelLoadingError)):
        headers = {"Retry-After": str(int(exc.retry_after or 1))}
        return HTTPException(503, "the embedding backend is busy", headers=headers)
    return HTTPException(502, f"the embedding backend failed: {type(exc).__name__}")


@app.post("/embed")
async def embed(body: EmbedRequest, emb: Embedder, counts: Counter) -> EmbedResponse:
    """Embed the texts: one row per text, in order."""
    counts.embed_requests += 1
    counts.texts += len(body.texts)
    try:
        matrix = await emb.embed_many(body.texts)
    except (TypeError, ValueError, embedkit.EmbedkitError) as exc:
        raise http_error(exc) from exc
    return EmbedResponse(embeddings=matrix.tolist(), dimension=matrix.shape[1])


@app.get("/search")
async def search(
    request: Request,
    emb: Embedder,
    counts: Counter,
    q: Annotated[str, Query(min_length=1, max_length=2000)],
    k: Annotated[int, Query(ge=1, le=len(CORPUS))] = 3,
) -> list[Hit]:
    """The `k` corpus sentences closest to `q`, best first."""
    counts.search_requests += 1
    counts.texts += 1
    try:
        query = await emb.embed(q)
    except (TypeError, ValueError, embedkit.EmbedkitError) as exc:
        raise http_error(exc) from exc
    indices, scores = embedkit.top_k(query[None, :], request.state.corpus, k=k)
    return [
        Hit(index=int(i), text=CORPUS[int(i)], score=float(s))
        for i, s in zip(indices[0], scores[0], strict=True)
    ]


@app.get("/stats")
async def stats(emb: Embedder, counts: Counter) -> dict[str, Any]:
    """What the app answered, and what its embedder sent to the backend."""
    return {"app": dataclasses.asdict(counts), "embedder": dataclasses.asdict(emb.stats())}
