"""The Hugging Face Inference API (serverless router, legacy URL, Inference Endpoints)."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import quote

from ..._config import Kind, Matrix
from ..decode import from_json_rows, only_numbers
from ._base import WireProtocol, hf_style_body, load_json

__all__ = ["HF_ROUTER", "HFProtocol"]

HF_ROUTER = "https://router.huggingface.co/hf-inference/models/{model}/pipeline/feature-extraction"


class HFProtocol(WireProtocol):
    """POST `{"inputs": [...]}` to the model's URL; the answer is a JSON list of vectors.

    With no `url`, the serverless router URL for `model` is used. Any other URL (a dedicated
    Inference Endpoint, the legacy api-inference URL, a local server) is used exactly as given.
    """

    name: ClassVar[str] = "hf"
    supported: ClassVar[frozenset[str]] = frozenset(
        {
            "normalize",
            "prompt_name",
            "truncate",
            "truncation_direction",
            "dimensions",
            "kind",
            "pooling",
        }
    )
    hf_headers: ClassVar[bool] = True

    def _endpoint(self, model: str | None, url: str | None) -> str:
        if url:
            return url
        if not model:
            raise ValueError("api='hf' needs a model id (e.g. 'thenlper/gte-large') or a url")
        return HF_ROUTER.format(model=quote(model, safe="/"))

    def body(self, texts: list[str], kind: Kind | None = None) -> bytes:
        return hf_style_body(texts, self.options, kind)

    def decode(self, content: bytes, n: int) -> Matrix:
        return from_json_rows(
            load_json(content), n, self.options.pooling, numbers_only=only_numbers(content)
        )
