"""The persistent cache (`cache=`): keys, partial hits, embed_file reruns, a store that fails.

Real stores only: SQLite files in tmp_path and a real `redis-server` on loopback
(`devtools.redis`), stopped by PID; `tests.hashserver.HashServer` counts what reaches the
server. The one fake is `SlowStore`, standing for a store that hangs (a unit test of the
deadline).
"""

from __future__ import annotations

import multiprocessing
import pickle
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import redis

import embedkit
from devtools.redis import RunningRedis, running_redis
from embedkit._cache import KeyMaker, decode

from .fakes import vector_for
from .hashserver import HashServer

DIM = 8


def texts(n: int, tag: str = "t") -> list[str]:
    return [f"{tag} sentence number {i}" for i in range(n)]


def want(items: Sequence[str]) -> np.ndarray:
    return np.stack([vector_for(t, DIM) for t in items])


@pytest.fixture
def server() -> Iterator[HashServer]:
    with HashServer.running(dim=DIM) as srv:
        yield srv


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RunningRedis]:
    with running_redis(tmp_path) as r:
        yield r


# ------------------------------------------------------------------------------ keys

BASE: dict[str, Any] = {"model": "m", "api": "tei", "url": "http://127.0.0.1:9"}
OPENAI: dict[str, Any] = {"model": "m", "api": "openai", "url": "http://127.0.0.1:9", "token": "t"}

#: each option that changes a vector, and an embedder that differs from a base only there
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "model": (BASE, {**BASE, "model": "m2"}),
    "api": (BASE, {**BASE, "api": "hf"}),
    "normalize": (BASE, {**BASE, "normalize": False}),
    "normalize-none": (BASE, {**BASE, "normalize": True}),
    "prompt_name": (BASE, {**BASE, "prompt_name": "query"}),
    "truncate": (BASE, {**BASE, "truncate": True}),
    "truncation_direction": (BASE, {**BASE, "truncation_direction": "left"}),
    "dimensions": (BASE, {**BASE, "dimensions": 4}),
    "pooling": (
        {**BASE, "api": "hf", "url": None},
        {**BASE, "api": "hf", "url": None, "pooling": "mean"},
    ),
    "encoding_format": (
        OPENAI,
        {**OPENAI, "connection": embedkit.Connection(encoding_format="float")},
    ),
    "kind": (BASE, {**BASE, "kind": "query"}),
    "dtype": (BASE, {**BASE, "dtype": "int8"}),
    "url-without-model": ({**BASE, "model": None}, {**BASE, "model": None, "url": "http://h:1"}),
}


def key_of(options: dict[str, Any], text: str = "hello") -> str:
    return KeyMaker(embedkit.AsyncEmbedder(**options).identity()).key(text)


@pytest.mark.parametrize("option", sorted(CHANGES))
def test_a_changed_option_is_a_different_key(option: str) -> None:
    base, changed = CHANGES[option]
    assert key_of(base) == key_of(dict(base))  # stable
    assert key_of(base) != key_of(changed)


def test_the_text_is_in_the_key_length_prefixed() -> None:
    keys = {key_of(BASE, t) for t in ["", "a", "ab", "a\x00b", "b", "ab\x00"]}
    assert len(keys) == 6
    assert len(key_of(BASE)) == 64


def test_replicas_of_a_named_model_share_keys() -> None:
    assert key_of(BASE) == key_of({**BASE, "url": ["http://a:1", "http://b:1"]})


# ----------------------------------------------------------------------- SQLite cache


@pytest.mark.asyncio
async def test_partial_hits_are_merged_in_order_and_only_misses_are_sent(
    server: HashServer, tmp_path: Path
) -> None:
    cache = embedkit.SQLiteCache(tmp_path / "c.db")
    items = texts(300)
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache) as emb:
        await emb.embed_many(items[::2])
        assert emb.stats().store_misses == 150
    sent = server.texts
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache) as emb:
        got = await emb.embed_many(items)
        one = await emb.embed(items[4])
        stats = emb.stats()
    assert np.array_equal(got, want(items))
    assert np.array_equal(one, want([items[4]])[0])
    assert server.texts - sent == 150  # the odd ones, once
    assert (stats.store_hits, stats.store_misses, stats.store_errors) == (151, 150, 0)
    assert stats.texts == 301
    assert len(cache) == 300


