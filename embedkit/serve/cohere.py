"""The Cohere dialect (its v2 embed API).

`POST /v2/embed`, body `{"model", "texts": [...], "input_type", "embedding_types",
"truncate": "NONE" | "START" | "END", "output_dimension"}`. `input_type` `search_query` /
`search_document` picks the model's prompt named "query" / "document" when it defines one
(classification and clustering embed plainly); `embedding_types` may list `float`, `int8`,
`uint8`, `binary`, `ubinary`: the float rows are quantised with embedkit's rule (see
`embedkit._quantize`), the binary types packed eight dimensions a byte. At most 96 texts a
call, as Cohere. The answer is `{"id", "embeddings": {type: rows}, "texts", "meta":
{"billed_units": {"input_tokens"}}, "response_type": "embeddings_by_type"}`; errors are
`{"message": "..."}`.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from starlette.responses import Response

from .._config import Dtype, Matrix
from .._quantize import quantize
from ._common import (
    PLAIN_STATUS,
    ApiError,
    Dialect,
    EmbedRequest,
    error_response,
    json_object,
    json_response,
    parse_texts,
)

__all__ = ["CohereDialect"]

#: Cohere's limit on texts a call.
MAX_TEXTS = 96
_KINDS = {"search_query": "query", "search_document": "document"}
_OTHER_INPUT_TYPES = {"classification", "clustering"}
_TYPES: dict[str, Dtype] = {
    "float": "float32",
    "int8": "int8",
    "uint8": "uint8",
    "binary": "binary",
    "ubinary": "ubinary",
}
_TRUNCATE = {"NONE": (False, "right"), "END": (True, "right"), "START": (True, "left")}
_STATUS = PLAIN_STATUS


class CohereDialect(Dialect):
    """`/v2/embed` as Cohere speaks it."""

    name: ClassVar[str] = "cohere"
    counts_tokens: ClassVar[bool] = True

    def parse(self, payload: Any) -> EmbedRequest:
        payload = json_object(payload, "texts")
        texts, single = parse_texts(payload.get("texts"), "texts")
        if single:
            raise ApiError("validation", "invalid request: `texts` must be a list", param="texts")
        if len(texts) > MAX_TEXTS:
            raise ApiError(
                "validation",
                f"invalid request: total number of texts must be at most {MAX_TEXTS} - "
                f"received {len(texts)}",
                param="texts",
            )
        input_type = payload.get("input_type")
        if input_type is not None and input_type not in {*_KINDS, *_OTHER_INPUT_TYPES}:
            raise ApiError(
                "validation",
                "invalid request: input_type must be one of search_query, search_document, "
                "classification, clustering",
                param="input_type",
            )
        types = payload.get("embedding_types") or ["float"]
        if not isinstance(types, list) or any(t not in _TYPES for t in types):
            raise ApiError(
                "validation",
                "invalid request: embedding_types must list float, int8, uint8, binary, ubinary",
                param="embedding_types",
            )
        truncate = payload.get("truncate", "END")
        if truncate not in _TRUNCATE:
            raise ApiError("validation", "invalid request: truncate must be NONE, START or END")
        dimensions = payload.get("output_dimension")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise ApiError("validation", "invalid request: output_dimension must be positive")
        cut, direction = _TRUNCATE[truncate]
        return EmbedRequest(
            texts=texts,
            truncate=cut,
            truncation_direction=direction,
            dimensions=dimensions,
            kind=_KINDS.get(input_type or ""),
            embedding_types=list(dict.fromkeys(types)),
        )

    def render(self, matrix: Matrix, request: EmbedRequest, model_id: str, tokens: int) -> Response:
        embeddings = {
            name: matrix if name == "float" else quantize(matrix, _TYPES[name])
            for name in request.embedding_types
        }
        return json_response(
            {
                "id": str(uuid.uuid4()),
                "embeddings": embeddings,
                "texts": request.texts,
                "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
                "response_type": "embeddings_by_type",
            }
        )

    def error(self, error: ApiError) -> Response:
        return error_response(
            error, {"id": str(uuid.uuid4()), "message": error.message}, _STATUS[error.kind]
        )
