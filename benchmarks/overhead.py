"""Scenario 3, client overhead: CPU microseconds per text spent in the client process.

The server runs in another process and answers at once with a canned body (batch 32, dim
384), so everything `time.process_time()` sees in this process is the client's own work:
building requests, HTTP, scheduling, decoding. Next to it, the floor — decoding the same
body with nothing else (orjson + numpy; base64 + numpy) — and huggingface_hub's decode.
"""

from __future__ import annotations

import binascii
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson

import embedkit

from ._common import Scenario, at_most, sentences, server
from ._measure import measure
from ._peers import EmbedkitMany, HfHubBatched, HttpxBatched, body
from .breakdown import layers

NAME = "overhead"
BATCH = 32
#: embedkit's CPU per text over the floor's (decoding the same body with nothing around it)
TARGET_JSON_VS_FLOOR = 1.3
TARGET_BASE64_VS_FLOOR = 2.0


def _cpu_per_call(fn: Callable[[], Any], calls: int) -> float:
    """CPU seconds of one call: the least of 3 rounds of `calls` calls."""
    rounds = []
    for _ in range(3):
        start = time.process_time()
        for _ in range(calls):
            fn()
        rounds.append((time.process_time() - start) / calls)
    return min(rounds)


def raw_exchange(port: int, path: str, payload: bytes, calls: int) -> dict[str, float]:
    """CPU of one keep-alive request/response on a blocking socket: the syscalls alone."""
    request = (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (path.encode(), len(payload))
    ) + payload
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def once() -> None:
            sock.sendall(request)
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(rest) < length:
                rest += sock.recv(65536)

        for _ in range(20):
            once()
        cpu = time.process_time()
        for _ in range(calls):
            once()
        cpu = time.process_time() - cpu
    return {"cpu": cpu / calls}


def floors(hf_body: bytes, b64_body: bytes, calls: int) -> list[dict[str, Any]]:
    """Decoding the very bodies the server sends, with nothing around it."""

    def json_f64() -> np.ndarray:
        return np.array(orjson.loads(hf_body), dtype=np.float64).astype(np.float32)

    def json_f32() -> np.ndarray:
        return np.array(orjson.loads(hf_body), dtype=np.float32)

    def b64() -> np.ndarray:
        data = orjson.loads(b64_body)["data"]
        raw = binascii.a2b_base64("".join(item["embedding"] for item in data))
        return np.frombuffer(raw, dtype="<f4").reshape(len(data), -1)

    def hf_hub_decode() -> np.ndarray:
        # what AsyncInferenceClient.feature_extraction does with the body (minus its thread hop)
        return np.array(json.loads(hf_body.decode()), dtype="float32")

    rows = []
    for label, fn in (
        ("floor: orjson.loads + np.array(float64).astype(float32)", json_f64),
        ("floor: orjson.loads + np.array(float32)", json_f32),
        ("floor: orjson.loads + base64 decode + np.frombuffer", b64),
        ("huggingface_hub's decode: json.loads + np.array(float32)", hf_hub_decode),
    ):
        assert fn().shape == (BATCH, 384)
        rows.append({"client": label, "cpu_us_per_text": _cpu_per_call(fn, calls) / BATCH * 1e6})
    return rows


