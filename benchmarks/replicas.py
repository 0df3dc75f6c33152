"""Scenario 7, replicas: one client over three replicas of speed 1×, 1×, ¼×.

Three cost-model servers: two with 4 slots, one with 1 slot (a quarter of the capacity),
each request costing 40 ms + 0.25 ms a text (6,000 texts/s in all at batches of 32). Every
row keeps the same total number of requests in flight (12):

* embedkit given the three URLs: caps 5/5/2 (`Endpoint(max_concurrency=...)`, about each
  replica's slots plus one), and at its defaults (4 per replica);
* embedkit and the hand-batched httpx loop (32 × 12) through nginx, round-robin and
  `least_conn`, over the same replicas;
* embedkit on each replica alone (12 in flight): their sum is the most the three can do.

Then a replica (a fast one) is SIGKILLed a third of the way through a run, for embedkit with
the three URLs and for both clients through nginx round-robin: texts lost, and what the
client had to retry. nginx does not pass a POST on to another server once it was sent, so
the batches in flight on the dead replica come back as 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import embedkit
from devtools.nginx import nginx_path, running_nginx, upstream_conf

from ._common import Scenario, Server, at_least, at_most, free_port, sentences, server
from ._measure import WARM_UP, measure
from ._peers import Client, EmbedkitMany, HttpxBatched

NAME = "replicas"
IN_FLIGHT = 12
FAST = {"latency_ms": 40.0, "per_text_ms": 0.25, "slots": 4}
SLOW = {"latency_ms": 40.0, "per_text_ms": 0.25, "slots": 1}
#: texts/s the three can do together at batches of 32 (4 + 4 + 1 slots × 32 / 48 ms): well
#: under what one client process decodes, so the servers, not the client, are the limit.
CAPACITY = 9 * 32 / 0.048
TARGET_SUM_SHARE = 0.95
TARGET_VS_NGINX = 1.0


class Replicas:
    """The three servers, on fixed ports so that one can be killed and started again."""

    def __init__(self) -> None:
        self.specs = [FAST, FAST, SLOW]
        self.ports = [free_port() for _ in self.specs]
        self.stack = contextlib.ExitStack()
        self.servers: list[Server] = []
        for i in range(len(self.specs)):
            self.servers.append(self._start(i))

    def _start(self, i: int) -> Server:
        return self.stack.enter_context(server(port=self.ports[i], **self.specs[i]))

    def kill(self, i: int) -> None:
        os.killpg(self.servers[i].process.pid, signal.SIGKILL)

    def restart(self, i: int) -> None:
        self.servers[i].process.wait(10)
        self.servers[i] = self._start(i)

    def urls(self) -> list[str]:
        return [s.hf_url for s in self.servers]

    def close(self) -> None:
        self.stack.close()


class CountingLoop(HttpxBatched):
    """The hand-batched loop, keeping going when a batch fails: its texts are lost (zero rows)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.failed = 0

    async def run(self, texts: Sequence[str]) -> np.ndarray:
        semaphore = asyncio.Semaphore(self.concurrency)
        out = np.zeros((len(texts), 384), dtype=np.float32)

        async def one(start: int) -> None:
            chunk = list(texts[start : start + self.batch])
            async with semaphore:
                try:
                    response = await self.client.post(self.url, content=_body(chunk))
                    response.raise_for_status()
                except Exception:
                    self.failed += len(chunk)
                    return
            out[start : start + len(chunk)] = np.asarray(response.json(), dtype=np.float32)

        await asyncio.gather(*(one(i) for i in range(0, len(texts), self.batch)))
        return out


def _body(chunk: list[str]) -> bytes:
    from ._peers import body

    return body("hf", chunk)


def run(opts: Any) -> Scenario:
    seconds = 1.0 if opts.smoke else 4.0
    scenario = Scenario(
        name=NAME,
        title=f"Replicas: three servers of speed 1×, 1×, ¼× ({IN_FLIGHT} requests in flight "
        "in every row)",
        setup={"fast": FAST, "slow": SLOW, "in_flight": IN_FLIGHT, "seconds": seconds},
        columns=["client", "texts/s", "vs sum of singles", "failed texts", "retries"],
    )
    if nginx_path() is None:
        scenario.notes.append("nginx is not installed: the scenario needs it (apt nginx-light)")
        return scenario
    corpus = sentences(int(CAPACITY * seconds), seed=7)
    reps = Replicas()
    tmp = Path(tempfile.mkdtemp(prefix="embedkit-nginx-"))
    rr, lc = free_port(), free_port()
    hosts = [f"127.0.0.1:{p}" for p in reps.ports]
    conf = (
        upstream_conf("rr", hosts, rr) + "\n" + upstream_conf("lc", hosts, lc, method="least_conn")
    )
    try:
        with running_nginx(tmp, conf, [rr, lc]):
            scenario.rows.extend(_throughput(opts, reps, rr, lc, corpus, scenario))
            scenario.rows.extend(_killed(opts, reps, rr, corpus, scenario))
    finally:
        reps.close()
    return scenario


def _row(
    result: dict[str, Any], total: float | None, failed: int = 0, retries: int = 0
) -> dict[str, Any]:
    share = result["texts_per_s"] / total if total else None
    return {
        "client": result["client"],
        "texts/s": result["texts_per_s"],
        "vs sum of singles": f"{share:.2f}×" if share is not None else "—",
        "failed texts": failed,
        "retries": retries,
        "raw": result,
    }


def _endpoints(urls: list[str], caps: list[int]) -> list[embedkit.Endpoint]:
    return [embedkit.Endpoint(u, max_concurrency=c) for u, c in zip(urls, caps, strict=True)]


