"""`embedkit.ray` on a real local Ray cluster (one per test session) against loopback servers.

Ray's local mode is gone: these tests start a 2-CPU cluster in-process, and its actors are
real worker processes that reach the servers on 127.0.0.1, as they would a TEI host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data

import embedkit.ray
from benchmarks.rayfleet import LastAnswer
from embedkit import Limits

from .fakes import vectors_for
from .hashserver import HashServer
from .loopserver import send
from .servers import rate_limited_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # Ray warns about its own deprecated settings from inside Ray, whatever we set
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
]

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_" + "RayTokenMustNotLeak" * 2


@pytest.fixture(scope="session")
def cluster() -> Iterator[Path]:
    """One local Ray cluster for the whole session; yields its temp dir (logs and all)."""
    temp = Path(tempfile.mkdtemp(prefix="ekray"))
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 1024 * 1024,
        include_dashboard=False,
        _temp_dir=str(temp),
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's own, on any setting
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
    try:
        yield temp
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def corpus(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"document {i}: " + "words " * (i % 7)} for i in range(start, n)]


def read_back(folder: Path) -> pa.Table:
    """The parquet Ray wrote, read with plain pyarrow, sorted by id."""
    table = pq.read_table(folder)
    return table.sort_by("id")


def check_exact(table: pa.Table, n: int, dim: int) -> None:
    """Every id once, and every vector exactly the one the server computes for its text."""
    assert table.column("id").to_pylist() == list(range(n))
    texts = table.column("text").to_pylist()
    flat = table.column("embedding").combine_chunks().flatten().to_numpy()
    np.testing.assert_array_equal(flat.reshape(n, dim), vectors_for(texts, dim))


# ---------------------------------------------------------------------- correctness


class RecordingHashServer(HashServer):
    """A hash server that remembers the Authorization headers it was sent."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.authorizations: set[str] = set()

    async def respond(
        self, request_line: bytes, headers: dict[str, str], body: bytes, writer: Any
    ) -> bool:
        self.authorizations.add(headers.get("authorization", ""))
        return await super().respond(request_line, headers, body, writer)


