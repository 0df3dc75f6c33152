"""The process whose memory `memory.py` measures: a corpus file → embedkit → a file.

    python -m benchmarks._memory_child MODE CORPUS OUT URL N

MODE `stream` reads the corpus lazily (one line at a time) through `embed_stream` and writes
each block as it arrives (plain writes, no memory map, so the output file never counts as
this process's memory). MODE `file` calls `embedkit.aembed_file(CORPUS, OUT)`: the library's
resumable engine, into an .npy or a .parquet by OUT's suffix. It prints one JSON line: texts,
seconds, RSS after imports and the peak RSS (VmHWM).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator

import numpy as np
import orjson
import psutil

from ._peers import embedder

DIM = 384


def lines(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as corpus:
        for line in corpus:
            yield line.rstrip("\n")


def high_water_mark() -> float:
    """Peak RSS of this process (bytes), from /proc/self/status VmHWM.

    Not `ru_maxrss`: on Linux it survives exec, so a child would report its parent's RSS.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def main(mode: str, corpus: str, out: str, url: str, n: int) -> dict[str, float]:
    if mode == "file":
        import pyarrow.parquet  # noqa: F401  (imported before the baseline, as numpy is)

        import embedkit

        baseline = psutil.Process().memory_info().rss
        started = time.perf_counter()
        async with embedder(url, api="openai") as emb:
            result = await embedkit.aembed_file(corpus, out, embedder=emb, overwrite=True)
        if result.rows != n:
            raise SystemExit(f"wrote {result.rows} rows, expected {n}")
        return {
            "texts": result.rows,
            "seconds": time.perf_counter() - started,
            "baseline_rss_mb": baseline / 2**20,
            "peak_rss_mb": high_water_mark() / 2**20,
        }
    baseline = psutil.Process().memory_info().rss
    started = time.perf_counter()
    written = 0
    with open(out, "wb") as npy:
        np.lib.format.write_array_header_1_0(
            npy, {"descr": "<f4", "fortran_order": False, "shape": (n, DIM)}
        )
        async with embedder(url, api="openai") as emb:
            async for start, block in emb.embed_stream(lines(corpus)):
                assert start == written
                npy.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
                written += block.shape[0]
    if written != n:
        raise SystemExit(f"wrote {written} rows, expected {n}")
    peak = high_water_mark()
    return {
        "texts": written,
        "seconds": time.perf_counter() - started,
        "baseline_rss_mb": baseline / 2**20,
        "peak_rss_mb": peak / 2**20,
    }


if __name__ == "__main__":
    mode, corpus_path, out_path, server_url, count = sys.argv[1:6]
    result = asyncio.run(main(mode, corpus_path, out_path, server_url, int(count)))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
