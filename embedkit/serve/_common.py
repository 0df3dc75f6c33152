"""What every protocol route shares: the parsed request, the error kinds, option parsing.

A route (`hf.py`, `tei.py`, `openai.py`, `ollama.py`, `cohere.py`) turns its JSON body into
an `EmbedRequest`, and an `ApiError` into the error body and status its protocol uses;
everything in between (auth, body limits, readiness, batching) is the same for all of them
(`_app.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import orjson
from starlette.responses import Response

from .._config import Matrix

__all__ = [
    "PLAIN_STATUS",
    "ApiError",
    "Dialect",
    "EmbedRequest",
    "ErrorKind",
    "json_response",
    "parse_options",
]

ErrorKind = Literal[
    "validation",  # a field is wrong, a text too long, a batch too big
    "empty",  # no inputs, or an empty string
    "bad_json",  # the body is not JSON
    "too_large",  # the body is over the size limit
    "unauthorized",  # missing or wrong API key
    "loading",  # the model is still loading
    "overloaded",  # too many texts in flight
    "backend",  # the model failed
]


#: The status of each error kind for the dialects that answer `{"error": ...}`-style
#: bodies with plain HTTP semantics (HF, Cohere; Ollama differs for "overloaded").
PLAIN_STATUS: dict[str, int] = {
    "validation": 400,
    "empty": 400,
    "bad_json": 400,
    "too_large": 413,
    "unauthorized": 401,
    "loading": 503,
    "overloaded": 429,
    "backend": 500,
}


class ApiError(Exception):
    """A refusal, rendered by each protocol in its own words and status code.

    Attributes:
        kind: what went wrong (one of `ErrorKind`).
        message: the text for the body.
        param: the request field at fault, when there is one (OpenAI's `param`).
        estimated_time: seconds until the model is ready (kind "loading").
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        param: str | None = None,
        estimated_time: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.param = param
        self.estimated_time = estimated_time


@dataclasses.dataclass
class EmbedRequest:
    """One request, whatever protocol it came in: texts and options."""

    texts: list[str]
    single: bool = False
    normalize: bool = True
    prompt_name: str | None = None
    truncate: bool | None = None
    truncation_direction: str = "right"
    dimensions: int | None = None
    encoding_format: str = "float"
    wait_for_model: bool = False
    #: "query"/"document": the model's prompt of that name when it has one (cohere).
    kind: str | None = None
    #: the element types to answer with (cohere's `embedding_types`).
    embedding_types: list[str] = dataclasses.field(default_factory=lambda: ["float"])
    #: when the request arrived (`time.perf_counter()`), for ollama's `total_duration`.
    started: float | None = None


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response encoded by orjson (numpy arrays included)."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def _typed(payload: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError("validation", f"`{key}` must be {what}", param=key)
    return value


def parse_options(payload: Mapping[str, Any], request: EmbedRequest) -> None:
    """Read the options HF and TEI take at the top level into `request`."""
    normalize = _typed(payload, "normalize", bool, "a boolean")
    if normalize is not None:
        request.normalize = normalize
    request.prompt_name = _typed(payload, "prompt_name", str, "a string")
    request.truncate = _typed(payload, "truncate", bool, "a boolean")
    direction = _typed(payload, "truncation_direction", str, "'left' or 'right'")
    if direction is not None:
        direction = direction.lower()
        if direction not in ("left", "right"):
            raise ApiError(
                "validation",
                "`truncation_direction` must be 'left' or 'right'",
                param="truncation_direction",
            )
        request.truncation_direction = direction
    request.dimensions = parse_dimensions(payload)


def parse_dimensions(payload: Mapping[str, Any]) -> int | None:
    """`dimensions`: a positive integer or absent."""
    dimensions = _typed(payload, "dimensions", int, "a positive integer")
    if dimensions is not None and dimensions < 1:
        raise ApiError("validation", "`dimensions` must be a positive integer", param="dimensions")
    return dimensions  # type: ignore[no-any-return]


def parse_texts(value: Any, field: str) -> tuple[list[str], bool]:
    """A string or a list of strings; `(texts, was_a_single_string)`."""
    if isinstance(value, str):
        texts, single = [value], True
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        texts, single = value, False
    elif value is None:
        raise ApiError(
            "validation", f"`{field}` is required: a string or a list of strings", param=field
        )
    else:
        raise ApiError(
            "validation", f"`{field}` must be a string or a list of strings", param=field
        )
    if not texts:
        raise ApiError("empty", f"`{field}` cannot be empty", param=field)
    for i, text in enumerate(texts):
        if not text:
            raise ApiError(
                "empty", f"`{field}[{i}]` is an empty string; it cannot be embedded", param=field
            )
    return texts, single


class Dialect:
    """One protocol's request parsing, success rendering and error rendering."""

    name: ClassVar[str] = ""
    #: whether `render` needs the request's token count (OpenAI's `usage`).
    counts_tokens: ClassVar[bool] = False

    def parse(self, payload: Any) -> EmbedRequest:
        """The request from the parsed JSON body, or an `ApiError`."""
        raise NotImplementedError

    def render(self, matrix: Matrix, request: EmbedRequest, model_id: str, tokens: int) -> Response:
        """The success response for the request's (n, dim) float32 vectors."""
        raise NotImplementedError

    def error(self, error: ApiError) -> Response:
        """The protocol's error response for `error`."""
        raise NotImplementedError


def json_object(payload: Any, field: str) -> dict[str, Any]:
    """The parsed body, which every dialect wants as a JSON object holding `field`."""
    if not isinstance(payload, dict):
        raise ApiError("validation", f"the body must be a JSON object with `{field}`")
    return payload


def error_response(error: ApiError, body: dict[str, Any], status: int) -> Response:
    """A dialect's JSON error `body`; while loading, with `estimated_time` and `Retry-After`."""
    if error.kind == "loading":
        body["estimated_time"] = error.estimated_time
    return json_response(body, status, loading_headers(error))


def loading_headers(error: ApiError) -> dict[str, str]:
    """`Retry-After` for a loading answer."""
    if error.kind == "loading" and error.estimated_time is not None:
        return {"retry-after": str(max(1, int(np.ceil(error.estimated_time))))}
    return {}
