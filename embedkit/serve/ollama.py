"""The Ollama dialect (its native embed API).

`POST /api/embed`, body `{"model", "input": str | [str], "truncate" (default true),
"dimensions", "keep_alive", "options"}` (`keep_alive` and `options` are accepted and have
nothing to act on here). The answer is `{"model", "embeddings": [[...]], "total_duration",
"load_duration", "prompt_eval_count"}`, unit-length rows, always 2-D. Errors are
`{"error": "..."}`: 400 for a bad request, 503 "server busy" when too many texts are in
flight (Ollama's full queue), 503 while the model loads.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from starlette.responses import Response

from .._config import Matrix
from ._common import (
    PLAIN_STATUS,
    ApiError,
    Dialect,
    EmbedRequest,
    error_response,
    json_object,
    json_response,
    parse_dimensions,
    parse_texts,
)

__all__ = ["OllamaDialect"]

#: Ollama answers a full queue with 503 "server busy".
_STATUS = {**PLAIN_STATUS, "overloaded": 503}


class OllamaDialect(Dialect):
    """`/api/embed` as Ollama speaks it."""

    name: ClassVar[str] = "ollama"
    counts_tokens: ClassVar[bool] = True

    def parse(self, payload: Any) -> EmbedRequest:
        payload = json_object(payload, "input")
        texts, _single = parse_texts(payload.get("input"), "input")
        truncate = payload.get("truncate", True)
        if not isinstance(truncate, bool):
            raise ApiError("validation", "`truncate` must be a boolean", param="truncate")
        return EmbedRequest(
            texts=texts,
            truncate=truncate,
            dimensions=parse_dimensions(payload),
            started=time.perf_counter(),
        )

    def render(self, matrix: Matrix, request: EmbedRequest, model_id: str, tokens: int) -> Response:
        took = int((time.perf_counter() - (request.started or time.perf_counter())) * 1e9)
        return json_response(
            {
                "model": model_id,
                "embeddings": matrix,
                "total_duration": took,
                "load_duration": 0,
                "prompt_eval_count": tokens,
            }
        )

    def error(self, error: ApiError) -> Response:
        message = error.message
        if error.kind == "overloaded":
            message = "server busy, please try again.  maximum pending requests exceeded"
        return error_response(error, {"error": message}, _STATUS[error.kind])
