"""The cache's seam (`EmbeddingCache`) and the guard that keeps a store's trouble out of calls.

A store is anything with `get_many(keys)` and `set_many(items)` over bytes: the embedded
`SQLiteCache`, the shared `RedisCache`, or one of your own. The value is the vector as
little-endian float32 bytes (`encode`/`decode`), so any store can hold it and any process
read it.

`Guard` wraps the store for the scheduler: a store that is down or slow must not fail a
call (a known bug of other caches), so each call has a deadline, an error or a timeout is
counted and answered as "all misses", and after one the store is left alone for a moment
(`RETRY_SECONDS`) instead of costing every call its timeout. Writes are queued and written
by one task, many callers' vectors in one `set_many`, so a busy web app does not make one
write per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import anyio
import numpy as np

from .._config import Matrix

__all__ = ["RETRY_SECONDS", "EmbeddingCache", "Guard", "decode", "encode"]

logger = logging.getLogger("embedkit")

#: After a store error, skip the store for this long (calls go to the server meanwhile).
RETRY_SECONDS = 1.0
#: Lookups out at once; the keys of others wait and share the next one.
LOOKUPS_IN_FLIGHT = 2
#: Vectors written by one `set_many` at most.
WRITE_CHUNK = 2048


@runtime_checkable
class EmbeddingCache(Protocol):
    """A persistent store of vectors by key, shared by embedders (`cache=`).

    Keys are 64-character hex strings (see the "many processes" guide for what they hash);
    values are the vector as little-endian float32 bytes. `timeout` is the seconds one call
    may take before embedkit gives up on it and asks the server instead.
    """

    timeout: float

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, or None where there is none."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store each (key, value)."""
        ...


def encode(row: Matrix) -> bytes:
    """A vector as little-endian float32 bytes."""
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


def decode(value: bytes) -> Matrix | None:
    """A stored value as a float32 vector; None for a value that cannot be one."""
    if not value or len(value) % 4:
        return None
    return np.frombuffer(value, dtype="<f4").astype(np.float32)


class _Lookup:
    """Keys of concurrent lookups sent in one `get_many`, and its answer."""

    __slots__ = ("done", "keys", "values")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.values: list[bytes | None] | None = None
        self.done = anyio.Event()


class Guard:
    """The scheduler's side of a store: deadlines, error counts, a write queue."""

    def __init__(self, store: EmbeddingCache) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self._skip_until = -1.0
        self._pending: list[tuple[str, bytes]] = []
        self._writing = False
        self._wake: anyio.Event | None = None
        self._idle: anyio.Event | None = None
        self._closing = False
        self._open: _Lookup | None = None  # the lookup new keys join
        self._lookups = anyio.CapacityLimiter(LOOKUPS_IN_FLIGHT)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._skip_until = time.monotonic() + RETRY_SECONDS
        kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        logger.warning("embedkit cache: %s %s (%s); asking the server", what, kind, exc)

    def available(self) -> bool:
        """False for a moment after an error."""
        return time.monotonic() >= self._skip_until

    async def get(self, keys: list[str]) -> list[bytes | None] | None:
        """The stored values (None each where missing), or None when the store failed.

        Concurrent lookups share calls to the store: while `LOOKUPS_IN_FLIGHT` are out,
        the keys of new ones pile up into one `get_many` (a web app's hundred concurrent
        `embed` calls cost a few round trips, not a hundred).
        """
        if not self.available():
            return None
        batch = self._open
        leader = batch is None
        if batch is None:
            batch = self._open = _Lookup()
        start = len(batch.keys)
        batch.keys.extend(keys)
        if leader:
            try:
                async with self._lookups:
                    if self._open is batch:
                        self._open = None  # later arrivals start the next lookup
                    batch.values = await self._fetch(batch.keys)
            finally:
                if self._open is batch:
                    self._open = None
                batch.done.set()
        else:
            await batch.done.wait()
        if batch.values is None:
            return None
        return batch.values[start : start + len(keys)]

    async def _fetch(self, keys: list[str]) -> list[bytes | None] | None:
        if not self.available():
            return None
        try:
            with anyio.fail_after(self.store.timeout):
                values = await self.store.get_many(keys)
            if len(values) != len(keys):
                raise ValueError(f"get_many returned {len(values)} values for {len(keys)} keys")
        except Exception as exc:
            self._failed("lookup", exc)
            return None
        return values

    def put(self, items: list[tuple[str, bytes]], tg: anyio.abc.TaskGroup | None) -> None:
        """Queue `items` for the writer task (started in `tg` when none is running)."""
        if not items:
            return
        self._pending.extend(items)
        if self._writing:
            if self._wake is not None:
                self._wake.set()
            return
        if tg is None:
            return
        self._writing = True
        self._idle = anyio.Event()
        tg.start_soon(self._writer)

    async def _writer(self) -> None:
        try:
            while True:
                if not self._pending and not self._closing:
                    self._wake = anyio.Event()
                    with anyio.move_on_after(0.5):  # linger for more writes, then end
                        await self._wake.wait()
                    self._wake = None
                if not self._pending:
                    return
                await self._write_some()
        finally:
            self._writing = False
            if self._idle is not None:
                self._idle.set()

    async def _write_some(self) -> None:
        items = self._pending[:WRITE_CHUNK]
        del self._pending[:WRITE_CHUNK]
        if not self.available():
            return  # dropped: the store is down, and vectors are cheap to ask for again
        try:
            with anyio.fail_after(self.store.timeout):
                await self.store.set_many(items)
        except Exception as exc:
            self._failed("write", exc)

    async def flush(self, seconds: float) -> None:
        """Write what is queued (at most `seconds`; shielded from cancellation)."""
        self._closing = True
        with anyio.move_on_after(seconds, shield=True):
            if self._writing and self._idle is not None:
                if self._wake is not None:
                    self._wake.set()
                await self._idle.wait()
            while self._pending:
                await self._write_some()
