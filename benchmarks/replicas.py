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
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import embedkit
from devtools.nginx import nginx_path, running_nginx, upstream_conf

from ._common import Scenario, Server, at_least, at_most, free_port, sentences, server
from ._measure import WARM_UP, head_to_head, measure
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
    if getattr(opts, "urls", None):
        return _own(opts, list(opts.urls))
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
    hosts = [f"127.0.0.1:{p}" for p in reps.ports]
    labels = [
        f"replica {i + 1} alone ({'1×' if s is FAST else '¼×'})" for i, s in enumerate(reps.specs)
    ]
    sizes = [len(corpus) // (2 if s is FAST else 8) for s in reps.specs]
    tuned = ("3 URLs, caps 5/5/2", [5, 5, 2])
    try:
        with _nginx(hosts, "/embed") as (rr, lc):
            scenario.rows.extend(
                _throughput(opts, reps.urls(), rr, lc, corpus, scenario, labels, sizes, tuned)
            )
            scenario.rows.extend(_killed(opts, reps, rr, corpus, scenario))
    finally:
        reps.close()
    return scenario


@contextlib.contextmanager
def _nginx(hosts: list[str], path: str) -> Iterator[tuple[str, str]]:
    """nginx round-robin and least_conn over `hosts`: yields the two URLs to send to."""
    rr, lc = free_port(), free_port()
    conf = (
        upstream_conf("rr", hosts, rr) + "\n" + upstream_conf("lc", hosts, lc, method="least_conn")
    )
    with running_nginx(Path(tempfile.mkdtemp(prefix="embedkit-nginx-")), conf, [rr, lc]):
        yield f"http://127.0.0.1:{rr}{path}", f"http://127.0.0.1:{lc}{path}"


def _own(opts: Any, given: list[str]) -> Scenario:
    """`--url A --url B ...`: the same rows over your own replicas (HF-style POST, TEI's
    /embed for a bare root); no replica is killed, and answers are not checked."""
    urls = [
        u.rstrip("/") + ("" if urllib.parse.urlsplit(u).path.strip("/") else "/embed")
        for u in given
    ]
    seconds = 2.0 if opts.smoke else 10.0
    scenario = Scenario(
        name=NAME,
        title=f"Replicas: your {len(urls)} servers "
        f"({4 * len(urls)} requests in flight in every row)",
        setup={"urls": [u.split("?")[0] for u in urls], "in_flight": 4 * len(urls)},
        columns=["client", "texts/s", "vs sum of singles", "failed texts", "retries"],
    )
    corpus = sentences(int(2000 * seconds), seed=7)
    labels = [f"{u} alone" for u in urls]
    sizes = [len(corpus) // len(urls)] * len(urls)
    parts = [urllib.parse.urlsplit(u) for u in urls]
    if nginx_path() is None or len({p.path for p in parts}) != 1:
        scenario.notes.append("no nginx rows: nginx is not installed, or the URLs' paths differ")
        scenario.rows.extend(
            _throughput(opts, urls, None, None, corpus, scenario, labels, sizes, None, check=False)
        )
        return scenario
    with _nginx([p.netloc for p in parts], parts[0].path) as (rr, lc):
        scenario.rows.extend(
            _throughput(opts, urls, rr, lc, corpus, scenario, labels, sizes, None, check=False)
        )
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
    opts: Any,
    urls: list[str],
    rr: str | None,
    lc: str | None,
    corpus: list[str],
    scenario: Scenario,
    labels: list[str],
    sizes: list[int],
    tuned: tuple[str, list[int]] | None,
    *,
    check: bool = True,
) -> list[dict[str, Any]]:
    """Each replica alone, embedkit over all of them, and both clients through nginx."""
    in_flight = 4 * len(urls)
    singles = []
    for url, label, n in zip(urls, labels, sizes, strict=True):
        result = measure(
            lambda url=url, label=label: EmbedkitMany(
                url, label=label, limits=embedkit.Limits(max_concurrency=in_flight)
            ),
            corpus[:n],
            check=check,
        )
        opts.log(f"    {result['client']}: {result['texts_per_s']:,.0f} texts/s")
        singles.append(result)
    total = sum(r["texts_per_s"] for r in singles)
    k = len(urls)
    makers: list[tuple[str, Callable[[], Client]]] = []
    if tuned is not None:
        label, caps = tuned
        makers.append(
            (label, lambda: EmbedkitMany(_endpoints(urls, caps), label=label))  # type: ignore[arg-type]
        )
    makers.append(
        (
            f"{k} URLs, 4 per replica",
            lambda: EmbedkitMany(
                urls,  # type: ignore[arg-type]
                label=f"{k} URLs, 4 per replica",
                limits=embedkit.Limits(max_concurrency=4),
            ),  # type: ignore[arg-type]
        )
    )
    for name, url in (("round-robin", rr), ("least_conn", lc)):
        if url is None:
            continue
        makers.append(
            (
                f"nginx {name}",
                lambda url=url, name=name: EmbedkitMany(
                    url,
                    label=f"via nginx {name}",
                    limits=embedkit.Limits(max_concurrency=in_flight),
                ),
            )
        )
        makers.append(
            (
                f"nginx {name} loop",
                lambda url=url, name=name: _named(
                    HttpxBatched(url, concurrency=in_flight),
                    f"httpx hand-batched loop (32 × {in_flight}) via nginx {name}",
                ),
            )
        )
    # Alternating rounds (median kept): on a shared machine, drift hits every row alike.
    measured = head_to_head(
        [make for _, make in makers],
        corpus,
        rounds=1 if opts.smoke else 3,
        check=check,
        log=opts.log,
    )
    results = {key: result for (key, _), result in zip(makers, measured, strict=True)}
    rows = [_row(results[k], total) for k, _ in makers] + [_row(r, total) for r in singles]
    nginx_rates = [r["texts_per_s"] for key, r in results.items() if key.startswith("nginx")]
    best_nginx = max(nginx_rates) if nginx_rates else None
    scenario.setup["sum_of_singles"] = total
    for key, _ in makers:
        if key.startswith("nginx"):
            continue
        rate = results[key]["texts_per_s"]
        scenario.checks.append(
            at_least(
                f"replicas: embedkit {key} vs the sum of single-replica throughputs",
                rate / total,
                TARGET_SUM_SHARE,
                "×",
            )
        )
        if best_nginx is not None:
            scenario.checks.append(
                at_least(
                    f"replicas: embedkit {key} vs the best nginx row",
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
    opts: Any, reps: Replicas, rr: str, corpus: list[str], scenario: Scenario
) -> list[dict[str, Any]]:
    """A fast replica SIGKILLed a third of the way through each run, restarted after it."""
    urls = reps.urls()
    via = rr
    seconds = len(corpus) / CAPACITY
    clients: list[tuple[str, Callable[[], Client]]] = [
        (
            "embedkit",
            lambda: EmbedkitMany(_endpoints(urls, [5, 5, 2]), label="3 URLs, a replica killed"),
        ),  # type: ignore[arg-type]
        (
            "nginx",
            lambda: EmbedkitMany(
                via,
                label="via nginx round-robin, a replica killed",
                limits=embedkit.Limits(max_concurrency=IN_FLIGHT),
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
