"""What every wire format provides: a URL, a body, headers, and a decoder."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import numpy as np
import orjson

from ..._config import Dtype, Kind, Matrix, Pooling
from ..._errors import ResponseError, StatusError
from ..._quantize import carried
from ..._usage import reported_tokens as header_tokens
from ..decode import checked

__all__ = ["BackendInfo", "Options", "WireProtocol", "api_url", "load_json", "numeric_rows"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Per-embedder request options. None means "not sent: the server's default"."""

    normalize: bool | None = None
    prompt_name: str | None = None
    truncate: bool | None = None
    truncation_direction: str | None = None
    dimensions: int | None = None
    pooling: Pooling | None = None
    #: the default intent of a text ("query"/"document"); a call may name its own.
    kind: Kind | None = None
    #: the element type asked for; any protocol can return it (quantised here when the
    #: server cannot), so it is never refused like the fields above.
    dtype: Dtype | None = None


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
    #: the dtypes the server itself can return; others are quantised by embedkit.
    server_dtypes: ClassVar[frozenset[str]] = frozenset()
    #: texts a request at most, by the provider's documentation (None: no stated limit).
    max_batch_size: ClassVar[int | None] = None

    def __init__(self, *, model: str | None, url: str | None, options: Options) -> None:
        for field in dataclasses.fields(options):
            if field.name == "dtype":
                continue
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

    @property
    def carries_kind(self) -> bool:
        """Whether a call may name its own `kind=` (the protocol has a field for it)."""
        return "kind" in self.supported

    @property
    def server_dtype(self) -> Dtype | None:
        """The dtype the server is asked for (None: floats, quantised here if need be)."""
        dtype = self.options.dtype
        return dtype if dtype is not None and dtype in self.server_dtypes else None

    def auth_headers(self, token: str) -> dict[str, str]:
        """The headers that carry a token: `Authorization: Bearer` unless the API differs."""
        return {"authorization": f"Bearer {token}"}

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        """The JSON request body for a batch (`kind`: this call's, else the default)."""
        raise NotImplementedError

    def decode(self, content: bytes, n: int) -> Matrix:
        """The (n, dim) float32 matrix from a successful answer's body."""
        raise NotImplementedError

    #: where a success body reports the tokens the request used (keys, outermost first);
    #: empty: the API does not say (then only a header may: TEI's `x-compute-tokens`).
    tokens_path: ClassVar[tuple[str, ...]] = ()

    def reported_tokens(self, content: bytes) -> int | None:
        """The tokens a success body says the request used, when the API reports them."""
        if not self.tokens_path:
            return None
        try:
            parsed: Any = orjson.loads(content)
        except orjson.JSONDecodeError:
            return None
        return self.tokens_in(parsed)

    def tokens_in(self, parsed: Any) -> int | None:
        """The count at `tokens_path` in an already-parsed body (None: absent or not a count)."""
        value = parsed
        for key in self.tokens_path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return None

    def decode_counted(
        self, content: bytes, n: int, headers: Mapping[str, str]
    ) -> tuple[Matrix, int | None]:
        """The matrix, and the tokens the server says it counted (None: not said).

        The body's count at `tokens_path` when the API reports one, else TEI's
        `x-compute-tokens` header. This default parses a counted body a second time; a
        protocol that parses its body itself (OpenAI's) overrides it to parse once.
        """
        matrix = self.decode(content, n)
        tokens = self.reported_tokens(content)
        return matrix, tokens if tokens is not None else header_tokens(headers)

    def refine_error(self, error: StatusError, body: bytes) -> StatusError:
        """The error for an error answer, with what this API's body says beyond the generic
        mapping (a batch limit in its own words, a retry delay in its own field)."""
        return error

    def finish(self, matrix: Matrix) -> Matrix:
        """The decoded rows in the requested dtype's carrier (quantised here if the server
        could not be asked for it)."""
        dtype = self.options.dtype
        if dtype is None or dtype == "float32" or self.server_dtype is not None:
            return matrix
        return carried(matrix, dtype)

    async def discover(self, client: httpx.AsyncClient, headers: dict[str, str]) -> BackendInfo:
        """Ask the server about its limits; the default knows the documented batch limit."""
        return BackendInfo(
            model_id=self.model,
            dimension=self.options.dimensions,
            max_batch_size=self.max_batch_size,
        )

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


def numeric_rows(rows: Any, n: int, what: str) -> Matrix:
    """A list of n equal-length number lists (floats or the integers of a quantised dtype)
    as checked float32 rows; anything else is a `ResponseError` naming `what`."""
    if not isinstance(rows, list):
        raise ResponseError(f"the answer has no {what} list")
    if len(rows) != n:
        raise ResponseError(f"sent {n} texts but the server returned {len(rows)} embeddings")
    try:
        matrix = np.array(rows)  # no dtype: strings must not pass as numbers
    except (ValueError, TypeError) as exc:
        raise ResponseError("embeddings differ in length or hold non-numbers") from exc
    if n == 0:
        return np.empty((0, 0), dtype=np.float32)
    return checked(matrix, n)


def api_url(url: str | None, default: str, path: str) -> str:
    """`url` (or `default`) as the full endpoint: `path` is appended unless already there."""
    base = (url or default).rstrip("/")
    return base if base.endswith(path) else base + path


def hf_style_body(texts: list[str], options: Options, kind: Kind | None = None) -> bytes:
    """`{"inputs": [...], <options at the top level>}`, as HF and TEI take it.

    A `kind` is sent as `prompt_name` (sentence-transformers models name their prompts
    "query" and "document"); it never meets a `prompt_name=` (refused together).
    """
    payload: dict[str, Any] = {"inputs": texts}
    if options.normalize is not None:
        payload["normalize"] = options.normalize
    prompt_name = options.prompt_name or kind or options.kind
    if prompt_name is not None:
        payload["prompt_name"] = prompt_name
    if options.truncate is not None:
        payload["truncate"] = options.truncate
    if options.truncation_direction is not None:
        payload["truncation_direction"] = options.truncation_direction
    if options.dimensions is not None:
        payload["dimensions"] = options.dimensions
    return orjson.dumps(payload)
