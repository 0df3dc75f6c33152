"""text-embeddings-inference: `POST /embed`, limits read from `GET /info`."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import httpx
import orjson

from ..._config import Kind, Matrix
from ..decode import from_json_rows, only_numbers
from ._base import BackendInfo, WireProtocol, hf_style_body, load_json

__all__ = ["TEIProtocol"]

logger = logging.getLogger("embedkit")


class TEIProtocol(WireProtocol):
    """A TEI server root: batches go to `{url}/embed`, limits come from `{url}/info`."""

    name: ClassVar[str] = "tei"
    supported: ClassVar[frozenset[str]] = frozenset(
        {"normalize", "prompt_name", "truncate", "truncation_direction", "dimensions", "kind"}
    )
    hf_headers: ClassVar[bool] = True

    def _endpoint(self, model: str | None, url: str | None) -> str:
        if not url:
            raise ValueError("api='tei' needs url= (the server root, e.g. 'http://127.0.0.1:8080')")
        self.root = url.rstrip("/")
        return self.root + "/embed"

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        return hf_style_body(texts, self.options, kind)

    def decode(self, content: bytes, n: int) -> Matrix:
        return from_json_rows(load_json(content), n, numbers_only=only_numbers(content))

    async def discover(self, client: httpx.AsyncClient, headers: dict[str, str]) -> BackendInfo:
        """Read `/info`: `max_client_batch_size`, `max_concurrent_requests` and
        `max_input_length` (the longest input, in tokens) are obeyed."""
        try:
            response = await client.get(self.root + "/info", headers=headers)
        except httpx.HTTPError as exc:
            logger.warning(
                "could not read %s/info (%s); using configured limits",
                self.root,
                type(exc).__name__,
            )
            return BackendInfo(model_id=self.model, dimension=self.options.dimensions)
        info: Any = None
        if response.status_code == 200:
            try:
                info = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                info = None
        if not isinstance(info, dict):
            logger.warning(
                "%s/info answered %s; using configured limits", self.root, response.status_code
            )
            return BackendInfo(model_id=self.model, dimension=self.options.dimensions)

        def positive(key: str) -> int | None:
            value = info.get(key)
            return value if isinstance(value, int) and value > 0 else None

        return BackendInfo(
            model_id=info.get("model_id") if isinstance(info.get("model_id"), str) else self.model,
            dimension=self.options.dimensions,
            max_batch_size=positive("max_client_batch_size"),
            max_inputs_in_flight=positive("max_concurrent_requests"),
            max_input_tokens=positive("max_input_length"),
        )
