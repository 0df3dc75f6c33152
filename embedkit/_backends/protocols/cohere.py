"""Cohere's v2 embed API: `POST /v2/embed` with `texts`, `input_type` and `embedding_types`.

Wire facts (docs/providers.md says where each came from): at most 96 texts a call;
`input_type` is one of `search_query`, `search_document`, `classification`, `clustering`
and is required by the v3+ models; `embedding_types` lists any of `float`, `int8`,
`uint8`, `binary`, `ubinary`, and the answer's `embeddings` object holds one list of
vectors per type asked, in the order of `texts` (no index); the binary types arrive
packed, dim/8 values a vector. Tokens billed: `meta.billed_units.input_tokens`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import orjson

from ..._config import Kind, Matrix
from ..._errors import BatchTooLargeError, ResponseError, StatusError
from ._base import Options, WireProtocol, api_url, load_json, numeric_rows

__all__ = ["COHERE_BASE", "CohereProtocol"]

COHERE_BASE = "https://api.cohere.com"
_INPUT_TYPE = {"query": "search_query", "document": "search_document"}
#: embedkit's dtype names to Cohere's `embedding_types` names.
_TYPES = {
    "float32": "float",
    "int8": "int8",
    "uint8": "uint8",
    "binary": "binary",
    "ubinary": "ubinary",
}
#: "invalid request: total number of texts must be at most 96 - received 100"
_LIMIT_RE = re.compile(r"number of texts must be at most (\d+)", re.IGNORECASE)


class CohereProtocol(WireProtocol):
    """POST `{"model", "texts", "input_type", "embedding_types"}` to `{url}/v2/embed`.

    `kind` becomes `input_type` (`search_query`/`search_document`); `dtype` is asked for
    through `embedding_types` (the server quantises); `truncate` becomes `truncate`
    ("END", or "START" with `truncation_direction="left"`; False: "NONE"); `dimensions`
    becomes `output_dimension` (embed v4).
    """

    name: ClassVar[str] = "cohere"
    tokens_path: ClassVar[tuple[str, ...]] = ("meta", "billed_units", "input_tokens")
    supported: ClassVar[frozenset[str]] = frozenset(
        {"kind", "truncate", "truncation_direction", "dimensions"}
    )
    server_dtypes: ClassVar[frozenset[str]] = frozenset(_TYPES)
    max_batch_size: ClassVar[int | None] = 96

    def __init__(self, *, model: str | None, url: str | None, options: Options) -> None:
        if not model:
            raise ValueError("api='cohere' needs a model name (e.g. 'embed-english-v3.0')")
        super().__init__(model=model, url=url, options=options)
        self._type = _TYPES[self.server_dtype or "float32"]
        head: dict[str, Any] = {"model": model, "embedding_types": [self._type]}
        if options.truncate is not None:
            if options.truncate:
                head["truncate"] = "START" if options.truncation_direction == "left" else "END"
            else:
                head["truncate"] = "NONE"
        if options.dimensions is not None:
            head["output_dimension"] = options.dimensions
        self._head = head

    def _endpoint(self, model: str | None, url: str | None) -> str:
        if url and url.rstrip("/").endswith("/v2"):
            return url.rstrip("/") + "/embed"
        return api_url(url, COHERE_BASE, "/v2/embed")

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        payload = dict(self._head)
        kind = kind or self.options.kind
        if kind is not None:
            payload["input_type"] = _INPUT_TYPE[kind]
        payload["texts"] = texts
        return orjson.dumps(payload)

    def decode(self, content: bytes, n: int) -> Matrix:
        parsed = load_json(content)
        embeddings = parsed.get("embeddings") if isinstance(parsed, dict) else None
        if isinstance(embeddings, dict):
            if self._type not in embeddings:
                raise ResponseError(
                    f"the answer has no {self._type!r} embeddings (it has: "
                    f"{', '.join(sorted(embeddings)) or 'none'})"
                )
            return numeric_rows(embeddings[self._type], n, f"embeddings.{self._type}")
        if isinstance(embeddings, list) and self._type == "float":
            return numeric_rows(embeddings, n, "embeddings")  # v1's embeddings_floats shape
        raise ResponseError("the answer has no 'embeddings' object")

    def refine_error(self, error: StatusError, body: bytes) -> StatusError:
        """Cohere's "total number of texts must be at most 96" is a batch-size refusal."""
        match = _LIMIT_RE.search(error.message)
        if match and error.status_code in (400, 422):
            return BatchTooLargeError(
                error.status_code,
                error.message,
                request_id=error.request_id,
                max_batch_size=int(match.group(1)),
            )
        return error
