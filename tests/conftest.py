"""Shared fixtures, and the CI rule that a skipped test is a failed run."""

from __future__ import annotations

import os

import httpx
import pytest

# one model load, one `embedkit serve` and one Infinity process per session
from .local_fixtures import infinity_url, local_model, serve_url  # noqa: F401


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every test must run: any skip turns the run red."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not os.environ.get("CI") or reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped and exitstatus == 0:
        reporter.write_line(
            f"CI: {len(skipped)} test(s) skipped; in CI a skip is a failure", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_tokens_from_the_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Tests never pick up a real token from the environment or ~/.cache."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))


@pytest.fixture(params=["embedkit", "httpx"])
def http_transport(request: pytest.FixtureRequest) -> httpx.AsyncBaseTransport | None:
    """For integration tests that talk HTTP: run each on embedkit's default transport (None)
    and on httpx's stock one, so both stay proven against the same real servers."""
    return None if request.param == "embedkit" else httpx.AsyncHTTPTransport()
