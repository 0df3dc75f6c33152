"""`RedisCache`: the embedding cache shared by many processes and hosts, and the Redis plumbing
`RedisQuota` shares with it.

Values are float32 bytes under `prefix + key`; `MGET` answers a lookup of many texts in one
round trip, and a write is one pipeline of `SET ... EX ttl` (or one `MSET` without a TTL).
The `redis` client (`pip install "embedkit[redis]"`) is imported on first use.

A redis.asyncio client belongs to the event loop that made it, and an embedder may be opened
on several loops over its life (`Embedder` runs its own), so a client is made per loop
(`clients_for`). Only the URL and settings are pickled: a cache or quota can be sent to Ray
actors or multiprocessing workers, and each rebuilds its connections. The URL may hold a
password, so reprs show only host, port and database.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["RedisCache", "RedisClients", "safe_url"]


def safe_url(url: str) -> str:
    """`url` without credentials or query, for reprs and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisClients:
    """One redis.asyncio client per running event loop, all for one URL."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._holders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
            weakref.WeakKeyDictionary()
        )

    def attach(self) -> None:
        """An embedder on the running loop starts using these clients."""
        loop = asyncio.get_running_loop()
        self._holders[loop] = self._holders.get(loop, 0) + 1

    async def detach(self) -> None:
        """An embedder stops; the last one on this loop closes the loop's connections."""
        loop = asyncio.get_running_loop()
        held = self._holders.get(loop, 1) - 1
        self._holders[loop] = held
        if held <= 0:
            self._holders.pop(loop, None)
            client = self._clients.pop(loop, None)
            if client is not None:
                await client.aclose()

    def get(self) -> Any:
        """The client of the running loop (made on first use)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "embedkit's Redis cache and quota run on asyncio (redis.asyncio); not under trio"
            ) from None
        client = self._clients.get(loop)
        if client is None:
            try:
                import redis.asyncio
                from redis.asyncio.retry import Retry
                from redis.backoff import NoBackoff
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ImportError(
                    'the Redis cache and quota need the redis client: pip install "embedkit[redis]"'
                ) from exc
            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),  # embedkit decides what a failure costs
            )
            self._clients[loop] = client
        return client


class RedisCache:
    """A persistent embedding cache in Redis (`cache=embedkit.RedisCache(url)`).

    Args:
        url: a redis URL, e.g. "redis://localhost:6379/0" (password and TLS as redis-py
            accepts them: "rediss://:password@host:6380/0").
        ttl: seconds an entry lives (None: until Redis evicts it; set `maxmemory-policy
            allkeys-lru` on the server so a full Redis drops old vectors).
        prefix: prepended to every key, to keep embedkit's keys apart from others'.
        timeout: seconds one lookup or write may take before embedkit asks the server
            instead (and counts a cache error in `stats().store_errors`).
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        ttl: float | None = 30 * 24 * 3600,
        prefix: str = "embedkit:v1:",
        timeout: float = 0.5,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive (or None)")
        self.url = url
        self.ttl = ttl
        self.prefix = prefix
        self.timeout = timeout
        self._clients = RedisClients(url, timeout)

    def __repr__(self) -> str:
        return f"RedisCache({safe_url(self.url)!r}, prefix={self.prefix!r}, ttl={self.ttl!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "ttl": self.ttl, "prefix": self.prefix, "timeout": self.timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored vector of each key (None where there is none): one MGET."""
        if not keys:
            return []
        prefix = self.prefix
        values: list[bytes | None] = await self._clients.get().mget([prefix + k for k in keys])
        return values

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store each (key, vector): one pipeline of SET with the TTL (or one MSET)."""
        if not items:
            return
        client = self._clients.get()
        prefix = self.prefix
        if self.ttl is None:
            await client.mset({prefix + k: v for k, v in items})
            return
        ttl_ms = int(self.ttl * 1000)
        async with client.pipeline(transaction=False) as pipe:
            for k, v in items:
                pipe.set(prefix + k, v, px=ttl_ms)
            await pipe.execute()

    def attach(self) -> None:
        """Called by an embedder as it opens (its connections are closed by `detach`)."""
        self._clients.attach()

    async def detach(self) -> None:
        """Called by an embedder as it closes: the last one on a loop closes its connections."""
        await self._clients.detach()
