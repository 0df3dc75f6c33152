"""Ollama's native embed API: `POST /api/embed` with `model` and an `input` list.

Wire facts (docs/providers.md says where each came from): the body is `{"model", "input":
[...], "truncate", "dimensions", "keep_alive", "options"}` (`truncate` defaults to true:
over-long inputs are cut to the context); the answer is `{"model", "embeddings": [[...]],
"total_duration", "load_duration", "prompt_eval_count"}` in input order. Errors are
`{"error": "..."}`: 404 for a model not pulled, 400 for a bad input, 503 "server busy"
when its queue of pending requests is full. No authentication unless a proxy adds it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from ..._config import Kind, Matrix
from ..._errors import RateLimitError, ResponseError, StatusError
from ._base import Options, WireProtocol, api_url, load_json, numeric_rows

__all__ = ["OLLAMA_BASE", "OllamaProtocol"]

OLLAMA_BASE = "http://127.0.0.1:11434"


class OllamaProtocol(WireProtocol):
    """POST `{"model", "input"}` to `{url}/api/embed` (default `http://127.0.0.1:11434`).

    `truncate` and `dimensions` are sent as Ollama names them. Ollama has no field for a
    query/document intent (`kind=` is refused) and returns floats (other dtypes are
    quantised by embedkit). A token, when given, is sent as a bearer token (for a proxy).
    """

    name: ClassVar[str] = "ollama"
    tokens_path: ClassVar[tuple[str, ...]] = ("prompt_eval_count",)
    supported: ClassVar[frozenset[str]] = frozenset({"truncate", "dimensions"})

    def __init__(self, *, model: str | None, url: str | None, options: Options) -> None:
        if not model:
            raise ValueError("api='ollama' needs a model name (e.g. 'nomic-embed-text')")
        super().__init__(model=model, url=url, options=options)
        head: dict[str, Any] = {"model": model}
        if options.truncate is not None:
            head["truncate"] = options.truncate
        if options.dimensions is not None:
            head["dimensions"] = options.dimensions
        self._head = head

    def _endpoint(self, model: str | None, url: str | None) -> str:
        return api_url(url, OLLAMA_BASE, "/api/embed")

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        return orjson.dumps({**self._head, "input": texts})

    def decode(self, content: bytes, n: int) -> Matrix:
        parsed = load_json(content)
        if not isinstance(parsed, dict) or "embeddings" not in parsed:
            raise ResponseError("the answer has no 'embeddings' list")
        return numeric_rows(parsed["embeddings"], n, "embeddings")

    def refine_error(self, error: StatusError, body: bytes) -> StatusError:
        """503 "server busy" means Ollama's queue is full: back off like a 429."""
        if error.status_code == 503 and "busy" in error.message.lower():
            return RateLimitError(
                503, error.message, request_id=error.request_id, retry_after=error.retry_after
            )
        return error