def test_twenty_thousand_rows_exact_aligned_and_readable_without_ray(
    cluster: Path, tmp_path: Path
) -> None:
    n, dim = 20_000, 384
    with RecordingHashServer.running(dim=dim) as server:
        ds = ray.data.from_items(corpus(n), override_num_blocks=20)
        out = embedkit.ray.embed_dataset(
            ds, api="tei", url=server.url, token=TOKEN, workers=4, batch_size=500
        )
        out.write_parquet(str(tmp_path / "out"))
        assert server.authorizations == {f"Bearer {TOKEN}"}  # the token did travel
    table = read_back(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    assert table.column_names == ["id", "text", "embedding"]
    check_exact(table, n, dim)

    # the token is in no file Ray wrote: logs, task and actor descriptions
    leaks, logs = [], 0
    for path in cluster.rglob("*"):
        if path.is_file() and not path.is_socket():
            logs += path.suffix in (".log", ".out", ".err")
            with contextlib.suppress(OSError):
                if TOKEN.encode() in path.read_bytes():
                    leaks.append(str(path))
    assert logs > 5  # the workers' and the actors' logs were there to search
    assert leaks == []


def _worker_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "MapWorker" in " ".join(process.info["cmdline"] or []):
                found.append(process)
    return found


def test_a_worker_killed_mid_run_loses_and_repeats_no_row(cluster: Path, tmp_path: Path) -> None:
    n, dim = 6_000, 16
    errors: list[BaseException] = []
    with HashServer.running(dim=dim) as server:
        server.hold_after = 2_000  # every request after this many texts waits for us
        ds = ray.data.from_items(corpus(n), override_num_blocks=12)
        out = embedkit.ray.embed_dataset(ds, api="tei", url=server.url, workers=2, batch_size=250)

        def consume() -> None:
            try:
                out.write_parquet(str(tmp_path / "out"))
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        deadline = time.monotonic() + 120
        while server.texts < 2_000 or len(_worker_processes()) < 2:
            assert time.monotonic() < deadline, "the run never reached the hold"
            assert thread.is_alive(), errors
            time.sleep(0.05)  # polling what the server has answered, not a timing guess
        before = {process.pid for process in _worker_processes()}
        victim = _worker_processes()[0]
        os.kill(victim.pid, signal.SIGKILL)  # it has a batch in flight, held by the server
        psutil.wait_procs([victim], timeout=30)
        server.resume()
        restarted = False
        while thread.is_alive() and not restarted:
            restarted = bool({p.pid for p in _worker_processes()} - before)
            time.sleep(0.05)  # polling for Ray's replacement process
        thread.join(180)
        assert not thread.is_alive()
    # The guarantee is the output: the killed worker's batch was redone (by a replacement
    # actor, or by the survivor when it finished the run before Ray brought one up: both
    # were seen), so every row is there exactly once, in place.
    print(f"replacement worker seen before the run ended: {restarted}")
    assert errors == []
    check_exact(read_back(tmp_path / "out"), n, dim)


def _bad_row_run(server: HashServer) -> Any:
    rows = corpus(200)
    rows[137]["text"] = ""
    ds = ray.data.from_items(rows, override_num_blocks=4)
    return embedkit.ray.embed_dataset(ds, api="tei", url=server.url, workers=2)


def test_a_bad_row_stops_the_job_and_names_the_row(cluster: Path) -> None:
    with HashServer.running(dim=8) as server:
        # by default Ray wraps it in its own UserCodeException, whose message keeps ours
        with pytest.raises(Exception, match=r"BadRowError.*id=137.*empty") as info:
            _bad_row_run(server).materialize()
        assert not isinstance(info.value, embedkit.ray.BadRowError)
        # with Ray Data's switch for it, the error is ours, row and reason as attributes
        context = ray.data.DataContext.get_current()
        context.raise_original_map_exception = True
        try:
            with pytest.raises(embedkit.ray.BadRowError) as caught:
                _bad_row_run(server).materialize()
        finally:
            context.raise_original_map_exception = False
    assert caught.value.row["id"] == "137"
    assert "empty" in caught.value.reason


class CountingHashServer(HashServer):
    """A hash server that says how many tokens it counted (TEI's `x-compute-tokens`): one
    a word, plus two an input (not characters / 4); `counted` is their sum."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counted = 0

    async def respond(
        self, request_line: bytes, headers: dict[str, str], body: bytes, writer: Any
    ) -> bool:
        status, payload = await self._answer(request_line, body)
        extra = b""
        if status == 200 and request_line.startswith(b"POST /embed"):
            tokens = sum(len(t.split()) + 2 for t in orjson.loads(body)["inputs"])
            self.counted += tokens
            extra = b"x-compute-tokens: %d\r\n" % tokens
        await send(writer, status, payload, extra)
        return True


def test_the_result_states_the_tokens_used_summed_over_the_workers(cluster: Path) -> None:
    n = 3_000
    with CountingHashServer.running(dim=8) as server:
        ds = ray.data.from_items(corpus(n), override_num_blocks=6)
        out = embedkit.ray.embed_dataset(ds, api="tei", url=server.url, workers=2, batch_size=250)
        assert embedkit.ray.tokens_used(out) == 0  # nothing has run yet (a lazy dataset)
        assert len(out.take_all()) == n
        used = embedkit.ray.tokens_used(out)
        counted = server.counted
    words = sum(len(r["text"].split()) + 2 for r in corpus(n))
    assert counted >= words  # every text once (a dimension probe may add one)
    assert used == counted  # the server's counts, from both workers, summed
    with pytest.raises(TypeError, match="embed_dataset"):
        embedkit.ray.tokens_used(ds)


# ---------------------------------------------------------------------- shared quota


def _quota_run(rate: float, *, given: bool, n: int) -> tuple[float, float, float, dict[str, Any]]:
    with rate_limited_server(rate) as root:
        watch = LastAnswer(root)
        watch.start()
        ds = ray.data.from_items(corpus(n), override_num_blocks=16)
        kwargs: dict[str, Any] = {"requests_per_second": rate} if given else {}
        out = embedkit.ray.embed_dataset(
            ds,
            limits=Limits(max_batch_size=8, max_concurrency=4),
            api="tei",
            url=root,
            workers=4,
            batch_size=64,
            **kwargs,
        )
        out = out.materialize()
        watch.stopped.set()
        watch.join()
        stats = httpx.get(root + "/stats").json()
        assert out.count() == n
    # from the first request to the last answer (Ray's start and finish are not the quota's)
    elapsed = watch.last - stats["first_request_monotonic"]
    achieved = stats["ok"] / elapsed
    refused = stats["rejected_429"] / stats["requests"]
    learned = watch.rate_after(stats["first_request_monotonic"] + 3.0)
    print(
        f"quota R={rate:g} given={given}: {achieved:.1f} ok/s ({learned:.1f} after 3 s), "
        f"{100 * refused:.2f}% 429, {stats}"
    )
    return achieved, learned, refused, stats


def test_a_fleet_rate_holds_for_four_workers(cluster: Path) -> None:
    rate = 100.0
    achieved, _, refused, stats = _quota_run(rate, given=True, n=5_600)
    assert achieved >= 0.9 * rate, stats
    assert refused <= 0.05, stats


def test_a_pace_learned_from_429s_holds_for_four_workers(cluster: Path) -> None:
    rate = 100.0
    # Not told the rate, the fleet learns it from the first 429s within about a second
    # (six quiet runs of the benchmark's 6,400 texts: 100-101% of R, 3-4% 429s).
    achieved, learned, refused, stats = _quota_run(rate, given=False, n=8_800)
    assert learned >= 0.9 * rate, stats
    assert achieved >= 0.9 * rate, stats
    assert refused <= 0.05, stats


# ------------------------------------------------------------------------------ CLI


def test_the_cli_embeds_a_folder_with_the_ray_engine(cluster: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    rows = corpus(300)
    for part in range(3):
        lines = [f'{{"id": {r["id"]}, "text": "{r["text"]}"}}' for r in rows[part::3]]
        (source / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
    address = ray.get_runtime_context().gcs_address
    with HashServer.running(dim=8) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "embedkit",
                "embed",
                str(source / "*.jsonl"),
                "-o",
                str(tmp_path / "out"),
                "--engine",
                "ray",
                "--address",
                address,
                "--api",
                "tei",
                "--url",
                server.url,
                "--workers",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=ROOT,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(300 rows, " in result.stderr  # and the tokens the run used (estimated here)
    table = read_back(tmp_path / "out")
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    check_exact(table, 300, 8)


# ------------------------------------------------------- a Redis quota, a shared cache


def test_a_redis_quota_and_a_sqlite_cache_travel_to_the_actors(
    cluster: Path, tmp_path: Path
) -> None:
    from devtools.redis import running_redis

    n, dim = 2_000, 8
    cache = embedkit.SQLiteCache(tmp_path / "cache.db")
    with running_redis(tmp_path) as redis_server, HashServer.running(dim=dim) as server:
        quota = embedkit.RedisQuota(redis_server.url, name="ray", requests_per_second=500.0)
        sent: list[int] = []
        used: list[int] = []
        for run in range(2):
            ds = ray.data.from_items(corpus(n), override_num_blocks=4)
            out = embedkit.ray.embed_dataset(
                ds, api="tei", url=server.url, workers=2, batch_size=250, quota=quota, cache=cache
            )
            out.write_parquet(str(tmp_path / f"out{run}"))
            sent.append(server.requests)
            # with a quota of the user's there is no quota actor: a meter of its own counts
            used.append(embedkit.ray.tokens_used(out))
            check_exact(read_back(tmp_path / f"out{run}"), n, dim)
        with pytest.raises(ValueError, match="set the rates on the quota"):
            embedkit.ray.embed_dataset(
                ds, api="tei", url=server.url, quota=quota, requests_per_second=5
            )
    assert sent[0] > 0
    assert sent[1] == sent[0]  # the second run was answered from the cache
    assert used[0] >= sum(len(r["text"]) for r in corpus(n)) // 8  # counted: ~4 chars a token
    assert used[1] == 0  # from the cache: nothing sent, nothing spent
