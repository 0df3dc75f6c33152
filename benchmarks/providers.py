"""Scenario: what `kind=` and `dtype=` cost, against a hosted-API-shaped cost model.

A Voyage-shaped server (answers by `index`, `input_type` per request) runs in this process
behind `httpx.MockTransport`, with the coalescing scenario's cost model (10 ms a request,
0.05 ms a text, 4 requests at once) as sleeps, so only the client spends CPU. N concurrent
single-text `embed()` calls arrive at once:

* all of one kind (the baseline);
* half "query", half "document", interleaved: each kind has its own scheduler, sharing one
  concurrency limit, so requests split by kind; the question is what that costs;
* `dtype="int8"` and `"ubinary"` against an Ollama-shaped server (floats only), quantised
  by embedkit: the CPU it adds a text is measured apart, on 32-row batches.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import anyio
import httpx
import numpy as np

from embedkit import AsyncEmbedder, Connection, Limits
from embedkit._quantize import carried

from ._common import Scenario, at_least, at_most, sentences

NAME = "providers"
COST_MODEL = {"latency_ms": 10.0, "per_text_ms": 0.05, "slots": 4}
DIM = 384
#: mixed kinds vs one kind, texts/s
TARGET_MIXED_VS_ONE = 0.9
#: client-side int8 quantisation, CPU µs a text at dim 384
TARGET_INT8_US = 3.0


def _server(api: str, requests: list[int]) -> httpx.MockTransport:
    slots = anyio.Semaphore(int(COST_MODEL["slots"]))
    row = np.linspace(-1, 1, DIM, dtype=np.float32).tolist()

    async def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        texts = body["input"]
        requests.append(len(texts))
        async with slots:
            await anyio.sleep(
                (COST_MODEL["latency_ms"] + COST_MODEL["per_text_ms"] * len(texts)) / 1000
            )
        if api == "voyage":
            data = [{"embedding": row, "index": i} for i in range(len(texts))]
            return httpx.Response(200, json={"data": data[::-1], "usage": {"total_tokens": 1}})
        return httpx.Response(200, json={"embeddings": [row] * len(texts)})

    return httpx.MockTransport(handle)


async def _burst(api: str, texts: list[str], mixed: bool, dtype: str) -> dict[str, Any]:
    requests: list[int] = []
    emb = AsyncEmbedder(
        "m",
        api=api,  # type: ignore[arg-type]
        url="http://bench.test/v1" if api == "voyage" else "http://bench.test",
        connection=Connection(transport=_server(api, requests)),
        limits=Limits(max_concurrency=int(COST_MODEL["slots"])),
        dtype=dtype,  # type: ignore[arg-type]
        retry=None,
    )
    started = time.perf_counter()
    cpu = time.process_time()
    async with emb, anyio.create_task_group() as tg:
        for i, text in enumerate(texts):
            kind = ("query" if i % 2 else "document") if mixed else None
            tg.start_soon(functools.partial(emb.embed, text, kind=kind))  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    return {
        "requests": len(requests),
        "mean batch": sum(requests) / len(requests),
        "texts/s": len(texts) / seconds,
        "CPU µs/text": (time.process_time() - cpu) / len(texts) * 1e6,
    }


def _quantise_cost(dtype: str, rounds: int) -> float:
    """CPU µs a text that `carried` adds, on 32-row batches of dim 384."""
    batch = np.random.default_rng(0).normal(size=(32, DIM)).astype(np.float32)
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(rounds):
            carried(batch, dtype)  # type: ignore[arg-type]
        best = min(best, (time.process_time() - start) / rounds / 32 * 1e6)
    return best


def run(opts: Any) -> Scenario:
    n = opts.n or (400 if opts.smoke else 4000)
    texts = sentences(n, seed=21)
    scenario = Scenario(
        name=NAME,
        title=f"Providers: {n:,} concurrent embed() calls, by kind and dtype",
        setup={"n": n, "server": dict(COST_MODEL), "dim": DIM},
        columns=["client", "requests", "mean batch", "texts/s", "CPU µs/text"],
    )
    cases = [
        ("voyage, one kind", "voyage", False, "float32"),
        ("voyage, query/document interleaved", "voyage", True, "float32"),
        ("ollama, float32", "ollama", False, "float32"),
        ("ollama, dtype=int8 (quantised here)", "ollama", False, "int8"),
        ("ollama, dtype=ubinary (quantised here)", "ollama", False, "ubinary"),
    ]
    results = {}
    for label, api, mixed, dtype in cases:
        row = anyio.run(_burst, api, texts, mixed, dtype)
        results[label] = row
        opts.log(f"    {label}: {row['requests']} requests, {row['texts/s']:,.0f} texts/s")
        scenario.rows.append({"client": label, **row})
    one, mixed = results[cases[0][0]], results[cases[1][0]]
    ratio = mixed["texts/s"] / one["texts/s"]
    rounds = 200 if opts.smoke else 2000
    int8_us, bits_us = _quantise_cost("int8", rounds), _quantise_cost("ubinary", rounds)
    scenario.notes.append(
        f"Interleaved kinds send {mixed['requests']} requests where one kind sends "
        f"{one['requests']}; throughput ratio {ratio:.2f}. Client-side quantisation, CPU a "
        f"text at dim {DIM}: int8 {int8_us:.2f} µs, ubinary {bits_us:.2f} µs."
    )
    scenario.checks.append(
        at_least("providers: mixed kinds ÷ one kind, texts/s", ratio, TARGET_MIXED_VS_ONE, "×")
    )
    scenario.checks.append(
        at_most("providers: client-side int8 quantisation", int8_us, TARGET_INT8_US, "µs/text")
    )
    return scenario
