"""The text-embeddings-inference (TEI) dialect.

`POST /embed` takes the same body as HF and always answers a 2-D `[[D], ...]`. Errors are
`{"error": "...", "error_type": "..."}` with TEI's status codes: Validation 422, Empty 400,
Overloaded 429, Backend 424, Unhealthy 503; a body over the size limit is a plain-text 413, bad
JSON a plain-text 400, and a wrong key a 401 with an empty body, as TEI answers them.
"""

from __future__ import annotations

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
    parse_options,
    parse_texts,
)

__all__ = ["TEIDialect"]

_TYPES = {
    "validation": (422, "Validation"),
    "empty": (400, "Empty"),
    "overloaded": (429, "Overloaded"),
    "backend": (424, "Backend"),
    "loading": (503, "Unhealthy"),
}


class TEIDialect(Dialect):
    """`/embed` as TEI speaks it."""

    name: ClassVar[str] = "tei"

    def parse(self, payload: Any) -> EmbedRequest:
        payload = json_object(payload, "inputs")
        texts, _single = parse_texts(payload.get("inputs"), "inputs")
        request = EmbedRequest(texts=texts)
        parse_options(payload, request)
        return request

    def render(self, matrix: Matrix, request: EmbedRequest, model_id: str, tokens: int) -> Response:
        return json_response(matrix)

    def error(self, error: ApiError) -> Response:
        if error.kind == "unauthorized":
            return Response(status_code=401)
        if error.kind == "too_large":
            return Response(error.message, status_code=413, media_type="text/plain")
        if error.kind == "bad_json":
            return Response(error.message, status_code=400, media_type="text/plain")
        status, error_type = _TYPES[error.kind]
        return error_response(error, {"error": error.message, "error_type": error_type}, status)
