"""Scenario 5, memory: peak RSS while `embed_stream` embeds a big corpus into an .npy file.

A child process (`_memory_child`) reads a corpus file line by line, streams it through
`embed_stream` (api "openai", base64, defaults otherwise) against an instant loopback server,
and writes each block to an .npy as it comes. Its peak RSS is what the target is about; the
output file (n × 384 × 4 bytes) is on disk, not in memory. The parent also polls the child's
RSS with psutil as a cross-check.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from ._common import _WORDS as WORDS
from ._common import ROOT, Scenario, at_most, server
from ._peers import has_stream

NAME = "memory"
TARGET_PEAK_MB = 200.0


def write_corpus(path: Path, n: int) -> None:
    """n short lines (4-12 words), written without holding them in memory."""
    rng = random.Random(5)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            words = rng.choices(WORDS, k=rng.randint(4, 12))
            out.write(f"{' '.join(words).capitalize()} ({i}).\n")


def run(opts: Any) -> Scenario:
    n = 20_000 if opts.smoke else 1_000_000
    scenario = Scenario(
        name=NAME,
        title=f"Memory: embed_stream of {n:,} short texts into an .npy (child process)",
        setup={
            "n": n,
            "dim": 384,
            "api": "openai (base64)",
            "server": "instant (canned body, other process)",
        },
        columns=[
            "client",
            "texts",
            "texts/s",
            "RSS after imports MB",
            "peak RSS MB",
            "peak (psutil) MB",
            "output MB",
        ],
    )
    if not has_stream():
        scenario.notes.append("embed_stream has not landed yet: not measured")
        scenario.checks.append(
            at_most(
                "memory: peak RSS, 1M texts via embed_stream",
                None,
                TARGET_PEAK_MB,
                "MB",
                note="not yet",
            )
        )
        return scenario
    import psutil

    with tempfile.TemporaryDirectory(prefix="embedkit-bench-mem-") as tmp, server(slots=0) as srv:
        corpus, out = Path(tmp) / "corpus.txt", Path(tmp) / "out.npy"
        write_corpus(corpus, n)
        argv = [
            sys.executable,
            "-m",
            "benchmarks._memory_child",
            str(corpus),
            str(out),
            srv.openai_url,
            str(n),
        ]
        child = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE)
        peak_polled = 0
        handle = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                peak_polled = max(peak_polled, handle.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
        stdout = child.stdout.read() if child.stdout else b""
        if child.wait() != 0:
            raise RuntimeError(f"the memory child failed with {child.returncode}")
        result = orjson.loads(stdout.splitlines()[-1])
        size_mb = out.stat().st_size / 2**20
    opts.log(
        f"    peak RSS {result['peak_rss_mb']:.0f} MB for {n:,} texts "
        f"({n / result['seconds']:,.0f} texts/s)"
    )
    scenario.rows.append(
        {
            "client": "embedkit embed_stream() → .npy",
            "texts": n,
            "texts/s": n / result["seconds"],
            "RSS after imports MB": result["baseline_rss_mb"],
            "peak RSS MB": result["peak_rss_mb"],
            "peak (psutil) MB": peak_polled / 2**20,
            "output MB": size_mb,
            "raw": {**result, "peak_polled_mb": peak_polled / 2**20, "output_mb": size_mb},
        }
    )
    scenario.checks.append(
        at_most(
            f"memory: peak RSS, {n:,} texts via embed_stream",
            result["peak_rss_mb"],
            TARGET_PEAK_MB,
            "MB",
        )
    )
    return scenario
