"""What every scenario shares: servers in child processes, corpora, checks, machine facts."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from devtools.processes import stop_process_group

from ._server import canned_vectors, row_index

ROOT = Path(__file__).resolve().parent.parent
DIM = 384

#: Timeouts every hand-written peer gets: as generous as embedkit's own default, so no
#: peer fails on httpx's 5-second default while it waits in a queue it built itself.
PEER_TIMEOUT = httpx.Timeout(120.0, connect=10.0, pool=None)


# ----------------------------------------------------------------------------- checks


@dataclasses.dataclass
class Check:
    """One target of the brief, the value measured for it, and whether it was met."""

    name: str
    target: str
    measured: float | None
    unit: str
    passed: bool | None  # None: not measured (say why in `note`)
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]

    def describe(self) -> str:
        value = "—" if self.measured is None else f"{fmt(self.measured)} {self.unit}".strip()
        return f"{self.name}: target {self.target}, measured {value} → {self.verdict}"


def at_least(name: str, measured: float | None, target: float, unit: str, note: str = "") -> Check:
    passed = None if measured is None else measured >= target
    return Check(name, f"≥ {fmt(target)} {unit}".strip(), measured, unit, passed, note)


def at_most(name: str, measured: float | None, target: float, unit: str, note: str = "") -> Check:
    passed = None if measured is None else measured <= target
    return Check(name, f"≤ {fmt(target)} {unit}".strip(), measured, unit, passed, note)


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclasses.dataclass
class Scenario:
    """A scenario's outcome: rows of measurements, the checks, and notes for the reader."""

    name: str
    title: str
    setup: dict[str, Any]
    columns: list[str]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checks: list[Check] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for check, raw in zip(self.checks, out["checks"], strict=True):
            raw["verdict"] = check.verdict
        return out


def table(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table; numbers formatted by `fmt`."""
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)
    ]
    left = [c in TEXT_COLUMNS for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(r, widths, left, strict=True)
            )
        )
    return "\n".join(lines)


TEXT_COLUMNS = {"client", "server", "path", "target", "wanted"}


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return fmt(float(value)) if isinstance(value, float) else f"{value:,}"
    return str(value)


# ---------------------------------------------------------------------------- servers


class Server:
    """A benchmark server (`benchmarks._server`) running in its own process group."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, options: dict[str, Any]
    ) -> None:
        self.process = process
        self.port = port
        self.options = options
        self.root = f"http://127.0.0.1:{port}"
        self.hf_url = self.root + "/embed"
        self.openai_url = self.root + "/v1"
        self._control = httpx.Client(timeout=30.0)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._control.get(self.root + "/stats").json()
        return result

    def reset(self) -> None:
        self._control.post(self.root + "/reset", content=b"")

    def close(self) -> None:
        self._control.close()
        stop_process(self.process)

    def capacity(self, batch: int) -> float | None:
        """Texts/s the cost model allows at this batch size with every slot busy."""
        slots = self.options.get("slots", 0)
        if not slots:
            return None
        cost = self.options.get("latency_ms", 0.0) + self.options.get("per_text_ms", 0.0) * batch
        return slots * batch / (cost / 1000.0)


@contextlib.contextmanager
def server(*, program: str = "benchmarks._server", **options: Any) -> Iterator[Server]:
    """Start `benchmarks._server` (or `program`, a server module with the same command line
    and `PORT` line) with these options; stop it (by process group) at the end."""
    argv = [sys.executable, "-m", program]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, start_new_session=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError(f"benchmark server did not start (said {line!r})")
        srv = Server(process, int(line[1]), options)
    except BaseException:
        stop_process(process)
        raise
    try:
        yield srv
    finally:
        srv.close()


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group we started, SIGKILL if it lingers."""
    stop_process_group(process)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, process: subprocess.Popen[Any], timeout: float) -> None:
    """Poll `url` until it answers 200, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout:.0f} s")


# ---------------------------------------------------------------------------- corpora

