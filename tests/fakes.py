"""Deterministic embeddings, a virtual clock and fake servers and backends, shared by the tests."""

from __future__ import annotations

import hashlib
import threading

import anyio
import httpx
import numpy as np
import orjson

from embedkit import BackendInfo, InputError
from embedkit._config import Matrix

DIM = 32


def vector_for(text: str, dim: int = DIM) -> Matrix:
    """A deterministic float32 vector for `text` (any server in the tests can compute it)."""
    if dim > 64:  # a blake2b digest has at most 64 bytes: join digests of tagged texts
        parts = [vector_for(f"{k}\x00{text}", 64) for k in range(-(-dim // 64))]
        return np.concatenate(parts)[:dim]
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=dim).digest()
    return (np.frombuffer(digest, dtype=np.uint8).astype(np.float32) - 127.5) / 127.5


def vectors_for(texts: list[str], dim: int = DIM) -> Matrix:
    """`vector_for` of each text, stacked into a C-contiguous float32 matrix."""
    if not texts:
        return np.empty((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.stack([vector_for(t, dim) for t in texts]))


class VirtualClock:
    """Time that passes only when someone sleeps: for backoff and cooldown tests."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


class FakeBackend:
    """Answers `vectors_for` and remembers every batch; refuses texts in `refuse` (422)."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.refuse = refuse

    async def start(self) -> BackendInfo:
        return BackendInfo(model_id="fake")

    async def embed_batch(self, texts: list[str]) -> Matrix:
        await anyio.lowlevel.checkpoint()
        self.batches.append(list(texts))
        for text in texts:
            if text in self.refuse:
                raise InputError(422, f"refused {text}")
        return vectors_for(texts)

    async def aclose(self) -> None:
        pass

    def describe(self) -> str:
        return "fake"

    @property
    def sent(self) -> list[str]:
        return [text for batch in self.batches for text in batch]


class TeiRecorder:
    """A TEI-style server for `httpx.MockTransport`; records every request's texts.

    Row = `[len(text), 1]`, or `[len(text), index in the request, 1]` with `index=True`.
    With `status` other than 200 every `/embed` is refused with that status. `/info` is a
    404 (an older TEI), so the client keeps its own limits.
    """

    def __init__(self, *, status: int = 200, index: bool = False) -> None:
        self.status = status
        self.index = index
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()  # the framework classes call from several threads

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(404)
        texts = orjson.loads(request.content)["inputs"]
        with self.lock:
            self.batches.append(texts)
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "no", "error_type": "Validation"})
        if self.index:
            return httpx.Response(
                200, json=[[float(len(t)), float(i), 1.0] for i, t in enumerate(texts)]
            )
        return httpx.Response(200, json=[[float(len(t)), 1.0] for t in texts])
