"""`SQLiteCache`: the embedded cache for one machine, a file any number of processes share.

stdlib `sqlite3` in WAL mode: readers never wait for the writer, and writers from several
processes take turns (`busy_timeout`) instead of failing, so a web app's workers, a
multiprocessing pool or yesterday's `embed_file` run can all use one file. Each write is one
transaction of many vectors (the scheduler's `Guard` queues them), with `synchronous=NORMAL`,
WAL's usual setting: a power cut may lose the last writes, never the file. Values are
float32 blobs, keys the 32 bytes of the key's hash.

sqlite3 blocks, so every call runs in a worker thread (`anyio.to_thread`); one connection per
process, behind a lock, opened on first use (and again in a forked child).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

__all__ = ["SQLiteCache"]

#: Keys per SELECT (SQLite's bound-parameter limit is 32766 since 3.32, 999 before).
_CHUNK = 900
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
)


class SQLiteCache:
    """A persistent embedding cache in one SQLite file (`cache=embedkit.SQLiteCache(path)`).

    Args:
        path: the database file (created, with its folder, if missing).
        timeout: seconds one lookup or write may take before embedkit asks the server
            instead (and counts a cache error in `stats().store_errors`).
        busy_timeout: seconds a write waits for another process's write to finish.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 2.0, busy_timeout: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "timeout": self.timeout, "busy_timeout": self.busy_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], timeout=state["timeout"], busy_timeout=state["busy_timeout"])  # type: ignore[misc]

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None and self._pid == os.getpid():
            return self._db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        self._db, self._pid = db, os.getpid()
        return db

    def get_many_now(self, keys: Sequence[str]) -> list[bytes | None]:
        """`get_many`, blocking (in the calling thread)."""
        raw = [bytes.fromhex(k) for k in keys]
        found: dict[bytes, bytes] = {}
        with self._lock:
            db = self._connect()
            for start in range(0, len(raw), _CHUNK):
                chunk = raw[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(f"SELECT key, value FROM vectors WHERE key IN ({marks})", chunk)
                found.update(rows.fetchall())
        return [found.get(k) for k in raw]

    def set_many_now(self, items: Sequence[tuple[str, bytes]]) -> None:
        """`set_many`, blocking (in the calling thread): one transaction."""
        rows = [(bytes.fromhex(k), v) for k, v in items]
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT OR REPLACE INTO vectors (key, value) VALUES (?, ?)", rows)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The stored vector of each key (None where there is none), in a worker thread."""
        return await anyio.to_thread.run_sync(self.get_many_now, keys, abandon_on_cancel=True)

    async def set_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store each (key, vector) in one transaction, in a worker thread."""
        await anyio.to_thread.run_sync(self.set_many_now, items, abandon_on_cancel=True)

    def __len__(self) -> int:
        with self._lock:
            (n,) = self._connect().execute("SELECT count(*) FROM vectors").fetchone()
        return int(n)

    def close(self) -> None:
        """Close this process's connection (it is opened again on next use)."""
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None
