"""redis-server on 127.0.0.1, no persistence, stopped by PID: for tests and benchmarks.

`running_redis()` starts Debian's `redis-server` on a free port (`--save "" --appendonly no`:
nothing written to disk), in its own process group, waits until it answers PING, and stops
it when the block ends. `kill()` on the yielded handle stops it early (a Redis that dies
mid-run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .processes import stop_process_group

__all__ = ["REDIS", "RunningRedis", "free_port", "redis_path", "running_redis"]

REDIS = os.environ.get("EMBEDKIT_REDIS") or shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_path() -> str | None:
    """The redis-server binary, or None when it is not installed."""
    return REDIS if os.path.exists(REDIS) else None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningRedis:
    """A redis-server we started: its `url`, `port` and `process`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def kill(self) -> None:
        """Stop it now (SIGTERM to its process group, SIGKILL if it lingers)."""
        stop_process_group(self.process, grace=5.0)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(d: Path | None = None) -> Iterator[RunningRedis]:
    """Run redis-server on a free loopback port until the block ends (stopped by PID)."""
    binary = redis_path()
    if binary is None:
        raise FileNotFoundError(f"redis-server not found at {REDIS} (apt-get install redis-server)")
    port = free_port()
    argv = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
    ]  # fmt: skip
    if d is not None:
        argv += ["--dir", str(d)]
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not _ping(port):
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited early (code {process.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server: port {port} not answering after 30 s")
            time.sleep(0.02)  # polling a process we do not control
        yield RunningRedis(process, port)
    finally:
        stop_process_group(process, grace=5.0)
