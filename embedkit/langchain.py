"""`EmbedkitEmbeddings`: embedkit as a LangChain embedding model (extra: `embedkit[langchain]`).

    from embedkit.langchain import EmbedkitEmbeddings

    emb = EmbedkitEmbeddings(url="http://tei:8080", api="tei")  # any AsyncEmbedder option
    store = InMemoryVectorStore.from_texts(docs, emb)

Every call — `embed_documents`, `embed_query` and the native `aembed_documents` /
`aembed_query` — goes through one `AsyncEmbedder` that the object owns, so queries from
concurrent chains share batched requests, with embedkit's retries and limits. The sync methods
work anywhere (a script, a Jupyter cell, a FastAPI sync route) and the async ones from any
event loop, including a new one per `asyncio.run`: the embedder runs on a loop of its own.

langchain-core 1.x needs Python 3.11 or newer.
"""

from __future__ import annotations

from langchain_core.embeddings import Embeddings

from ._frameworks import EmbedkitModel

__all__ = ["EmbedkitEmbeddings"]


class EmbedkitEmbeddings(EmbedkitModel, Embeddings):
    """A LangChain `Embeddings` backed by embedkit's batching client.

    Takes every `embedkit.AsyncEmbedder` option as a keyword (`model`, `url`, `api`,
    `token`, `limits`, `connection`, `retry`, …);
    unknown keywords are refused. The token is a `SecretStr` taken from `token=` or the
    environment, as `AsyncEmbedder` does, and never shown.

    The interface returns `list[list[float]]`; `embed_matrix(texts)` /
    `await aembed_matrix(texts)` give the float32 numpy matrix instead, from the same
    embedder. Errors are embedkit's (`embedkit.RateLimitError`, `TypeError` for a non-str, …).

    Close it with `close()` / `await aclose()` (or `with` / `async with`); one that is never
    closed is closed when it is garbage-collected or when the interpreter exits. Copies
    (`model_copy`, `copy.deepcopy`) share its embedder, and closing one closes it for all.
    """

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed search documents: one list of floats per text, in order."""
        if not texts:
            return []
        rows: list[list[float]] = self._shared.embed_many(
            list(texts), self.kind_for("document")
        ).tolist()
        return rows

    def embed_query(self, text: str) -> list[float]:
        """Embed a query text."""
        row: list[float] = self._shared.embed(text, self.kind_for("query")).tolist()
        return row

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed search documents from async code; shares batches with concurrent calls."""
        if not texts:
            return []
        matrix = await self._shared.aembed_many(list(texts), self.kind_for("document"))
        rows: list[list[float]] = matrix.tolist()
        return rows

    async def aembed_query(self, text: str) -> list[float]:
        """Embed a query text from async code; concurrent queries share batched requests."""
        row: list[float] = (await self._shared.aembed(text, self.kind_for("query"))).tolist()
        return row
