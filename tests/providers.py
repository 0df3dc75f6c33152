"""The hosted APIs' wire shapes as a test server speaks them: where the texts are in a
request body, and a documented success answer for given rows.

Shared by test_protocols.py and test_errors.py so the scheduler tests run unchanged over
every protocol. Voyage's rows are answered in reverse order (placed back by `index`).
"""

from __future__ import annotations

from typing import Any

import httpx

#: every wire protocol embedkit speaks, in the order tests are parametrized
ALL_APIS = ["hf", "tei", "openai", "cohere", "voyage", "gemini", "ollama"]
HOSTED_APIS = ["cohere", "voyage", "gemini", "ollama"]

URLS = {
    "hf": "http://embed.test/models/m",
    "tei": "http://embed.test",
    "openai": "http://embed.test/v1",
    "cohere": "http://embed.test",
    "voyage": "http://embed.test/v1",
    "gemini": "http://embed.test/v1beta",
    "ollama": "http://embed.test",
}
POST_PATHS = {
    "hf": "/models/m",
    "tei": "/embed",
    "openai": "/v1/embeddings",
    "cohere": "/v2/embed",
    "voyage": "/v1/embeddings",
    "gemini": "/v1beta/models/m:batchEmbedContents",
    "ollama": "/api/embed",
}


def texts_of(api: str, body: dict[str, Any]) -> list[str]:
    """The texts a request body carries, in order."""
    if api == "gemini":
        return [r["content"]["parts"][0]["text"] for r in body["requests"]]
    key = {"hf": "inputs", "tei": "inputs", "cohere": "texts"}.get(api, "input")
    texts = body[key]
    return [texts] if isinstance(texts, str) else list(texts)


def rows_body(api: str, body: dict[str, Any], rows: list[list[float]]) -> Any:
    """The JSON a hosted API answers with for `rows` (floats, or a quantised type's ints)."""
    if api == "cohere":
        kind = body.get("embedding_types", ["float"])[0]
        return {
            "id": "e-1",
            "embeddings": {kind: rows},
            "texts": body["texts"],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 3}},
            "response_type": "embeddings_by_type",
        }
    if api == "voyage":
        data = [{"object": "embedding", "embedding": r, "index": i} for i, r in enumerate(rows)]
        data.reverse()  # out of order on purpose: rows are placed by index
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"total_tokens": 3},
        }
    if api == "gemini":
        return {"embeddings": [{"values": r} for r in rows]}
    if api == "ollama":
        return {"model": body["model"], "embeddings": rows, "prompt_eval_count": 3}
    raise ValueError(api)


def success(api: str, body: dict[str, Any], rows: list[list[float]]) -> httpx.Response:
    """A 200 answer in `api`'s shape (hf/tei: a bare list; openai: floats by index)."""
    if api in ("hf", "tei"):
        return httpx.Response(200, json=rows)
    if api == "openai":
        data = [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})
    return httpx.Response(200, json=rows_body(api, body, rows))
