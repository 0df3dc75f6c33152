"""What many processes share: a persistent embedding cache and a quota kept in Redis.

* `key.py` — the cache key: every field of the embedder's identity and the text, hashed.
* `store.py` — the `EmbeddingCache` protocol, the float32 value format, and the `Guard`
  that keeps a store that is down or slow from failing a call.
* `sqlite.py` — `SQLiteCache`, the embedded store for one machine.
* `redis.py` — `RedisCache`, the store shared by many hosts (and the per-loop clients).
* `front.py` — `CachingScheduler`: lookups before the queue, write-back after the answers.
* `quota.py`, `lua.py` — `RedisQuota`: the `Quota` seam backed by one atomic Lua script.

Imports point down: this package uses `_core`; `_client` uses it.
"""

from __future__ import annotations

from .front import CachingScheduler
from .key import KEY_VERSION, KeyMaker, key_identity
from .quota import RedisQuota
from .redis import RedisCache
from .sqlite import SQLiteCache
from .store import EmbeddingCache, decode, encode

__all__ = [
    "KEY_VERSION",
    "CachingScheduler",
    "EmbeddingCache",
    "KeyMaker",
    "RedisCache",
    "RedisQuota",
    "SQLiteCache",
    "decode",
    "encode",
    "key_identity",
]
