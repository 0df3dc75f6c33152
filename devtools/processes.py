"""Stopping a process we started in its own session: the one helper tests and benchmarks share.

Servers are started with `start_new_session=True`, so the process and anything it spawns
(uvicorn workers, Infinity's children) form one process group, stopped together by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

__all__ = ["stop_process_group"]


def stop_process_group(process: subprocess.Popen[Any], *, grace: float = 15.0) -> None:
    """SIGTERM the process group of `process`, then SIGKILL it if it lingers past `grace` s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
