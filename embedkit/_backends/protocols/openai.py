"""OpenAI-compatible `/embeddings` (OpenAI, TEI, vLLM, Ollama, Infinity, LiteLLM...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import orjson

from ..._config import Kind, Matrix
from ..._errors import ResponseError
from ..._usage import reported_tokens as header_tokens
from ..decode import checked, from_base64_rows, place_by_index
from ._base import Options, WireProtocol, load_json

__all__ = ["OPENAI_BASE", "OpenAIProtocol"]

OPENAI_BASE = "https://api.openai.com/v1"


class OpenAIProtocol(WireProtocol):
    """POST `{"model", "input", "encoding_format"}` to `{url}/embeddings`; rows placed by index.

    base64 is asked for by default: it is ~2.3x smaller than JSON floats and decodes
    without building Python lists.
    """

    name: ClassVar[str] = "openai"
    tokens_path: ClassVar[tuple[str, ...]] = ("usage", "prompt_tokens")
    supported: ClassVar[frozenset[str]] = frozenset({"dimensions"})

    def __init__(
        self,
        *,
        model: str | None,
        url: str | None,
        options: Options,
        encoding_format: Literal["base64", "float"] = "base64",
    ) -> None:
        if encoding_format not in ("base64", "float"):
            raise ValueError("encoding_format must be 'base64' or 'float'")
        if not model:
            raise ValueError("api='openai' needs a model name (the server's 'model' field)")
        super().__init__(model=model, url=url, options=options)
        self.encoding_format = encoding_format
        self._head: dict[str, Any] = {"model": model, "encoding_format": encoding_format}
        if options.dimensions is not None:
            self._head["dimensions"] = options.dimensions

    def _endpoint(self, model: str | None, url: str | None) -> str:
        base = (url or OPENAI_BASE).rstrip("/")
        return base if base.endswith("/embeddings") else base + "/embeddings"

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        return orjson.dumps({**self._head, "input": texts})

    def decode(self, content: bytes, n: int) -> Matrix:
        return self._decode_parsed(load_json(content), n)

    def decode_counted(
        self, content: bytes, n: int, headers: Mapping[str, str]
    ) -> tuple[Matrix, int | None]:
        """The matrix, and `usage.prompt_tokens` (else `x-compute-tokens`) when present:
        the body is parsed once for both."""
        parsed = load_json(content)
        tokens = self.tokens_in(parsed)
        return self._decode_parsed(parsed, n), tokens if tokens is not None else header_tokens(
            headers
        )

    def _decode_parsed(self, parsed: Any, n: int) -> Matrix:
        data = parsed.get("data") if isinstance(parsed, dict) else None
        if not isinstance(data, list):
            raise ResponseError("the answer has no 'data' list of embeddings")
        items = place_by_index(data, n)
        try:
            vectors = [item["embedding"] for item in items]
        except (KeyError, TypeError) as exc:
            raise ResponseError("an item in 'data' has no 'embedding'") from exc
        if n and isinstance(vectors[0], str):
            return from_base64_rows(vectors, n)
        try:
            matrix = np.array(vectors)  # no dtype: strings must not pass as numbers
        except (ValueError, TypeError) as exc:
            raise ResponseError("embeddings differ in length or hold non-numbers") from exc
        return checked(matrix, n)