@pytest.mark.asyncio
async def test_embed_stream_blocks_mix_hits_and_misses(server: HashServer, tmp_path: Path) -> None:
    cache = embedkit.SQLiteCache(tmp_path / "c.db")
    items = texts(1000)
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache) as emb:
        await emb.embed_many(items[100:400])
    sent = server.texts
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache) as emb:
        rows = [m async for _, m in emb.embed_stream(items + items[:10], block_size=128)]
    assert np.array_equal(np.concatenate(rows), want(items + items[:10]))
    assert server.texts - sent == 700


def test_a_second_embed_file_run_sends_no_request_and_writes_the_same_file(
    server: HashServer, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    items = texts(3000)
    corpus.write_text("\n".join(items + items[:200]) + "\n")
    cache = embedkit.SQLiteCache(tmp_path / "cache" / "vectors.db")
    outputs = []
    for run in range(2):
        before = server.requests
        out = tmp_path / f"run{run}.parquet"
        result = embedkit.embed_file(corpus, out, api="tei", url=server.url, cache=cache)
        assert result.rows == 3200
        outputs.append(out)
        if run == 1:
            assert server.requests == before  # nothing sent: every text was in the cache
    npy = [tmp_path / "a.npy", tmp_path / "b.npy"]
    embedkit.embed_file(corpus, npy[0], api="tei", url=server.url, cache=cache)
    embedkit.embed_file(corpus, npy[1], api="tei", url=server.url, cache=cache)
    assert npy[0].read_bytes() == npy[1].read_bytes()
    assert np.array_equal(np.load(npy[0]), want(items + items[:200]))
    import pyarrow.parquet as pq

    first, second = (pq.read_table(p) for p in outputs)
    assert first.equals(second)


def test_the_blocking_embedder_and_framework_classes_use_the_cache(
    server: HashServer, tmp_path: Path
) -> None:
    cache = embedkit.SQLiteCache(tmp_path / "c.db")
    items = texts(50)
    with embedkit.Embedder(api="tei", url=server.url, cache=cache) as emb:
        emb.embed_many(items)
    before = server.requests
    with embedkit.Embedder(api="tei", url=server.url, cache=cache) as emb:
        assert np.array_equal(emb.embed_many(items), want(items))
    pytest.importorskip("llama_index.core")
    from embedkit.llama_index import EmbedkitEmbedding

    model = EmbedkitEmbedding(api="tei", url=server.url, cache=cache)
    assert np.allclose(model.get_text_embedding(items[3]), want([items[3]])[0])
    assert server.requests == before
    assert "cache" not in model.model_dump()


def _write_through(url: str, path: str, tag: str, start: multiprocessing.synchronize.Event) -> None:
    start.wait(30)
    cache = embedkit.SQLiteCache(path)
    items = texts(1500, "shared") + texts(1500, tag)
    with embedkit.Embedder(
        api="tei", url=url, cache=cache, limits=embedkit.Limits(max_batch_size=16)
    ) as emb:
        for i in range(0, len(items), 100):
            emb.embed_many(items[i : i + 100])
        assert emb.stats().store_errors == 0


@pytest.mark.integration
def test_concurrent_processes_writing_one_sqlite_cache_lose_nothing(
    server: HashServer, tmp_path: Path
) -> None:
    path = str(tmp_path / "c.db")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_write_through, args=(server.url, path, f"p{k}", start))
        for k in range(4)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    expected = texts(1500, "shared") + [t for k in range(4) for t in texts(1500, f"p{k}")]
    maker = KeyMaker(embedkit.AsyncEmbedder(api="tei", url=server.url).identity())
    with sqlite3.connect(path) as db:
        stored = dict(db.execute("SELECT key, value FROM vectors").fetchall())
    assert len(stored) == len(expected)
    for text in expected:
        row = decode(stored[bytes.fromhex(maker.key(text))])
        assert row is not None
        assert np.array_equal(row, vector_for(text, DIM))


