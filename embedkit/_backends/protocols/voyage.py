"""Voyage AI: `POST /v1/embeddings` with `input`, `input_type` and `output_dtype`.

Wire facts (docs/providers.md says where each came from): `input_type` is null, `query` or
`document` (Voyage prepends its own retrieval prompt); `output_dtype` is `float`, `int8`,
`uint8`, `binary` or `ubinary`, the binary ones bit-packed (dim/8 integers a vector);
`output_dimension` picks a Matryoshka size; `truncation` defaults to true. The answer is
OpenAI's shape (`data[i].embedding`, `data[i].index`); `usage.total_tokens` counts tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from ..._config import Kind, Matrix
from ..._errors import ResponseError
from ..decode import place_by_index
from ._base import Options, WireProtocol, api_url, load_json, numeric_rows

__all__ = ["VOYAGE_BASE", "VoyageProtocol"]

VOYAGE_BASE = "https://api.voyageai.com/v1"
_DTYPES = {
    "float32": "float",
    "int8": "int8",
    "uint8": "uint8",
    "binary": "binary",
    "ubinary": "ubinary",
}


class VoyageProtocol(WireProtocol):
    """POST `{"model", "input", "input_type", "output_dtype"}` to `{url}/embeddings`.

    `kind` is `input_type` as it is; `dtype` is `output_dtype` (the server quantises);
    `truncate` is `truncation`; `dimensions` is `output_dimension`. Rows are placed by
    their `index`.
    """

    name: ClassVar[str] = "voyage"
    tokens_path: ClassVar[tuple[str, ...]] = ("usage", "total_tokens")
    supported: ClassVar[frozenset[str]] = frozenset({"kind", "truncate", "dimensions"})
    server_dtypes: ClassVar[frozenset[str]] = frozenset(_DTYPES)
    max_batch_size: ClassVar[int | None] = 128

    def __init__(self, *, model: str | None, url: str | None, options: Options) -> None:
        if not model:
            raise ValueError("api='voyage' needs a model name (e.g. 'voyage-3.5')")
        super().__init__(model=model, url=url, options=options)
        head: dict[str, Any] = {"model": model}
        if options.truncate is not None:
            head["truncation"] = options.truncate
        if options.dimensions is not None:
            head["output_dimension"] = options.dimensions
        if self.server_dtype is not None and self.server_dtype != "float32":
            head["output_dtype"] = _DTYPES[self.server_dtype]
        self._head = head

    def _endpoint(self, model: str | None, url: str | None) -> str:
        return api_url(url, VOYAGE_BASE, "/embeddings")

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        payload = dict(self._head)
        kind = kind or self.options.kind
        if kind is not None:
            payload["input_type"] = kind
        payload["input"] = texts
        return orjson.dumps(payload)

    def decode(self, content: bytes, n: int) -> Matrix:
        parsed = load_json(content)
        data = parsed.get("data") if isinstance(parsed, dict) else None
        if not isinstance(data, list):
            raise ResponseError("the answer has no 'data' list of embeddings")
        try:
            vectors = [item["embedding"] for item in place_by_index(data, n)]
        except (KeyError, TypeError) as exc:
            raise ResponseError("an item in 'data' has no 'embedding'") from exc
        return numeric_rows(vectors, n, "data[].embedding")
