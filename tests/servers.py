"""Starting and stopping real server processes on loopback for integration tests.

Servers are started by the tests themselves and stopped by PID (the whole process group),
whatever happens in the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from devtools.processes import stop_process_group

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Poll `url` until it answers 200, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode} before it was healthy:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling a process we do not control; not test synchronisation
    raise RuntimeError(
        f"{url} not healthy after {timeout} s:\n" + log.read_text(errors="replace")[-4000:]
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server by PID: SIGTERM to its process group, SIGKILL if it lingers."""
    stop_process_group(process)


@contextlib.contextmanager
def running(
    argv: Sequence[str],
    *,
    health_url: str,
    log: Path,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` in its own process group until the block ends; wait for `health_url` first."""
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
    }
    if env:
        full_env.update(env)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    try:
        wait_healthy(health_url, process, timeout, log)
        yield process
    finally:
        stop(process)


def python_server(module_args: Sequence[str], **kwargs: object) -> list[str]:
    """argv running `python -m ...` with this interpreter."""
    return [sys.executable, *module_args]


@contextlib.contextmanager
def rate_limited_server(rate: float) -> Iterator[str]:
    """The benchmarks' load server in its own process: admits `rate` requests/s, 429 beyond."""
    argv = [sys.executable, "-m", "benchmarks._server", "--rate", str(rate), "--dim", "8"]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None
    with process.stdout:
        try:
            said = process.stdout.readline().decode().split()
            assert said[:1] == ["PORT"], said
            yield f"http://127.0.0.1:{said[1]}"
        finally:
            stop(process)