def run(opts: Any) -> Scenario:
    n = 3200 if opts.smoke else 32000
    texts = sentences(n, seed=3)
    scenario = Scenario(
        name=NAME,
        title=f"Client overhead: CPU µs per text, {n:,} texts, batch {BATCH}, dim 384, "
        "instant server",
        setup={
            "n": n,
            "batch": BATCH,
            "dim": 384,
            "server": "instant (canned body, other process)",
        },
        columns=["client", "path", "CPU µs/text", "texts/s (wall)"],
    )
    with server(slots=0) as srv:
        hf_url, oa_url = srv.hf_url, srv.openai_url
        with httpx.Client() as http:
            chunk = texts[:BATCH]
            hf_body = http.post(hf_url, content=body("hf", chunk)).content
            b64_body = http.post(
                oa_url + "/embeddings", content=body("openai", chunk, "base64")
            ).content
        makers: list[tuple[str, Callable[[], Any]]] = [
            (
                "JSON",
                lambda: EmbedkitMany(
                    hf_url, label="api='hf'", limits=embedkit.Limits(max_batch_size=BATCH)
                ),
            ),
            (
                "base64",
                lambda: EmbedkitMany(
                    oa_url,
                    api="openai",
                    label="api='openai'",
                    limits=embedkit.Limits(max_batch_size=BATCH),
                ),
            ),
            ("JSON", lambda: HttpxBatched(hf_url)),
            ("base64", lambda: HttpxBatched(oa_url, api="openai", encoding="base64")),
        ]
        if opts.have_hf_hub:
            makers.append(("JSON", lambda: HfHubBatched(hf_url)))
        measured: dict[str, list[dict[str, Any]]] = {}
        rounds = 1 if opts.smoke else 3
        for _ in range(rounds):
            for path, make in makers:
                result = measure(make, texts, srv)
                result["path"] = path
                measured.setdefault(result["client"] + path, []).append(result)
        for runs in measured.values():
            best = min(runs, key=lambda r: r["cpu_us_per_text"])
            cpu = best["cpu_us_per_text"]
            opts.log(f"    {best['client']} [{best['path']}]: {cpu:.1f} µs/text")
            scenario.rows.append(
                {
                    "client": best["client"],
                    "path": best["path"],
                    "CPU µs/text": cpu,
                    "texts/s (wall)": best["texts_per_s"],
                    "raw": {**best, "rounds_cpu_us": [r["cpu_us_per_text"] for r in runs]},
                }
            )
        opts.log("    embedkit's layers, bottom up")
        for row in layers(hf_url, oa_url, texts, rounds):
            scenario.rows.append(row)
            opts.log(f"      {row['client']} [{row['path']}]: {row.get('CPU µs/text', 0):.1f}")
        exchange = raw_exchange(
            srv.port, "/embed", body("hf", texts[:BATCH]), 100 if opts.smoke else 1000
        )
    scenario.rows.append(
        {
            "client": "floor: one raw-socket HTTP exchange per batch (send + recv, no parsing)",
            "path": "any",
            "CPU µs/text": exchange["cpu"] / BATCH * 1e6,
        }
    )
    for row in floors(hf_body, b64_body, 200 if opts.smoke else 2000):
        path = "base64" if "base64" in row["client"] else "JSON"
        scenario.rows.append(
            {"client": row["client"], "path": path, "CPU µs/text": row["cpu_us_per_text"]}
        )
    ours = {
        r["path"]: r["CPU µs/text"] for r in scenario.rows if r["client"].startswith("embedkit")
    }
    scenario.notes.append(
        f"Every CPU figure is the least of {rounds} rounds (as `timeit` reports): noise from other "
        "processes only ever adds CPU time. All rounds are in results.json."
    )
    scenario.notes.append(
        "process_time covers every thread of the client process (huggingface_hub decodes in a "
        "worker thread; that is counted). The server is another process and is not counted."
    )
    floor = {
        path: min(
            r["CPU µs/text"]
            for r in scenario.rows
            if r["client"].startswith("floor: orjson") and r["path"] == path
        )
        for path in ("JSON", "base64")
    }
    scenario.setup["floor_us_per_text"] = floor
    for path, api, target in (
        ("JSON", "hf", TARGET_JSON_VS_FLOOR),
        ("base64", "openai", TARGET_BASE64_VS_FLOOR),
    ):
        measured = ours.get(path)
        scenario.checks.append(
            at_most(
                f"overhead: embedkit {path} path (api {api}) ÷ its decode floor",
                measured / floor[path] if measured is not None else None,
                target,
                "×",
                note=f"{measured or 0:.1f} µs/text against a floor of {floor[path]:.1f}",
            )
        )
    return scenario
