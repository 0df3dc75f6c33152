"""`EmbedkitEmbedding`: embedkit as a LlamaIndex embedding model (extra: `embedkit[llamaindex]`).

    from llama_index.core import Settings
    from embedkit.llama_index import EmbedkitEmbedding

    Settings.embed_model = EmbedkitEmbedding(model="thenlper/gte-large")  # any AsyncEmbedder option

Sync and async, query and text, one text or a batch: every method goes through one
`AsyncEmbedder` that the object owns, running on an event loop of its own, so it works from
scripts, notebooks and any event loop, and concurrent callers share batched requests.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from pydantic import ConfigDict

from ._config import Limits
from ._frameworks import EmbedkitModel

__all__ = ["EmbedkitEmbedding"]


class EmbedkitEmbedding(EmbedkitModel, BaseEmbedding):
    """A LlamaIndex `BaseEmbedding` backed by embedkit's batching client.

    Takes every `embedkit.AsyncEmbedder` option as a keyword (`model`, `url`, `api`, `token`,
    `limits`, `connection`, …) plus LlamaIndex's own (`embed_batch_size`,
    `callback_manager`, `num_workers`, `embeddings_cache`); unknown keywords are refused.

    Batching: LlamaIndex hands the model `embed_batch_size` texts per step; embedkit cuts each
    step into requests of at most `limits.max_batch_size` texts, up to `limits.max_concurrency` in
    flight,
    shared with every other caller. So `embed_batch_size` defaults to
    `max_batch_size × max_concurrency` (256 with the defaults): one step keeps every request
    slot busy even on LlamaIndex's sequential sync path. `model_name` defaults to `model`.

    `embed_matrix(texts)` gives the float32 numpy matrix. Close it with `close()` /
    `await aclose()`; one that is never closed is closed when it is garbage-collected or at
    interpreter exit.
    """

    model_config = ConfigDict(protected_namespaces=())

    def __init__(self, **data: Any) -> None:
        if "embed_batch_size" not in data:
            limits = data.get("limits")
            if not isinstance(limits, Limits):
                limits = Limits()
            batch = data.get("max_batch_size") or limits.batch_size_for(data.get("api", "hf"))
            slots = data.get("max_concurrency", limits.max_concurrency)
            if isinstance(batch, int) and isinstance(slots, int) and batch > 0 and slots > 0:
                data["embed_batch_size"] = min(batch * slots, 2048)
        if "model_name" not in data and isinstance(data.get("model"), str):
            data["model_name"] = data["model"]
        super().__init__(**data)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serializes this class under."""
        return "EmbedkitEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        row: Embedding = self._shared.embed(query, self.kind_for("query")).tolist()
        return row

    async def _aget_query_embedding(self, query: str) -> Embedding:
        row: Embedding = (await self._shared.aembed(query, self.kind_for("query"))).tolist()
        return row

    def _get_text_embedding(self, text: str) -> Embedding:
        row: Embedding = self._shared.embed(text, self.kind_for("document")).tolist()
        return row

    async def _aget_text_embedding(self, text: str) -> Embedding:
        row: Embedding = (await self._shared.aembed(text, self.kind_for("document"))).tolist()
        return row

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        rows: list[Embedding] = self._shared.embed_many(
            list(texts), self.kind_for("document")
        ).tolist()
        return rows

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if not texts:
            return []
        matrix = await self._shared.aembed_many(list(texts), self.kind_for("document"))
        rows: list[Embedding] = matrix.tolist()
        return rows
