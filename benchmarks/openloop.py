"""Scenario 7, open loop: a web app's traffic, texts arriving at random moments.

A Poisson process of single-text calls, each in its own task (as a web request would be),
at 10%, 50%, 80% and 95% of the cost-model server's capacity at batch 32. Arrivals do not
wait for answers: a client that cannot keep up builds a backlog, which is reported (achieved
< offered, backlog at the end), never timed out silently.

Latency is measured from the *scheduled* arrival time to the row in hand, so a client (or
the harness) that falls behind is charged for it. Arrivals are released by a timer thread
with ~0.1 ms precision (asyncio's own timers round up to the millisecond); the harness's own
lag is recorded per run.

Peers, at every load:
* huggingface_hub, one `feature_extraction(text)` per call under a `Semaphore(8)`;
* a timer-based micro-batcher written here as mixedbread's `batched` and Triton's
  `max_queue_delay` work: collect up to 32 texts or until the first has waited `max_wait`
  (5 ms, 20 ms), then send, at most 8 requests in flight (httpx + orjson + numpy);
* embedkit at its defaults: `await emb.embed(text)`.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np

from ._common import NEIGHBOURS, PEER_TIMEOUT, Scenario, at_least, at_most, sentences, server
from ._peers import HEADERS, body, decode, embedder, hf_hub_client
from ._server import Timer

NAME = "openloop"
#: The issue's server: 4 slots, 10 ms + 0.2 ms per text. Its per-text cost is higher than
#: `coalescing`'s, so 95% of its capacity (~7,400 arrivals/s, each its own task) leaves the
#: Python client's own CPU out of the way on 2 cores.
COST_MODEL = {"latency_ms": 10.0, "per_text_ms": 0.2, "slots": 4}
LOADS = (0.10, 0.50, 0.80, 0.95)
SECONDS = 10.0
#: a client whose backlog passes this many texts has shown it cannot keep up: stop arriving
BACKLOG_CAP = 20_000
TARGET_IDLE_ADDED_MS = 0.3
TARGET_P99_VS_BATCH32 = 3.0
TARGET_KEEP_UP = 0.97

Call = Callable[[str], Awaitable[Any]]


class TimerBatcher:
    """`batched`-style micro-batching: up to `batch` texts or `max_wait` s, then send."""

    def __init__(self, url: str, *, max_wait: float, batch: int = 32, concurrency: int = 8) -> None:
        self.url = url
        self.max_wait = max_wait
        self.batch = batch
        self.concurrency = concurrency
        self.name = (
            f"timer micro-batcher ({batch} or {max_wait * 1000:g} ms, {concurrency} in flight)"
        )

    async def __aenter__(self) -> TimerBatcher:
        self.client = httpx.AsyncClient(timeout=PEER_TIMEOUT, headers=HEADERS)
        self.items: deque[tuple[float, str, asyncio.Future[np.ndarray]]] = deque()
        self.arrived = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.collector = asyncio.get_running_loop().create_task(self.collect())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.collector.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(self.collector, *self.tasks, return_exceptions=True)
        await self.client.aclose()

    async def call(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self.items.append((loop.time(), text, future))
        if len(self.items) == 1 or len(self.items) >= self.batch:
            self.arrived.set()
        return await future

    async def collect(self) -> None:
        loop = asyncio.get_running_loop()
        semaphore = asyncio.Semaphore(self.concurrency)
        items = self.items
        while True:
            while not items:
                self.arrived.clear()
                await self.arrived.wait()
            deadline = items[0][0] + self.max_wait
            while len(items) < self.batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            chunk = [items.popleft() for _ in range(min(self.batch, len(items)))]
            await semaphore.acquire()
            task = loop.create_task(self.send(chunk, semaphore))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def send(self, chunk: list[Any], semaphore: asyncio.Semaphore) -> None:
        try:
            response = await self.client.post(self.url, content=body("hf", [c[1] for c in chunk]))
            response.raise_for_status()
            matrix = decode("hf", response.content)
            for (_, _, future), row in zip(chunk, matrix, strict=True):
                if not future.done():
                    future.set_result(row)
        except Exception as exc:
            for _, _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
        finally:
            semaphore.release()


class HfHubEach:
    """huggingface_hub: one `feature_extraction(text)` per call, at most 8 in flight."""

    name = "huggingface_hub, 1 text/call, semaphore(8)"

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> HfHubEach:
        self.client = hf_hub_client(self.url)
        await self.client.__aenter__()
        self.semaphore = asyncio.Semaphore(8)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.__aexit__(*exc)

    async def call(self, text: str) -> Any:
        async with self.semaphore:
            return await self.client.feature_extraction(text)


class EmbedkitEmbed:
    """embedkit at its defaults: `await emb.embed(text)`."""

    name = "embedkit embed() per arrival"

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> EmbedkitEmbed:
        self.emb = embedder(self.url)
        await self.emb.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.emb.__aexit__(*exc)

    async def call(self, text: str) -> Any:
        return await self.emb.embed(text)


class GcMeter:
    """The garbage collector's passes while a client runs, and what drove them.

    `objects` is the GC-tracked objects allocated net of those freed between passes (the
    count that triggers a young pass: `gc.get_count()[0]` summed at each pass's start), so
    a caller's short-lived objects that die before a pass do not count, and those still
    waiting do: the ones that get promoted and make the full passes long.
    """

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.full_ms: list[float] = []
        self.objects = 0
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self.objects += gc.get_count()[0]
            self.passes[info["generation"]] += 1
        elif info["generation"] == 2:
            self.full_ms.append((time.perf_counter() - self._started) * 1e3)

    def __enter__(self) -> GcMeter:
        self._first = gc.get_count()[0]
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)
        self.objects += gc.get_count()[0] - self._first


def arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Poisson arrival times (s from the start), the same for a given seed."""
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def _drive(
    call: Call, texts: list[str], times: list[float], seconds: float
) -> dict[str, Any]:
    """Release each text at its arrival time in its own task; time each to its row."""
    loop = asyncio.get_running_loop()
    timer = Timer(loop)
    n = len(times)
    latency = [float("nan")] * n
    finished_at = [float("nan")] * n
    lag: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    done = 0
    failures = 0

    async def one(k: int, due: float) -> None:
        nonlocal done, failures
        try:
            row = await call(texts[k])
        except Exception:
            failures += 1  # counted, reported; the call is not timed
            return
        now = time.perf_counter()
        if np.shape(row)[-1] != 384:
            raise AssertionError(f"row of shape {np.shape(row)}")
        latency[k] = now - due
        finished_at[k] = now - start
        done += 1

    backlog_trace: list[tuple[float, int]] = []
    next_trace = 0.0
    start = time.perf_counter()
    released = 0
    stopped_at: float | None = None
    while released < n:
        now = time.perf_counter() - start
        while released < n and times[released] <= now:
            task = loop.create_task(one(released, start + times[released]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            lag.append(now - times[released])
            released += 1
        if now >= next_trace:
            backlog_trace.append((round(now, 3), released - done))
            next_trace += 0.1
            if released - done > BACKLOG_CAP:
                stopped_at = now
                break
        if released < n:
            wait = times[released] - (time.perf_counter() - start)
            if wait > 0:
                await timer.sleep(wait)
            else:
                await asyncio.sleep(0)
    window = stopped_at if stopped_at is not None else seconds
    backlog_end = released - done
    # Let a client that kept up finish what is in flight (a few service times); a client
    # with a backlog gets the same grace, then its unfinished calls are counted as such.
    grace_end = time.perf_counter() + 2.0
    while tasks and time.perf_counter() < grace_end:
        await asyncio.sleep(0.01)
    unfinished = len(tasks)
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cut = time.perf_counter()
    # achieved: completions in the window after its first 20% (start-up), per second
    warm = 0.2 * window
    achieved = sum(1 for f in finished_at[:released] if warm <= f <= window) / (window - warm)
    samples = []
    for k in range(released):
        if latency[k] == latency[k]:  # not NaN
            samples.append((latency[k], False))
        else:  # unfinished: its age at the cut is a lower bound on its latency
            samples.append((cut - (start + times[k]), True))
    samples.sort()
    return {
        "released": released,
        "completed": done,
        "failures": failures,
        "window_s": window,
        "stopped_early_s": stopped_at,
        "achieved_per_s": achieved,
        "backlog_end": backlog_end,
        "backlog_trace": backlog_trace,
        "unfinished": unfinished,
        "samples": samples,
        "harness_lag_p50_ms": float(np.percentile(lag, 50)) * 1e3 if lag else None,
        "harness_lag_p99_ms": float(np.percentile(lag, 99)) * 1e3 if lag else None,
    }


def _gc_cell(r: dict[str, Any]) -> str:
    """Young / middle / full passes per 10 s, and the longest full pass."""
    young, middle, full = (round(n) for n in r["gc_passes_per_10s"])
    longest = max(r["gc_full_ms"], default=0.0)
    return f"{young}/{middle}/{full}" + (f" (full ≤ {longest:.0f} ms)" if full else "")


def _pct(samples: list[tuple[float, bool]], q: float) -> tuple[float, bool]:
    """Nearest-rank percentile in ms, and whether it is a lower bound (an unfinished call)."""
    if not samples:
        return float("nan"), False
    value, unfinished = samples[min(len(samples) - 1, int(q / 100 * len(samples)))]
    return value * 1e3, unfinished


async def _run_one(
    make: Callable[[], Any], rate: float, seconds: float, seed: int
) -> dict[str, Any]:
    times = arrivals(rate, seconds, seed)
    texts = sentences(len(times), seed=seed)
    async with make() as client:
        for warm in ("A warm-up sentence opens the first connection.", "And a second one."):
            await client.call(warm)
        NEIGHBOURS.start()
        cpu = time.process_time()
        with GcMeter() as meter:
            result = await _drive(client.call, texts, times, seconds)
        released = max(1, result["released"])
        result["cpu_us_per_text"] = (time.process_time() - cpu) / released * 1e6
        result["gc_objects_per_text"] = meter.objects / released
        result["gc_passes_per_10s"] = [10.0 * n / seconds for n in meter.passes]
        result["gc_full_ms"] = meter.full_ms
        result["neighbour_cores"] = NEIGHBOURS.stop()
        result["client"] = client.name
    return result


def run(opts: Any) -> Scenario:
    loads = (0.10, 0.80) if opts.smoke else LOADS
    seconds = 1.0 if opts.smoke else SECONDS
    scenario = Scenario(
        name=NAME,
        title=f"Open loop: Poisson arrivals of single-text calls, {seconds:g} s per load",
        setup={"server": dict(COST_MODEL), "loads": list(loads), "seconds": seconds, "dim": 384},
        columns=[
            "load",
            "client",
            "offered/s",
            "achieved/s",
            "% offered",
            "backlog at end",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "mean batch",
            "objects/text",
            "GC passes/10 s",
        ],
    )
    with server(**COST_MODEL) as srv:
        cap32 = srv.capacity(32)
        assert cap32 is not None
        one_text_ms = COST_MODEL["latency_ms"] + COST_MODEL["per_text_ms"]
        batch32_ms = COST_MODEL["latency_ms"] + 32 * COST_MODEL["per_text_ms"]
        scenario.setup["capacity_batch_32"] = cap32
        scenario.setup["service_ms"] = {"batch_1": one_text_ms, "batch_32": batch32_ms}
        url = srv.hf_url
        makers: list[Callable[[], Any]] = []
        if opts.have_hf_hub:
            makers.append(lambda: HfHubEach(url))
        makers += [
            lambda: TimerBatcher(url, max_wait=0.005),
            lambda: TimerBatcher(url, max_wait=0.020),
            lambda: EmbedkitEmbed(url),
        ]
        results: dict[tuple[float, str], dict[str, Any]] = {}
        for i, load in enumerate(loads):
            rate = load * cap32
            for make in makers:
                NEIGHBOURS.wait_quiet()
                srv.reset()
                r = asyncio.run(_run_one(make, rate, seconds, seed=700 + i))
                stats = srv.stats()
                r["requests"] = stats["requests"]
                r["mean_batch"] = stats["texts"] / stats["requests"] if stats["requests"] else 0.0
                r["offered_per_s"] = rate
                r["load"] = load
                p = {q: _pct(r["samples"], q) for q in (50, 90, 99)}
                r["p50_ms"], r["p90_ms"], r["p99_ms"] = (p[q][0] for q in (50, 90, 99))
                r["p_lower_bound"] = {f"p{q}": p[q][1] for q in (50, 90, 99)}
                del r["samples"]
                results[(load, r["client"])] = r
                opts.log(
                    f"    {100 * load:.0f}% {r['client']}: achieved {r['achieved_per_s']:,.0f}/"
                    f"{rate:,.0f}/s, p50 {p[50][0]:.1f} p99 {p[99][0]:.1f} ms, backlog "
                    f"{r['backlog_end']:,}"
                    + (
                        f" (stopped at {r['stopped_early_s']:.1f} s)"
                        if r["stopped_early_s"]
                        else ""
                    )
                )

                def cell(q: int, p: dict[int, Any] = p) -> str:
                    value, bound = p[q]
                    return f"≥ {value:,.0f}" if bound else f"{value:.1f}"

                scenario.rows.append(
                    {
                        "load": f"{100 * load:.0f}%",
                        "client": r["client"],
                        "offered/s": rate,
                        "achieved/s": r["achieved_per_s"],
                        "% offered": f"{100 * r['achieved_per_s'] / rate:.0f}%",
                        "backlog at end": r["backlog_end"],
                        "p50 ms": cell(50),
                        "p90 ms": cell(90),
                        "p99 ms": cell(99),
                        "mean batch": r["mean_batch"],
                        "objects/text": f"{r['gc_objects_per_text']:.1f}",
                        "GC passes/10 s": _gc_cell(r),
                        "raw": r,
                    }
                )
    scenario.notes.append(
        f"Server cost model: {COST_MODEL['latency_ms']:g} ms + {COST_MODEL['per_text_ms']:g} "
        f"ms/text per request, {COST_MODEL['slots']} slots: {cap32:,.0f} texts/s at batch 32; "
        f"service time {one_text_ms:g} ms for one text, {batch32_ms:g} ms for 32. Latency runs "
        "from each call's scheduled arrival to its row in hand; '≥' marks a percentile that "
        "falls on a call still unfinished when the run was cut (its age then)."
    )
    scenario.notes.append(
        "objects/text: GC-tracked objects allocated per arrival, net of those freed before "
        "the next collector pass (the count that triggers passes; the client's process, "
        "harness included). GC passes/10 s: young/middle/full collector passes, and the "
        "longest full pass."
    )
    scenario.notes.append(
        f"A client whose backlog passed {BACKLOG_CAP:,} texts was stopped there: it cannot keep "
        "up (achieved and backlog are then over the time it ran)."
    )
    ours = "embedkit embed() per arrival"
    low, mid, high = loads[0], (0.80 if 0.80 in loads else loads[-1]), loads[-1]
    r10 = results.get((low, ours))
    scenario.checks.append(
        at_most(
            f"openloop: embedkit p50 at {100 * low:.0f}% load − one-text service time",
            r10["p50_ms"] - one_text_ms if r10 else None,
            TARGET_IDLE_ADDED_MS,
            "ms",
            note=f"one-text service time {one_text_ms:g} ms",
        )
    )
    r80 = results.get((mid, ours))
    scenario.checks.append(
        at_most(
            f"openloop: embedkit p99 at {100 * mid:.0f}% load ÷ batch-32 service time",
            r80["p99_ms"] / batch32_ms if r80 else None,
            TARGET_P99_VS_BATCH32,
            "×",
        )
    )
    timers = [r for (ld, name), r in results.items() if ld == mid and name.startswith("timer")]
    best_timer = min((t["p99_ms"] for t in timers), default=None)
    scenario.checks.append(
        at_most(
            f"openloop: embedkit p99 at {100 * mid:.0f}% load ÷ best timer batcher's p99",
            r80["p99_ms"] / best_timer if r80 and best_timer else None,
            1.0,
            "×",
        )
    )
    r95 = results.get((high, ours))
    scenario.checks.append(
        at_least(
            f"openloop: embedkit achieved ÷ offered at {100 * high:.0f}% load",
            r95["achieved_per_s"] / r95["offered_per_s"] if r95 else None,
            TARGET_KEEP_UP,
            "×",
        )
    )
    return scenario
