"""The Hugging Face Inference API dialect.

`POST /models/{model}` and `POST /hf-inference/models/{model}/pipeline/feature-extraction`,
body `{"inputs": str | [str], "normalize", "prompt_name", "truncate", "truncation_direction",
"dimensions"}` (the older nesting under `"parameters"`, and `"options": {"wait_for_model"}`,
are read too). A single string gets one vector `[D]`, a list gets `[[D], ...]`, as
sentence-transformers models answer. Errors are `{"error": "..."}`.
"""

from __future__ import annotations

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
    parse_options,
    parse_texts,
)

__all__ = ["HFDialect"]

_STATUS = PLAIN_STATUS


class HFDialect(Dialect):
    """Feature extraction as the HF Inference API speaks it."""

    name: ClassVar[str] = "hf"

    def parse(self, payload: Any) -> EmbedRequest:
        payload = json_object(payload, "inputs")
        texts, single = parse_texts(payload.get("inputs"), "inputs")
        merged = dict(payload)
        parameters = payload.get("parameters")
        if isinstance(parameters, dict):
            merged = {**parameters, **{k: v for k, v in payload.items() if v is not None}}
        request = EmbedRequest(texts=texts, single=single)
        parse_options(merged, request)
        options = payload.get("options")
        if isinstance(options, dict) and options.get("wait_for_model") is True:
            request.wait_for_model = True
        return request

    def render(self, matrix: Matrix, request: EmbedRequest, model_id: str, tokens: int) -> Response:
        return json_response(matrix[0] if request.single else matrix)

    def error(self, error: ApiError) -> Response:
        return error_response(error, {"error": error.message}, _STATUS[error.kind])
