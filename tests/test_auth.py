"""Where the token comes from, and that it never shows itself anywhere but the header.

`conftest.py` clears HF_TOKEN, OPENAI_API_KEY & co. and points HF_HOME at an empty folder, so
nothing here can pick up a real token from the machine.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import embedkit
from embedkit import AsyncEmbedder, Connection, EmbedkitError
from embedkit._auth import Secret, resolve_token
from tests.servers import free_port

SECRET = "hf_FAKEtoken0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _all_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Capture every log record at every level, embedkit's and its dependencies'."""
    caplog.set_level(logging.DEBUG)


def assert_hidden(caplog: pytest.LogCaptureFixture, *things: object) -> None:
    for thing in things:
        assert SECRET not in str(thing)
        assert SECRET not in repr(thing)
    for record in caplog.records:
        assert SECRET not in record.getMessage()
    assert SECRET not in caplog.text


# ----------------------------------------------------------------------- resolution


def test_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "from-env")
    token = resolve_token("hf", "  from-arg\n")
    assert token is not None
    assert token.reveal() == "from-arg"


def test_an_empty_argument_means_no_token_even_with_the_environment_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert resolve_token("hf", "") is None
    assert resolve_token("hf", "   ") is None


@pytest.mark.parametrize("api", ["hf", "tei"])
def test_hf_token_env(monkeypatch: pytest.MonkeyPatch, api: str) -> None:
    monkeypatch.setenv("HF_TOKEN", " hf_env ")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "legacy")
    token = resolve_token(api, None)
    assert token is not None
    assert token.reveal() == "hf_env"


def test_legacy_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "legacy")
    token = resolve_token("hf", None)
    assert token is not None
    assert token.reveal() == "legacy"


def test_the_env_wins_over_the_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("HF_TOKEN", "from-env")
    token = resolve_token("hf", None)
    assert token is not None
    assert token.reveal() == "from-env"


def test_token_file_under_hf_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "token").write_text("hf_file\n")
    token = resolve_token("tei", None)
    assert token is not None
    assert token.reveal() == "hf_file"


def test_token_file_from_hf_token_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere"
    path.write_text("hf_path")
    monkeypatch.setenv("HF_TOKEN_PATH", str(path))
    token = resolve_token("hf", None)
    assert token is not None
    assert token.reveal() == "hf_path"


def test_token_file_under_xdg_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "huggingface").mkdir()
    (tmp_path / "huggingface" / "token").write_text("hf_xdg")
    token = resolve_token("hf", None)
    assert token is not None
    assert token.reveal() == "hf_xdg"


def test_token_file_in_the_default_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / "token").write_text("hf_home")
    token = resolve_token("hf", None)
    assert token is not None
    assert token.reveal() == "hf_home"


def test_no_token_anywhere() -> None:
    assert resolve_token("hf", None) is None
    assert resolve_token("tei", None) is None
    assert resolve_token("openai", None) is None


def test_an_empty_token_file_is_no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "token").write_text("\n")
    assert resolve_token("hf", None) is None


def test_openai_reads_only_openai_api_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    (tmp_path / "token").write_text("hf_file")
    assert resolve_token("openai", None) is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    token = resolve_token("openai", None)
    assert token is not None
    assert token.reveal() == "sk-env"


def test_hf_does_not_read_openai_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert resolve_token("hf", None) is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("api", "env", "url"),
    [
        ("hf", "HF_TOKEN", "http://embed.test/m"),
        ("tei", "HF_TOKEN", "http://embed.test"),
        ("openai", "OPENAI_API_KEY", "http://embed.test/v1"),
    ],
)
async def test_the_client_sends_the_environment_token(
    monkeypatch: pytest.MonkeyPatch, api: str, env: str, url: str
) -> None:
    monkeypatch.setenv(env, SECRET)
    seen: list[httpx.Request] = []
    async with AsyncEmbedder(
        "m",
        connection=Connection(transport=httpx.MockTransport(answer(seen))),
        api=api,
        url=url,
        retry=None,
    ) as emb:
        await emb.embed("a")
    assert seen[-1].headers["authorization"] == f"Bearer {SECRET}"


# --------------------------------------------------------------------------- Secret


def test_secret_hides_itself() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret)
    assert SECRET not in str(secret)
    assert SECRET not in f"{secret}"
    assert SECRET not in repr([secret, {"token": secret}])
    assert secret.reveal() == SECRET
    assert secret == Secret(SECRET)
    assert secret != Secret("other")
    assert secret != SECRET  # not equal to the bare string: no accidental comparisons


# ------------------------------------------------------------------------ never shown


def answer(
    seen: list[httpx.Request], make: Callable[[], httpx.Response] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={"max_client_batch_size": 8})
        if make is not None:
            return make()
        if request.url.path.endswith("/embeddings"):
            return httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 2.0]}]})
        return httpx.Response(200, json=[[1.0, 2.0]])

    return handler


def make_embedder(api: str, handler: Callable[[httpx.Request], httpx.Response]) -> AsyncEmbedder:
    url = {
        "hf": "http://embed.test/m",
        "tei": "http://embed.test",
        "openai": "http://embed.test/v1",
    }
    return AsyncEmbedder(
        "m",
        connection=Connection(transport=httpx.MockTransport(handler)),
        api=api,
        url=url[api],
        token=SECRET,
        retry=embedkit.RetryPolicy(attempts=2, loading_timeout=0, sleep=no_sleep),
    )