def _throughput(
    opts: Any, reps: Replicas, rr: int, lc: int, corpus: list[str], scenario: Scenario
) -> list[dict[str, Any]]:
    urls = reps.urls()
    singles = []
    for i, url in enumerate(urls):
        n = len(corpus) // (2 if reps.specs[i] is FAST else 8)
        label = f"replica {i + 1} alone ({'1×' if reps.specs[i] is FAST else '¼×'})"
        result = measure(
            lambda url=url, label=label: EmbedkitMany(url, label=label, max_concurrency=IN_FLIGHT),
            corpus[:n],
        )
        opts.log(f"    {result['client']}: {result['texts_per_s']:,.0f} texts/s")
        singles.append(result)
    total = sum(r["texts_per_s"] for r in singles)
    makers: list[tuple[str, Callable[[], Client]]] = [
        ("3 URLs", lambda: EmbedkitMany(_endpoints(urls, [5, 5, 2]), label="3 URLs, caps 5/5/2")),  # type: ignore[arg-type]
        (
            "3 URLs default",
            lambda: EmbedkitMany(urls, label="3 URLs, 4 per replica", max_concurrency=4),
        ),  # type: ignore[arg-type]
    ]
    for name, port in (("round-robin", rr), ("least_conn", lc)):
        url = f"http://127.0.0.1:{port}/embed"
        makers.append(
            (
                f"nginx {name}",
                lambda url=url, name=name: EmbedkitMany(
                    url, label=f"via nginx {name}", max_concurrency=IN_FLIGHT
                ),
            )
        )
        makers.append(
            (
                f"nginx {name} loop",
                lambda url=url, name=name: _named(
                    HttpxBatched(url, concurrency=IN_FLIGHT),
                    f"httpx hand-batched loop (32 × {IN_FLIGHT}) via nginx {name}",
                ),
            )
        )
    results = {}
    for key, make in makers:
        result = measure(make, corpus)
        opts.log(f"    {result['client']}: {result['texts_per_s']:,.0f} texts/s")
        results[key] = result
    rows = [_row(results[k], total) for k, _ in makers] + [_row(r, total) for r in singles]
    best_nginx = max(r["texts_per_s"] for k, r in results.items() if k.startswith("nginx"))
    scenario.setup["sum_of_singles"] = total
    for key, label in (("3 URLs", "caps 5/5/2"), ("3 URLs default", "4 per replica")):
        rate = results[key]["texts_per_s"]
        scenario.checks.append(
            at_least(
                f"replicas: embedkit 3 URLs ({label}) vs the sum of single-replica throughputs",
                rate / total,
                TARGET_SUM_SHARE,
                "×",
            )
        )
        scenario.checks.append(
            at_least(
                f"replicas: embedkit 3 URLs ({label}) vs the best nginx row",
                rate / best_nginx,
                TARGET_VS_NGINX,
                "×",
            )
        )
    return rows


def _named(client: HttpxBatched, name: str) -> HttpxBatched:
    client.name = name
    return client


def _killed(
    opts: Any, reps: Replicas, rr: int, corpus: list[str], scenario: Scenario
) -> list[dict[str, Any]]:
    """A fast replica SIGKILLed a third of the way through each run, restarted after it."""
    urls = reps.urls()
    via = f"http://127.0.0.1:{rr}/embed"
    seconds = len(corpus) / CAPACITY
    clients: list[tuple[str, Callable[[], Client]]] = [
        (
            "embedkit",
            lambda: EmbedkitMany(_endpoints(urls, [5, 5, 2]), label="3 URLs, a replica killed"),
        ),  # type: ignore[arg-type]
        (
            "nginx",
            lambda: EmbedkitMany(
                via, label="via nginx round-robin, a replica killed", max_concurrency=IN_FLIGHT
            ),
        ),
        (
            "loop",
            lambda: _named(
                CountingLoop(via, concurrency=IN_FLIGHT),
                "httpx hand-batched loop via nginx round-robin, a replica killed",
            ),
        ),
    ]
    rows = []
    for key, make in clients:
        result, failed, retries = asyncio.run(_kill_run(make(), corpus, reps, seconds / 3))
        reps.restart(1)
        opts.log(
            f"    {result['client']}: {result['texts_per_s']:,.0f} texts/s, "
            f"{failed} failed texts, {retries} retries"
        )
        rows.append(_row(result, None, failed, retries))
        if key == "embedkit":
            scenario.checks.append(
                at_most(
                    "replicas: embedkit 3 URLs, texts lost when a replica is killed",
                    failed,
                    0,
                    "texts",
                )
            )
        else:
            scenario.notes.append(f"{result['client']}: {failed} texts lost, {retries} retries.")
    return rows


async def _kill_run(
    client: Client, texts: list[str], reps: Replicas, after: float
) -> tuple[dict[str, Any], int, int]:
    import time

    async with client:
        await client.run(WARM_UP)
        started = time.perf_counter()
        task = asyncio.create_task(client.run(texts))
        await asyncio.sleep(after)
        reps.kill(1)
        failed = 0
        try:
            await task
        except Exception:
            failed = len(texts)  # the call failed as a whole
        wall = time.perf_counter() - started
        retries = 0
        if isinstance(client, EmbedkitMany):
            stats = client.emb.stats()
            failed = max(failed, stats.failed_texts)
            retries = sum(stats.retries.values())
        elif isinstance(client, CountingLoop):
            failed = client.failed
    return (
        {
            "client": client.name,
            "texts": len(texts),
            "seconds": wall,
            "texts_per_s": len(texts) / wall,
        },
        failed,
        retries,
    )
