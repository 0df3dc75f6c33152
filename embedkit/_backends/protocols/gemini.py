"""The Gemini API: `POST /v1beta/models/{model}:batchEmbedContents`, key in `x-goog-api-key`.

Wire facts (docs/providers.md says where each came from): the body is
`{"requests": [{"model": "models/{model}", "content": {"parts": [{"text": ...}]},
"taskType": ..., "outputDimensionality": ...}, ...]}`, one request per text, each naming
the same model as the URL; the answer is `{"embeddings": [{"values": [...]}, ...]}` in the
order of the requests; `taskType` includes `RETRIEVAL_QUERY` and `RETRIEVAL_DOCUMENT`; a
call takes at most 100 requests ("at most 100 requests can be in one batch"). Errors are
Google's `{"error": {"code", "message", "status"}}`, a 429 `RESOURCE_EXHAUSTED` may carry
a `google.rpc.RetryInfo` detail with `retryDelay` ("37s"). Vertex AI's `:predict` format
(`instances`, `predictions[].embeddings.values`) is a different API and not spoken here.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from ..._config import Kind, Matrix
from ..._errors import BatchTooLargeError, RateLimitError, ResponseError, StatusError
from ._base import Options, WireProtocol, load_json, numeric_rows

__all__ = ["GEMINI_BASE", "GeminiProtocol"]

GEMINI_BASE = "https://generativelanguage.googleapis.com/v1beta"
_TASK = {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT"}
_LIMIT_RE = re.compile(r"at most (\d+) requests can be in one batch", re.IGNORECASE)
_DELAY_RE = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _retry_delay(body: bytes) -> float | None:
    """`retryDelay` ("37s") from a Google error's RetryInfo detail, if there is one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        match = _DELAY_RE.match(delay) if isinstance(delay, str) else None
        if match:
            return float(match.group(1))
    return None


class GeminiProtocol(WireProtocol):
    """POST one `batchEmbedContents` call a batch; the key goes in `x-goog-api-key`.

    `url` is the API base (default `GEMINI_BASE`) or a full `...:batchEmbedContents` URL.
    `kind` becomes `taskType` (`RETRIEVAL_QUERY`/`RETRIEVAL_DOCUMENT`); `dimensions`
    becomes `outputDimensionality`. Floats only: other dtypes are quantised by embedkit.
    """

    name: ClassVar[str] = "gemini"
    supported: ClassVar[frozenset[str]] = frozenset({"kind", "dimensions"})
    max_batch_size: ClassVar[int | None] = 100

    def __init__(self, *, model: str | None, url: str | None, options: Options) -> None:
        if not model:
            raise ValueError("api='gemini' needs a model name (e.g. 'gemini-embedding-001')")
        self._resource = model if model.startswith("models/") else f"models/{model}"
        super().__init__(model=model, url=url, options=options)
        self._extra: dict[str, Any] = {}
        if options.dimensions is not None:
            self._extra["outputDimensionality"] = options.dimensions

    def _endpoint(self, model: str | None, url: str | None) -> str:
        if url and ":batchEmbedContents" in url:
            return url
        base = (url or GEMINI_BASE).rstrip("/")
        return f"{base}/{quote(self._resource, safe='/')}:batchEmbedContents"

    def auth_headers(self, token: str) -> dict[str, str]:
        """Google's API key header (a bearer header would be read as an OAuth token)."""
        return {"x-goog-api-key": token}

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        extra = dict(self._extra)
        kind = kind or self.options.kind
        if kind is not None:
            extra["taskType"] = _TASK[kind]
        model = self._resource
        requests = [{"model": model, "content": {"parts": [{"text": t}]}, **extra} for t in texts]
        return orjson.dumps({"requests": requests})

    def decode(self, content: bytes, n: int) -> Matrix:
        parsed = load_json(content)
        items = parsed.get("embeddings") if isinstance(parsed, dict) else None
        if not isinstance(items, list):
            raise ResponseError("the answer has no 'embeddings' list")
        try:
            vectors = [item["values"] for item in items]
        except (KeyError, TypeError) as exc:
            raise ResponseError("an item in 'embeddings' has no 'values'") from exc
        return numeric_rows(vectors, n, "embeddings[].values")

    def refine_error(self, error: StatusError, body: bytes) -> StatusError:
        """A batch-size refusal becomes `BatchTooLargeError`; a 429's `retryDelay` is kept."""
        match = _LIMIT_RE.search(error.message)
        if match and error.status_code == 400:
            return BatchTooLargeError(
                400, error.message, request_id=error.request_id, max_batch_size=int(match[1])
            )
        if isinstance(error, RateLimitError) and error.retry_after is None:
            error.retry_after = _retry_delay(body)
        return error