async def no_sleep(seconds: float) -> None:
    """Retries without waiting."""


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "tei", "openai"])
async def test_repr_never_shows_the_token(caplog: pytest.LogCaptureFixture, api: str) -> None:
    seen: list[httpx.Request] = []
    emb = make_embedder(api, answer(seen))
    assert_hidden(caplog, emb)
    async with emb:
        await emb.embed("a")
        assert_hidden(caplog, emb, emb.stats(), emb.info, vars(emb))
    assert_hidden(caplog, emb)
    assert seen[-1].headers["authorization"] == f"Bearer {SECRET}"  # it was sent, though


def test_sync_embedder_repr_never_shows_the_token() -> None:
    emb = embedkit.Embedder(
        "m", connection=Connection(transport=httpx.MockTransport(answer([]))), token=SECRET
    )
    assert SECRET not in repr(emb)
    assert SECRET not in str(emb)


ERRORS = [
    (401, b"", {}),
    (403, b'{"error": "Authorization header is correct, but the token seems invalid"}', {}),
    (429, b'{"error": "Rate limit reached"}', {"retry-after": "0"}),
    (500, b'{"error": "unknown error"}', {"x-request-id": "r-1"}),
    (502, b"<html><body>Bad Gateway</body></html>", {}),
    (503, b'{"error": "Model m is currently loading", "estimated_time": 0}', {}),
    (422, b'{"error": "batch size 9 > maximum allowed batch size 8"}', {}),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "tei", "openai"])
@pytest.mark.parametrize(("status", "body", "headers"), ERRORS)
async def test_errors_and_logs_never_show_the_token(
    caplog: pytest.LogCaptureFixture,
    api: str,
    status: int,
    body: bytes,
    headers: dict[str, str],
) -> None:
    seen: list[httpx.Request] = []
    respond = answer(seen, lambda: httpx.Response(status, content=body, headers=headers))
    async with make_embedder(api, respond) as emb:
        with pytest.raises(EmbedkitError) as info:
            await emb.embed("a")
    exc = info.value
    assert_hidden(caplog, exc, exc.__cause__, exc.__context__, exc.args, vars(exc))
    assert_hidden(caplog, pickle.loads(pickle.dumps(exc)))
    assert seen[-1].headers["authorization"] == f"Bearer {SECRET}"


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ["hf", "openai"])
async def test_a_server_echoing_the_token_does_not_leak_it(
    caplog: pytest.LogCaptureFixture, api: str
) -> None:
    """Some gateways quote the key they refused; embedkit blanks it out of the message."""
    seen: list[httpx.Request] = []

    def echo() -> httpx.Response:
        token = seen[-1].headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(
            401,
            json={"error": {"message": f"Invalid API key: {token}"}},
            headers={"x-error-message": f"bad key {token}"},
        )

    async with make_embedder(api, answer(seen, echo)) as emb:
        with pytest.raises(embedkit.AuthenticationError) as info:
            await emb.embed("a")
    exc = info.value
    assert "Invalid API key" in exc.message
    assert_hidden(caplog, exc, exc.message, exc.args)
    assert_hidden(caplog, pickle.loads(pickle.dumps(exc)))


@pytest.mark.asyncio
async def test_a_malformed_body_echoing_the_token_does_not_leak_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[httpx.Request] = []

    def echo() -> httpx.Response:
        return httpx.Response(200, content=b"<html>" + seen[-1].headers["authorization"].encode())

    async with make_embedder("hf", answer(seen, echo)) as emb:
        with pytest.raises(embedkit.ResponseError) as info:
            await emb.embed("a")
    assert_hidden(caplog, info.value, info.value.args)


@pytest.mark.asyncio
async def test_transport_errors_over_a_real_socket_never_show_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/embed"  # nothing listens there
    emb = AsyncEmbedder("m", url=url, token=SECRET, retry=None)
    async with emb:
        with pytest.raises(embedkit.TransportError) as info:
            await emb.embed("a")
    exc = info.value
    assert "127.0.0.1" in str(exc)
    assert_hidden(caplog, emb, exc, exc.__cause__, exc.args)


@pytest.mark.parametrize("api", ["hf", "tei", "openai"])
def test_credentials_in_the_url_are_refused_without_being_shown(
    api: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Refused at construction, so no route (the embed POST, TEI's /info) ever sends or drops
    # them depending on which transport carries it.
    url = f"http://user:{SECRET}@127.0.0.1:{free_port()}/embed?api_key={SECRET}"
    with pytest.raises(ValueError, match="credentials in the URL") as info:
        AsyncEmbedder("m", api=api, url=url, retry=None)  # type: ignore[arg-type]
    assert_hidden(caplog, info.value, info.value.args)


@pytest.mark.asyncio
async def test_retry_logs_never_show_the_token(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[httpx.Request] = []
    answers: list[Any] = [
        httpx.Response(500, json={"error": "boom"}),
        httpx.Response(200, json=[[1.0, 2.0]]),
    ]

    def make() -> httpx.Response:
        response: httpx.Response = answers.pop(0)
        return response

    async with make_embedder("hf", answer(seen, make)) as emb:
        await emb.embed("a")
    assert len(seen) == 2
    assert caplog.records  # the retry was logged...
    assert_hidden(caplog)  # ...without the token
