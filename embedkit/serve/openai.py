"""The OpenAI-compatible dialect.

`POST /v1/embeddings` (and `/embeddings`, as Infinity serves it), body `{"model", "input":
str | [str], "encoding_format": "float" | "base64", "dimensions", "user"}`. Vectors come back
unit-length, in `data[i].embedding` as floats or base64 little-endian float32, with `usage`.
Errors are `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar

from starlette.responses import Response

from .._config import Matrix
from ._common import (
    ApiError,
    Dialect,
    EmbedRequest,
    error_response,
    json_object,
    json_response,
    parse_dimensions,
    parse_texts,
)

__all__ = ["OpenAIDialect"]

_ERRORS = {
    "validation": (400, "invalid_request_error", None),
    "empty": (400, "invalid_request_error", None),
    "bad_json": (400, "invalid_request_error", None),
    "too_large": (413, "invalid_request_error", "request_too_large"),
    "unauthorized": (401, "invalid_request_error", "invalid_api_key"),
    "loading": (503, "server_error", "model_loading"),
    "overloaded": (429, "rate_limit_error", "rate_limit_exceeded"),
    "backend": (500, "server_error", None),
}


class OpenAIDialect(Dialect):
    """`/v1/embeddings` as OpenAI-compatible servers speak it."""

    name: ClassVar[str] = "openai"
    counts_tokens: ClassVar[bool] = True

    def parse(self, payload: Any) -> EmbedRequest:
        payload = json_object(payload, "input")
        value = payload.get("input")
        if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
            raise ApiError(
                "validation", "token arrays are not supported: send `input` as text", param="input"
            )
        texts, _single = parse_texts(value, "input")
        encoding = payload.get("encoding_format")
        if encoding is None:
            encoding = "float"
        if encoding not in ("float", "base64"):
            raise ApiError(
                "validation",
                "`encoding_format` must be 'float' or 'base64'",
                param="encoding_format",
            )
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            raise ApiError("validation", "`model` must be a string", param="model")
        return EmbedRequest(
            texts=texts, dimensions=parse_dimensions(payload), encoding_format=encoding
        )

    def render(self, matrix: Matrix, request: EmbedRequest, model_id: str, tokens: int) -> Response:
        if request.encoding_format == "base64":
            little = matrix.astype("<f4", copy=False)
            rows: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
        else:
            rows = list(matrix)
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def error(self, error: ApiError) -> Response:
        status, error_type, code = _ERRORS[error.kind]
        body = {"message": error.message, "type": error_type, "param": error.param, "code": code}
        return error_response(error, {"error": body}, status)