_VOCABULARY = (
    "the a of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her all she there would their we him been has when who "
    "will more no if out so said what up its about into than them can only other new some "
    "could time these two may then do first any my now such like our over man me even most "
    "made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three "
    "embedding vector model server batch query search document retrieval semantic river city "
    "music garden coffee morning weather train station market history science language"
)
_WORDS = tuple(_VOCABULARY.split())


def sentences(n: int, seed: int = 0, *, min_words: int = 6, max_words: int = 16) -> list[str]:
    """n distinct short sentences (6-16 common words), the same for a given seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        words = rng.choices(_WORDS, k=rng.randint(min_words, max_words))
        text = " ".join(words).capitalize() + "."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def check_rows(texts: Sequence[str], matrix: np.ndarray, dim: int = DIM) -> None:
    """Every row is the canned vector the server answers for its text (order kept)."""
    vectors = canned_vectors(dim)
    if matrix.shape != (len(texts), dim):
        raise AssertionError(f"got shape {matrix.shape}, expected {(len(texts), dim)}")
    step = max(1, len(texts) // 200)
    for i in range(0, len(texts), step):
        if not np.allclose(matrix[i], vectors[row_index(texts[i])], atol=1e-6):
            raise AssertionError(f"row {i} is not the vector for its text")


# ---------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """Cores, CPU model, OS, memory: enough to compare numbers across machines."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    with contextlib.suppress(Exception):
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["cpu_mhz"] = round(psutil.cpu_freq().current) if psutil.cpu_freq() else None
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    if os.environ.get("OPENBLAS_CORETYPE"):
        info["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    return info


def versions() -> dict[str, str | None]:
    names = [
        "embedkit",
        "httpx",
        "httpcore",
        "anyio",
        "numpy",
        "orjson",
        "huggingface_hub",
        "httpx2",
        "tenacity",
        "sentence-transformers",
        "torch",
        "matplotlib",
        "psutil",
    ]
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if out["embedkit"] is None:  # running from a checkout that is not installed
        import embedkit

        out["embedkit"] = f"{embedkit.__version__} (source tree)"
    return out


def git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "embedkit"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty(embedkit)" if dirty else "")


class Neighbours:
    """CPU used on this machine by processes that are not the benchmark or its servers.

    The machine may be shared (CI runners, other jobs). `wait_quiet()` holds a measurement
    until the neighbours are quiet, and `start()`/`stop()` report how many cores they used
    during one, so a disturbed number can be recognised in results.json.
    """

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            self._psutil = None
            return
        self._psutil = psutil
        self._me = psutil.Process()
        self._mark: tuple[float, float, float] | None = None
        #: seconds `wait_quiet` may still spend in this run, over all measurements
        self.budget = 0.0

    def _sample(self) -> tuple[float, float, float]:
        psutil = self._psutil
        assert psutil is not None
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        ct = self._me.cpu_times()
        ours = ct.user + ct.system + ct.children_user + ct.children_system
        for child in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                ours += c.user + c.system
        return time.monotonic(), busy, ours

    def start(self) -> None:
        if self._psutil is not None:
            self._mark = self._sample()

    def stop(self) -> float | None:
        """Cores the neighbours used since `start()` (None without psutil)."""
        if self._psutil is None or self._mark is None:
            return None
        t0, busy0, ours0 = self._mark
        t1, busy1, ours1 = self._sample()
        return max(0.0, ((busy1 - busy0) - (ours1 - ours0)) / max(t1 - t0, 1e-6))

    def wait_quiet(self, *, cores: float = 0.25, probe: float = 0.2, limit: float = 15.0) -> float:
        """Wait until neighbours use < `cores` over `probe` s, at most `limit` s and at most
        what is left of `budget`; returns the seconds waited."""
        if self._psutil is None or self.budget <= 0:
            return 0.0
        started = time.monotonic()
        limit = min(limit, self.budget)
        while True:
            self.start()
            time.sleep(probe)  # sampling other processes, not synchronising with our own
            used = self.stop()
            waited = time.monotonic() - started
            if used is None or used < cores or waited >= limit:
                self.budget -= waited
                return waited


NEIGHBOURS = Neighbours()


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float)))
