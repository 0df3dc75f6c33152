"""Scenario `ray`: a corpus through `embedkit.ray.embed_dataset` on a local 2-CPU Ray cluster.

Two questions, on the benchmark server (its own process, as a TEI host would be):

* **Throughput.** The same corpus through one process's `embed_many` and through
  `embed_dataset` (2 Ray actors, together as many requests in flight as the single process),
  against a server whose cost model is the bottleneck (4 slots, 20 ms + 0.5 ms a text). The
  ratio is end to end (a dataset from memory to a materialized result, the actors' start
  included) and steady (first request to last answer at the server), because on 2 cores
  Ray's own start-up shows in the first.
* **One quota.** A server admitting R requests/s (429 beyond) and 4 workers: the fleet told
  R (one shared bucket), the fleet not told (a pace learned from 429s, shared), and each
  worker told R on its own (per-worker limits: what a fleet without a shared quota does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx

from embedkit import Limits, RetryPolicy

from ._common import Scenario, at_least, at_most, have, sentences, server

NAME = "ray"
TARGET_RATIO = 0.8
TARGET_RATE_SHARE = 95.0  # the brief: ≥ 95% of R for one process and for a fleet
TARGET_429_SHARE = 5.0


@contextlib.contextmanager
def _cluster() -> Iterator[Any]:
    import ray
    import ray.data

    ray.init(
        num_cpus=2,
        object_store_memory=256 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


class LastAnswer(threading.Thread):
    """Watches the load server's counters (polled from /stats); `last` is when it last
    answered a request with 200. The Ray tests use it too."""

    def __init__(self, root: str) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.last = 0.0
        self.samples: list[tuple[float, int]] = []  # (when, requests answered 200 by then)
        self.stopped = threading.Event()

    def run(self) -> None:
        ok = -1
        with httpx.Client() as client:
            while not self.stopped.wait(0.05):
                now = client.get(self.root + "/stats").json()["ok"]
                self.samples.append((time.monotonic(), now))
                if now != ok:
                    ok, self.last = now, time.monotonic()

    def rate_after(self, start: float) -> float:
        """Requests answered 200 per second from `start` to the last answer."""
        at, done = next((t, ok) for t, ok in self.samples if t >= start)
        final = self.samples[-1][1]
        return (final - done) / (self.last - at)


def _dataset(ray: Any, texts: list[str]) -> Any:
    return ray.data.from_items(
        [{"id": i, "text": t} for i, t in enumerate(texts)], override_num_blocks=16
    )


def _run_fleet(
    ray: Any, srv: Any, texts: list[str], per_worker_rate: float | None = None, **kw: Any
) -> dict[str, Any]:
    import embedkit.ray
    from embedkit.ray.dataset import HTTP_WORKER_CPUS
    from embedkit.ray.worker import _EmbedBatches

    srv.reset()
    watch = LastAnswer(srv.root)
    watch.start()
    ds = _dataset(ray, texts)
    started = time.monotonic()
    if per_worker_rate is None:
        out = embedkit.ray.embed_dataset(ds, api="tei", url=srv.root, **kw)
    else:  # each worker with its own bucket: the worker class without the fleet quota
        options: dict[str, Any] = {
            "api": "tei",
            "url": srv.root,
            "limits": dataclasses.replace(
                kw.get("limits") or Limits(), requests_per_second=per_worker_rate
            ),
            # at 4×R attempts, 3 in 4 are refused: the default 8 attempts would give up
            "retry": RetryPolicy(attempts=100),
        }
        out = ds.map_batches(
            _EmbedBatches,
            fn_constructor_kwargs={
                "column": "text",
                "output_column": "embedding",
                "flag_column": None,
                "on_bad": "fail",
                "options": options,
                "token": None,
                "quota": None,
                "inputs_quota": False,
            },
            compute=ray.data.ActorPoolStrategy(size=kw.get("workers", 4)),
            batch_size=kw.get("batch_size", 1024),
            batch_format="pyarrow",
            num_cpus=HTTP_WORKER_CPUS,
        )
    try:
        result = out.materialize()
    finally:
        watch.stopped.set()
        watch.join()
    wall = time.monotonic() - started
    if result.count() != len(texts):
        raise AssertionError(f"{result.count()} rows for {len(texts)} texts")
    stats = srv.stats()
    steady = watch.last - stats["first_request_monotonic"]
    return {
        "texts": len(texts),
        "seconds": wall,
        "steady_seconds": steady,
        "texts_per_s": len(texts) / wall,
        "steady_texts_per_s": len(texts) / steady,
        "requests": stats["requests"],
        "ok_requests": stats["ok"],
        "rejected_429": stats["rejected_429"],
        "ok_per_s": stats["ok"] / steady,
    }


def _run_single(srv: Any, texts: list[str], **kw: Any) -> dict[str, Any]:
    import embedkit

    async def go() -> float:
        async with embedkit.AsyncEmbedder(api="tei", url=srv.root, **kw) as emb:
            await emb.embed_many(["warm-up"])
            srv.reset()
            started = time.monotonic()
            matrix = await emb.embed_many(texts)
            assert matrix.shape[0] == len(texts)
            return time.monotonic() - started

    wall = anyio.run(go)
    stats = srv.stats()
    return {
        "texts": len(texts),
        "seconds": wall,
        "texts_per_s": len(texts) / wall,
        "requests": stats["requests"],
        "ok_requests": stats["ok"],
        "rejected_429": stats["rejected_429"],
    }


def run(opts: Any) -> Scenario:
    scenario = Scenario(
        name=NAME,
        title="Ray: embed_dataset on a 2-CPU local cluster vs one process; one quota for 4 workers",
        setup={},
        columns=["client", "texts/s", "steady texts/s", "ok req/s", "% of R", "429 share"],
    )
    if not have("ray"):
        scenario.notes.append("ray is not installed (pip install 'embedkit[ray]'): skipped")
        return scenario
    n = 4_000 if opts.smoke else 40_000
    rate = 100.0
    n_quota = int(rate * (2.0 if opts.smoke else 8.0) * 8)
    cost = {"latency_ms": 20.0, "per_text_ms": 0.5, "slots": 4, "dim": 384}
    scenario.setup = {
        "throughput_server": cost,
        "texts": n,
        "quota_rate": rate,
        "quota_texts": n_quota,
    }
    texts = sentences(n, seed=10)
    with _cluster() as ray:
        with server(**cost) as srv:
            single = _run_single(srv, texts, limits=Limits(max_concurrency=8))
            fleet = _run_fleet(
                ray,
                srv,
                texts,
                workers=2,
                limits=Limits(max_concurrency=4),
                batch_size=1024,
            )
        for label, result in (
            ("one process: embed_many() (8 in flight)", single),
            ("embed_dataset(): 2 actors × 4 in flight", fleet),
        ):
            opts.log(f"    {label}: {result['texts_per_s']:,.0f} texts/s")
            scenario.rows.append(
                {
                    "client": label,
                    "texts/s": result["texts_per_s"],
                    "steady texts/s": result.get("steady_texts_per_s"),
                    "raw": result,
                }
            )
        ratio = fleet["texts_per_s"] / single["texts_per_s"]
        steady_ratio = fleet["steady_texts_per_s"] / single["texts_per_s"]
        scenario.setup["ratio_end_to_end"] = ratio
        scenario.setup["ratio_steady"] = steady_ratio

        quota_texts = sentences(n_quota, seed=11)
        common: dict[str, Any] = {"workers": 4, "batch_size": 64}
        common["limits"] = Limits(max_batch_size=8, max_concurrency=4)
        runs = [
            ("fleet told R (one shared bucket)", {"requests_per_second": rate}, None),
            ("fleet not told (learns from 429s, shared)", {}, None),
            ("each worker told R (per-worker limits)", {}, rate),
        ]
        quota: dict[str, dict[str, Any]] = {}
        with server(rate=rate, dim=8) as srv:
            for label, extra, per_worker in runs:
                try:
                    result = _run_fleet(ray, srv, quota_texts, per_worker, **common, **extra)
                except Exception as exc:
                    if per_worker is None:
                        raise
                    # Without a shared quota the job can fail outright: a batch that keeps
                    # losing the race for the server's tokens runs out of attempts.
                    stats = srv.stats()
                    result = {
                        "failed": f"{type(exc).__name__} (a batch ran out of attempts)",
                        "texts": len(quota_texts),
                        "requests": stats["requests"],
                        "ok_requests": stats["ok"],
                        "rejected_429": stats["rejected_429"],
                        "texts_per_s": None,
                        "steady_texts_per_s": None,
                        "ok_per_s": None,
                    }
                    share_429 = 100 * stats["rejected_429"] / max(1, stats["requests"])
                    result["share_429"] = share_429
                    quota[label] = result
                    opts.log(f"    {label}: FAILED ({result['failed']}), {share_429:.1f}% 429")
                    scenario.rows.append(
                        {
                            "client": f"{label}: the job failed",
                            "texts/s": None,
                            "steady texts/s": None,
                            "ok req/s": None,
                            "% of R": "failed",
                            "429 share": f"{share_429:.1f}%",
                            "raw": result,
                        }
                    )
                    continue
                share = 100 * result["ok_per_s"] / rate
                share_429 = 100 * result["rejected_429"] / max(1, result["requests"])
                result["rate_share"], result["share_429"] = share, share_429
                quota[label] = result
                opts.log(f"    {label}: {share:.0f}% of R, {share_429:.1f}% 429")
                scenario.rows.append(
                    {
                        "client": label,
                        "texts/s": result["texts_per_s"],
                        "steady texts/s": result["steady_texts_per_s"],
                        "ok req/s": result["ok_per_s"],
                        "% of R": f"{share:.0f}%",
                        "429 share": f"{share_429:.1f}%",
                        "raw": result,
                    }
                )
    scenario.notes.append(
        f"embed_dataset vs one process: {ratio:.2f}× end to end (Ray starting its actors "
        f"included), {steady_ratio:.2f}× steady (first request to last answer)."
    )
    scenario.notes.append(
        "Per-worker limits let 4 workers attempt 4×R: the server refuses the excess with 429, "
        "and each refusal costs a round trip and a pause."
    )
    scenario.checks.append(
        at_least("ray: embed_dataset / one process, steady", steady_ratio, TARGET_RATIO, "×")
    )
    scenario.checks.append(
        at_least(
            "ray: embed_dataset / one process, end to end",
            ratio,
            TARGET_RATIO,
            "×",
            "includes Ray starting its actors, seconds on 2 busy cores, which a short corpus "
            "cannot amortize",
        )
    )
    for label in ("fleet told R (one shared bucket)", "fleet not told (learns from 429s, shared)"):
        row = quota[label]
        scenario.checks.append(
            at_least(
                f"ray: {label}, achieved share of R", row["rate_share"], TARGET_RATE_SHARE, "%"
            )
        )
        scenario.checks.append(
            at_most(f"ray: {label}, requests answered 429", row["share_429"], TARGET_429_SHARE, "%")
        )
    return scenario