# ----------------------------------------------------------------------- Redis cache


@pytest.mark.asyncio
@pytest.mark.integration
async def test_redis_cache_shares_vectors_with_a_ttl_and_prefix(
    server: HashServer, redis_server: RunningRedis
) -> None:
    cache = embedkit.RedisCache(redis_server.url, ttl=60, prefix="app1:")
    items = texts(200)
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache) as emb:
        await emb.embed_many(items)
    before = server.requests
    other = embedkit.RedisCache(redis_server.url, ttl=60, prefix="app1:")
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=other) as emb:
        assert np.array_equal(await emb.embed_many(items), want(items))
        assert emb.stats().store_hits == 200
    assert server.requests == before
    client = redis.Redis.from_url(redis_server.url)
    keys = client.keys("*")
    assert len(keys) == 200
    assert all(k.startswith(b"app1:") for k in keys)
    assert 0 < client.pttl(keys[0]) <= 60_000
    client.close()


@pytest.mark.asyncio
@pytest.mark.integration
async def test_redis_killed_mid_run_every_row_still_right_and_errors_counted(
    server: HashServer, redis_server: RunningRedis
) -> None:
    cache = embedkit.RedisCache(redis_server.url, timeout=0.5)
    items = texts(2000)
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache) as emb:
        await emb.embed_many(items[::2])  # half of them cached
        rows = []
        async for start, block in emb.embed_stream(items, block_size=100, max_blocks_in_flight=2):
            rows.append(block)
            if start == 500:
                redis_server.kill()
        await emb.embed(items[1])
        stats = emb.stats()
    assert np.array_equal(np.concatenate(rows), want(items))
    assert stats.store_errors >= 1
    assert stats.store_hits >= 1  # the blocks before the kill were answered from Redis


class SlowStore:
    """A store that never answers in time (a hung Redis, a locked disk)."""

    timeout = 0.05

    def __init__(self) -> None:
        self.calls = 0

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.calls += 1
        await anyio.sleep(30)
        return [None] * len(keys)

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        await anyio.sleep(30)


@pytest.mark.asyncio
async def test_a_slow_store_is_skipped_not_an_error(server: HashServer) -> None:
    store = SlowStore()
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=store) as emb:
        with anyio.fail_after(10):
            row = await emb.embed("hello")
            rows = await emb.embed_many(["a", "b"])  # within a second: the store is skipped
        stats = emb.stats()
    assert np.array_equal(row, vector_for("hello", DIM))
    assert np.array_equal(rows, want(["a", "b"]))
    assert store.calls == 1
    assert stats.store_errors >= 1


def test_a_cache_that_is_not_one_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(TypeError, match="EmbeddingCache"):
        embedkit.AsyncEmbedder(api="tei", url="http://x", cache="redis://x")  # type: ignore[arg-type]


def test_caches_pickle_without_connections_and_hide_passwords(tmp_path: Path) -> None:
    sqlite_cache = embedkit.SQLiteCache(tmp_path / "c.db")
    sqlite_cache.set_many_now([("00" * 32, b"\x00" * 8)])
    again = pickle.loads(pickle.dumps(sqlite_cache))
    assert again.get_many_now(["00" * 32]) == [b"\x00" * 8]
    cache = embedkit.RedisCache("redis://:s3cret@host:6380/2")
    assert "s3cret" not in repr(cache)
    assert pickle.loads(pickle.dumps(cache)).url == cache.url


@pytest.mark.asyncio
async def test_texts_of_another_kind_are_cached_under_their_own_keys(
    server: HashServer, tmp_path: Path
) -> None:
    cache = embedkit.SQLiteCache(tmp_path / "c.db")
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache) as emb:
        await emb.embed_many(["a", "b"])
        await emb.embed_many(["a", "b"], kind="query")  # the query kind's own scheduler
        assert emb.stats().store_misses == 2
    assert len(cache) == 4  # a query's vector is not a document's
    sent = server.texts
    async with embedkit.AsyncEmbedder(api="tei", url=server.url, cache=cache, kind="query") as emb:
        await emb.embed_many(["a", "b"])
        assert emb.stats().store_hits == 2
    assert server.texts == sent
