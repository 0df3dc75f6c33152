"""The seam between the scheduler and whatever computes embeddings."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._config import Matrix
from .protocols import BackendInfo

__all__ = ["Backend", "BackendInfo"]


@runtime_checkable
class Backend(Protocol):
    """Something that embeds one batch at a time: an HTTP server, a local model, a fake.

    `embed_batch` must return one float32 row per text, in order, or raise an
    `EmbedkitError`; the scheduler does the batching, retries and flow control around it.
    """

    async def start(self) -> BackendInfo:
        """Prepare (connect, read limits, load a model) and say what was learned."""
        ...

    async def embed_batch(self, texts: list[str]) -> Matrix:
        """Embed one batch: an (len(texts), dim) float32 matrix."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads, models."""
        ...

    def describe(self) -> str:
        """A short, secret-free description for reprs and logs."""
        ...
