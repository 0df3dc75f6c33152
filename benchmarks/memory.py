"""Scenario 5, memory: peak RSS while embedkit embeds a big corpus into a file.

Three child processes (`_memory_child`), one after the other, each against an instant loopback
server (api "openai", base64, defaults otherwise): `embed_stream` over the corpus read line by
line, each block written to an .npy as it comes; `embed_file` into an .npy (the library's
resumable engine: scan, probe, blocks written in place, commits); `embed_file` into a .parquet
(row groups as part files, assembled at the end). Peak RSS is what the target is about; the
outputs (n × 384 × 4 bytes) are on disk, not in memory. The parent also polls each child's RSS
with psutil as a cross-check.
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
        title=f"Memory: {n:,} short texts into an .npy or .parquet (child processes)",
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

    runs = [
        ("embed_stream() → .npy", "stream", "out.npy"),
        ("embed_file() → .npy", "file", "out.npy"),
        ("embed_file() → .parquet", "file", "out.parquet"),
    ]
    with tempfile.TemporaryDirectory(prefix="embedkit-bench-mem-") as tmp, server(slots=0) as srv:
        corpus = Path(tmp) / "corpus.txt"
        write_corpus(corpus, n)
        for label, mode, name in runs:
            out = Path(tmp) / name
            result, peak_polled = _measure(psutil, mode, corpus, out, srv.openai_url, n)
            size_mb = out.stat().st_size / 2**20
            out.unlink()
            opts.log(
                f"    {label}: peak RSS {result['peak_rss_mb']:.0f} MB for {n:,} texts "
                f"({n / result['seconds']:,.0f} texts/s)"
            )
            scenario.rows.append(
                {
                    "client": f"embedkit {label}",
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
                    f"memory: peak RSS, {n:,} texts via {label}",
                    result["peak_rss_mb"],
                    TARGET_PEAK_MB,
                    "MB",
                )
            )
    return scenario


def _measure(
    psutil: Any, mode: str, corpus: Path, out: Path, url: str, n: int
) -> tuple[dict[str, Any], int]:
    """Run one child; its JSON result and the peak RSS polled from outside."""
    argv = [sys.executable, "-m", "benchmarks._memory_child", mode, str(corpus), str(out), url]
    child = subprocess.Popen([*argv, str(n)], cwd=ROOT, stdout=subprocess.PIPE)
    peak_polled = 0
    handle = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            peak_polled = max(peak_polled, handle.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)  # polling another process's memory, not synchronisation
    stdout = child.stdout.read() if child.stdout else b""
    if child.wait() != 0:
        raise RuntimeError(f"the memory child ({mode} → {out.suffix}) failed: {child.returncode}")
    result: dict[str, Any] = orjson.loads(stdout.splitlines()[-1])
    return result, peak_polled
