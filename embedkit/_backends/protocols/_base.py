"""What every wire format provides: a URL, a body, headers, and a decoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import orjson

from ..._config import Matrix, Pooling
from ..._errors import ResponseError
from ..._usage import reported_tokens

__all__ = ["BackendInfo", "Options", "WireProtocol"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Per-embedder request options. None means "not sent: the server's default"."""

    normalize: bool | None = None
    prompt_name: str | None = None
    truncate: bool | None = None
    truncation_direction: str | None = None
    dimensions: int | None = None
    pooling: Pooling | None = None


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What a backend learned about its server or model when it started."""

    model_id: str | None = None
    dimension: int | None = None
    max_batch_size: int | None = None
    max_inputs_in_flight: int | None = None
    #: the longest input the server takes, in tokens (TEI's `max_input_length`)
    max_input_tokens: int | None = None


class WireProtocol:
    """One server family's request and response format."""

    name: ClassVar[str] = ""
    #: option fields this protocol can carry; others raise at construction.
    supported: ClassVar[frozenset[str]] = frozenset()
    #: whether the server understands x-wait-for-model / x-use-cache.
    hf_headers: ClassVar[bool] = False

    def __init__(self, *, model: str | None, url: str | None, options: Options) -> None:
        for field in dataclasses.fields(options):
            if getattr(options, field.name) is not None and field.name not in self.supported:
                raise ValueError(
                    f"api={self.name!r} cannot carry {field.name}=; "
                    f"it supports: {', '.join(sorted(self.supported)) or 'no options'}"
                )
        self.model = model
        self.options = options
        self.endpoint = self._endpoint(model, url)

    def _endpoint(self, model: str | None, url: str | None) -> str:
        raise NotImplementedError

    def body(self, texts: list[str]) -> bytes:
        """The JSON request body for a batch."""
        raise NotImplementedError

    def decode(self, content: bytes, n: int) -> Matrix:
        """The (n, dim) float32 matrix from a successful answer's body."""
        raise NotImplementedError

    def decode_counted(
        self, content: bytes, n: int, headers: Mapping[str, str]
    ) -> tuple[Matrix, int | None]:
        """The matrix, and the tokens the server says it counted (None: not said).

        The default reads TEI's `x-compute-tokens` header; a protocol whose body carries
        a count (OpenAI's `usage.prompt_tokens`) overrides it, parsing the body once.
        """
        return self.decode(content, n), reported_tokens(headers)

    async def discover(self, client: httpx.AsyncClient, headers: dict[str, str]) -> BackendInfo:
        """Ask the server about its limits; the default knows nothing."""
        return BackendInfo(model_id=self.model, dimension=self.options.dimensions)

    def describe(self) -> str:
        """A short, secret-free description for reprs and logs."""
        return f"{self.name} {self.endpoint}"


def load_json(content: bytes) -> Any:
    """Parse a success body, as a `ResponseError` when it is not JSON."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        snippet = content[:120].decode("utf-8", "replace")
        raise ResponseError(f"the server's answer is not JSON: {snippet!r}") from exc


def hf_style_body(texts: list[str], options: Options) -> bytes:
    """`{"inputs": [...], <options at the top level>}`, as HF and TEI take it."""
    payload: dict[str, Any] = {"inputs": texts}
    if options.normalize is not None:
        payload["normalize"] = options.normalize
    if options.prompt_name is not None:
        payload["prompt_name"] = options.prompt_name
    if options.truncate is not None:
        payload["truncate"] = options.truncate
    if options.truncation_direction is not None:
        payload["truncation_direction"] = options.truncation_direction
    if options.dimensions is not None:
        payload["dimensions"] = options.dimensions
    return orjson.dumps(payload)
