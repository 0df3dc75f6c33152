"""Many replicas from one client, against real server processes on loopback.

Replicas are `benchmarks._server` processes (the cost-model server: `--slots` requests at once,
each taking `--latency-ms`), so one can be SIGKILLed mid-run and started again on its port.
Every answer is checked exactly: row k is the canned vector the server computes for text k.
The 503 "loading" case uses the in-process fault and hash servers (HF wire format).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest

import embedkit
from benchmarks._server import canned_vectors, row_index
from embedkit import Connection, Endpoint, Limits, ResponseError, RetryPolicy

from .fakes import vectors_for
from .faultserver import FaultServer
from .hashserver import HashServer
from .servers import ROOT, free_port, running, stop

pytestmark = [pytest.mark.integration]

DIM = 32
N_TEXTS = 20_000


class Replica:
    """One cost-model server process; `kill()` SIGKILLs it, `start()` brings it back."""

    def __init__(self, *, port: int = 0, dim: int = DIM, **options: float) -> None:
        self.options = {"dim": dim, **options}
        self.dim = dim
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "benchmarks._server", "--port", str(self.port)]
        for key, value in self.options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, start_new_session=True
        )
        assert process.stdout is not None
        line = process.stdout.readline().decode().split()
        if line[:1] != ["PORT"]:
            process.stdout.close()
            stop(process)
            raise RuntimeError(f"cost-model server did not start: {line!r}")
        process.stdout.close()  # it says nothing more
        self.port = int(line[1])
        self.process = process

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)


@contextlib.contextmanager
def replicas(*specs: dict[str, float]) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for spec in specs:
            started.append(Replica(**spec))  # type: ignore[arg-type]
        yield started
    finally:
        for replica in started:
            replica.close()


def texts(n: int, tag: str = "") -> list[str]:
    return [f"{tag}text {i} " + "y" * (i % 40) for i in range(n)]


def expected(items: list[str], dim: int = DIM) -> np.ndarray:
    return canned_vectors(dim)[[row_index(t) for t in items]]


def fast_retry() -> RetryPolicy:
    async def no_wait(seconds: float) -> None:
        await anyio.lowlevel.checkpoint()

    return RetryPolicy(sleep=no_wait)


FAST = {"slots": 2, "latency_ms": 4.0}
SLOW = {"slots": 2, "latency_ms": 16.0}  # 4x slower


@pytest.mark.asyncio
async def test_three_replicas_of_different_speeds_every_vector_exact_and_in_order() -> None:
    corpus = texts(N_TEXTS)
    with replicas(FAST, FAST, SLOW) as servers:
        urls = [s.url for s in servers]
        async with embedkit.AsyncEmbedder(
            limits=Limits(max_concurrency=2), api="tei", url=urls, retry=fast_retry()
        ) as emb:
            assert emb.stats().concurrency_limit == 6  # the sum of the replicas' caps
            matrix = await emb.embed_many(corpus)
            stats = emb.stats()
    np.testing.assert_array_equal(matrix, expected(corpus))
    assert stats.failed_texts == 0
    assert stats.retries == {}
    fast_a, fast_b, slow = stats.endpoints
    assert [e.url for e in stats.endpoints] == [f"{u}/embed" for u in urls]
    assert fast_a.texts + fast_b.texts + slow.texts == N_TEXTS
    assert all(e.state == "healthy" and e.errors == {} for e in stats.endpoints)
    # The slow replica carries work, about in proportion to its speed (a quarter of a fast
    # one's when every replica is busy; less when the client, not the servers, is the limit).
    assert 0 < slow.texts < 0.6 * min(fast_a.texts, fast_b.texts)
    assert slow.latency_p50 is not None
    assert fast_a.latency_p50 is not None
    assert slow.latency_p50 > 2 * fast_a.latency_p50


@pytest.mark.asyncio
async def test_a_replica_killed_mid_run_loses_nothing_and_comes_back() -> None:
    corpus = texts(N_TEXTS)
    timeout = 2.0
    spec = {"slots": 2, "latency_ms": 8.0}
    with replicas(spec, spec, spec) as servers:
        victim = servers[1]
        async with embedkit.AsyncEmbedder(
            connection=Connection(timeout=timeout),
            limits=Limits(max_concurrency=2),
            api="tei",
            url=[s.url for s in servers],
            retry=fast_retry(),
        ) as emb:
            result: list[np.ndarray] = []

            async def run() -> None:
                result.append(await emb.embed_many(corpus))

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                with anyio.fail_after(30):
                    while emb.stats().endpoints[1].texts < 2000:
                        await anyio.sleep(0.01)
                victim.kill()  # SIGKILL: connections reset, nothing answered
                killed = time.monotonic()
                before = [e.texts for e in emb.stats().endpoints]
                # Its share moves to the others within one request timeout.
                with anyio.fail_after(timeout):
                    while True:
                        now = [e.texts for e in emb.stats().endpoints]
                        if now[0] + now[2] - before[0] - before[2] >= 2000 or result:
                            break
                        await anyio.sleep(0.01)
                moved_after = time.monotonic() - killed
            stats = emb.stats()
            np.testing.assert_array_equal(result[0], expected(corpus))
            assert stats.failed_texts == 0  # 0 texts lost, 0 errors to callers
            assert stats.retries == {}  # failed over inside the balancer, not retried later
            dead = stats.endpoints[1]
            assert dead.state == "ejected"
            assert sum(dead.errors.values()) >= 1
            assert moved_after < timeout

            # Started again on its port: probed, readmitted, given work.
            victim.start()
            with anyio.fail_after(20):
                while emb.stats().endpoints[1].state != "healthy":
                    await anyio.sleep(0.02)
            served = emb.stats().endpoints[1].texts
            more = texts(3000, "again ")
            np.testing.assert_array_equal(await emb.embed_many(more), expected(more))
            assert emb.stats().endpoints[1].texts > served


@pytest.mark.asyncio
async def test_a_rate_limited_replica_cools_while_the_others_carry_the_load() -> None:
    corpus = texts(4000)
    limited = {"slots": 2, "latency_ms": 4.0, "rate": 5.0, "burst": 1.0}
    with replicas(limited, FAST, FAST) as servers:
        async with embedkit.AsyncEmbedder(
            limits=Limits(max_concurrency=2),
            api="tei",
            url=[s.url for s in servers],
            retry=fast_retry(),
        ) as emb:
            matrix = await emb.embed_many(corpus)
            stats = emb.stats()
    np.testing.assert_array_equal(matrix, expected(corpus))
    assert stats.failed_texts == 0
    assert stats.cooldowns == 0  # no client-wide pause: only that replica cooled
    hot, a, b = stats.endpoints
    assert hot.errors.get("429", 0) >= 1
    assert hot.failovers >= 1
    assert a.texts + b.texts > 0.8 * len(corpus)


@pytest.mark.asyncio
async def test_a_loading_replica_gets_no_work_until_it_is_ready_then_is_readmitted() -> None:
    corpus = [f"load {i}" for i in range(3000)]
    with (
        FaultServer.running(cold=True, dim=DIM) as cold,
        HashServer.running(dim=DIM) as one,
        HashServer.running(dim=DIM) as two,
    ):
        urls = [cold.url, f"{one.url}/embed", f"{two.url}/embed"]
        async with embedkit.AsyncEmbedder(
            limits=Limits(max_concurrency=2), api="hf", url=urls, retry=fast_retry(), token=""
        ) as emb:
            np.testing.assert_array_equal(await emb.embed_many(corpus), vectors_for(corpus, DIM))
            stats = emb.stats()
            assert stats.failed_texts == 0
            assert stats.endpoints[0].state == "loading"
            # What was in flight when it first answered 503 (its cap: 2), then probes only.
            assert 1 <= stats.endpoints[0].errors["503"] <= 2
            assert stats.endpoints[0].texts == 0
            cold.finish_loading()
            with anyio.fail_after(20):
                while emb.stats().endpoints[0].state != "healthy":
                    await anyio.sleep(0.02)
            more = [f"loaded {i}" for i in range(2000)]
            np.testing.assert_array_equal(await emb.embed_many(more), vectors_for(more, DIM))
            assert emb.stats().endpoints[0].texts > 0


@pytest.mark.asyncio
async def test_replicas_of_different_dimensions_are_refused_naming_the_odd_one() -> None:
    with replicas({**FAST, "dim": 16}, {**FAST, "dim": 24}) as servers:
        async with embedkit.AsyncEmbedder(
            api="tei",
            url=[Endpoint(servers[0].url), Endpoint(servers[1].url)],
            retry=fast_retry(),
        ) as emb:
            with pytest.raises(ResponseError, match="do not serve the same model") as caught:
                await emb.embed_many(texts(500))
            # Whichever answered second is named, with its size and the first one's.
            message = str(caught.value)
            first, second = sorted(servers, key=lambda s: message.index(s.url))
            assert f"replica {first.url}/embed answers {first.dim}-dimensional" in message
            assert f"{second.url}/embed answered {second.dim}" in message
            odd = servers.index(first)
            assert emb.stats().endpoints[odd].errors["dimension"] >= 1


# ------------------------------------------------------------------ nginx, the anchor


@pytest.mark.asyncio
async def test_nginx_round_robin_and_least_conn_over_the_same_replicas(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """What users deploy instead: nginx in front of the replicas. Through it, vectors are
    exact too; but when a replica dies mid-run, nginx answers 502 for the POSTs it had sent
    there (it does not pass a POST on), so the client must retry them itself."""
    from devtools.nginx import running_nginx, upstream_conf

    from .servers import free_port
    from .test_real_servers import require_nginx

    require_nginx()
    corpus = texts(8000)
    spec = {"slots": 2, "latency_ms": 8.0}
    with replicas(spec, spec, spec) as servers:
        hosts = [f"127.0.0.1:{s.port}" for s in servers]
        rr, lc = free_port(), free_port()
        body = (
            upstream_conf("rr", hosts, rr)
            + "\n"
            + upstream_conf("lc", hosts, lc, method="least_conn")
        )
        with running_nginx(tmp_path_factory.mktemp("nginx-replicas"), body, [rr, lc]):
            for port in (lc, rr):
                async with embedkit.AsyncEmbedder(limits=Limits(max_concurrency=6), api="tei", url=f"http://127.0.0.1:{port}", retry=fast_retry()) as emb:  # fmt: skip  # noqa: E501
                    result: list[np.ndarray] = []

                    async def run(
                        emb: embedkit.AsyncEmbedder = emb, result: list[np.ndarray] = result
                    ) -> None:
                        result.append(await emb.embed_many(corpus))

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(run)
                        if port == rr:
                            with anyio.fail_after(30):
                                while emb.stats().texts_sent < 2000:
                                    await anyio.sleep(0.01)
                            servers[1].kill()
                    stats = emb.stats()
                np.testing.assert_array_equal(result[0], expected(corpus))
                assert stats.failed_texts == 0
                if port == lc:
                    assert stats.retries == {}
                else:  # the batches nginx had sent to the dead replica came back as 502
                    assert stats.retries.get("502", 0) >= 1, stats.retries


@pytest.mark.asyncio
async def test_two_embedkit_serve_processes_as_replicas_answer_as_one_does(
    serve_url: str, tmp_path: Path
) -> None:
    """The session's `embedkit serve` and a second one (the packaged model, offline)."""
    port = free_port()
    argv = [sys.executable, "-m", "embedkit", "serve", "--port", str(port)]
    argv += ["--log-level", "warning"]
    second = f"http://127.0.0.1:{port}"
    corpus = [f"Sentence {i}: the {w} is on the table." for i, w in enumerate(WORDS * 30)]
    with running(argv, health_url=second + "/health", log=tmp_path / "serve-2.log"):
        async with embedkit.AsyncEmbedder(api="tei", url=serve_url) as one:
            alone = await one.embed_many(corpus)
        async with embedkit.AsyncEmbedder(api="tei", url=[serve_url, second]) as both:
            matrix = await both.embed_many(corpus)
            stats = both.stats()
    assert alone.shape == matrix.shape == (len(corpus), 384)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, alone, rtol=0, atol=1e-5)  # row i is text i's vector
    assert [e.url for e in stats.endpoints] == [serve_url + "/embed", second + "/embed"]
    assert all(e.requests > 0 and e.texts > 0 for e in stats.endpoints), stats.endpoints
    assert sum(e.texts for e in stats.endpoints) == len(corpus)
    assert all(e.errors == {} and e.failovers == 0 for e in stats.endpoints)


WORDS = ["cat", "book", "cup", "lamp", "phone", "key", "apple", "letter", "pen", "plate"]
