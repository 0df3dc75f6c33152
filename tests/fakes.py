"""Deterministic embeddings and a virtual clock, shared by the tests."""

from __future__ import annotations

import hashlib

import anyio
import numpy as np

from embedkit._decode import Matrix

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
