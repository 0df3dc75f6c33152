"""Every error answer becomes the right exception, carrying the server's words and request id."""

from __future__ import annotations

import email.utils
import pickle
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

import embedkit
from embedkit import (
    AuthenticationError,
    BatchTooLargeError,
    Connection,
    EmbedkitError,
    InputError,
    Limits,
    ModelLoadingError,
    ModelNotFoundError,
    RateLimitError,
    ResponseError,
    ServerError,
    StatusError,
    TokenLimitError,
    TransportError,
)
from embedkit._errors import error_from_response, parse_retry_after

from .providers import ALL_APIS, URLS, success

HTML_502 = b"""<!DOCTYPE html>
<html><head><title>502 Bad Gateway</title></head>
<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"""


def error(status: int, body: Any = b"", **headers: str) -> StatusError:
    """Run the mapping on a body (bytes as-is, anything else as JSON) and headers."""
    content = body if isinstance(body, bytes) else httpx.Response(200, json=body).content
    return error_from_response(status, content, httpx.Headers(headers))


# ------------------------------------------------------------------------- the tree


def test_the_tree() -> None:
    assert issubclass(StatusError, EmbedkitError)
    for cls in (
        AuthenticationError,
        ModelNotFoundError,
        InputError,
        RateLimitError,
        ModelLoadingError,
        ServerError,
    ):
        assert issubclass(cls, StatusError)
    assert issubclass(BatchTooLargeError, InputError)
    for other in (TransportError, ResponseError, embedkit.ClientClosedError):
        assert issubclass(other, EmbedkitError)
        assert not issubclass(other, StatusError)
    assert issubclass(EmbedkitError, Exception)


# ----------------------------------------------------------------- status -> exception


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (401, b"", AuthenticationError, ""),  # TEI: wrong key, empty body
        (401, {"error": "Invalid credentials in Authorization header"}, AuthenticationError, None),
        (403, {"error": "You don't have access to this model"}, AuthenticationError, None),
        (404, {"error": "Model foo/bar does not exist"}, ModelNotFoundError, None),
        (400, {"error": "Input should be a valid string"}, InputError, None),
        (
            422,
            {"error": "`inputs` must have less than 512 tokens. Given: 600"},
            TokenLimitError,
            None,
        ),
        (429, {"error": "Rate limit reached."}, RateLimitError, None),
        (500, {"error": "unknown error"}, ServerError, None),
        (504, {"error": "Model too busy"}, ServerError, None),
        (424, {"error": "backend failed", "error_type": "Backend"}, ServerError, None),
        (408, b"", ServerError, ""),
        (503, {"error": "Unhealthy", "error_type": "Unhealthy"}, ServerError, None),
    ],
)
def test_status_mapping(
    status: int, body: Any, cls: type[StatusError], message: str | None
) -> None:
    exc = error(status, body)
    assert type(exc) is cls
    assert exc.status_code == status
    want = body["error"] if message is None else message
    assert exc.message == want
    assert str(exc) == (f"{status}: {want}" if want else str(status))


def test_an_unmapped_status_is_a_plain_status_error() -> None:
    exc = error(418, {"error": "I'm a teapot"})
    assert type(exc) is StatusError
    assert exc.message == "I'm a teapot"


def test_hf_error_list_is_joined() -> None:
    exc = error(400, {"error": ["first problem", "second problem"]})
    assert isinstance(exc, InputError)
    assert exc.message == "first problem; second problem"


@pytest.mark.parametrize("error_type", ["Validation", "validation"])
def test_tei_batch_size_422_is_batch_too_large(error_type: str) -> None:
    exc = error(
        422,
        {"error": "batch size 64 > maximum allowed batch size 32", "error_type": error_type},
    )
    assert isinstance(exc, BatchTooLargeError)
    assert exc.max_batch_size == 32
    assert exc.status_code == 422
    assert "maximum allowed batch size 32" in exc.message


def test_413_plain_text_is_batch_too_large_without_a_size() -> None:
    exc = error(413, b"Payload Too Large")
    assert isinstance(exc, BatchTooLargeError)
    assert exc.max_batch_size is None
    assert exc.message == "Payload Too Large"


def test_413_without_a_body_still_says_something() -> None:
    exc = error(413)
    assert isinstance(exc, BatchTooLargeError)
    assert exc.message


@pytest.mark.parametrize("error_type", ["Overloaded", "overloaded"])
def test_tei_overloaded_429_is_rate_limit_without_retry_after(error_type: str) -> None:
    exc = error(429, {"error": "Model is overloaded", "error_type": error_type})
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after is None
    assert exc.message == "Model is overloaded"


@pytest.mark.parametrize("error_type", ["Overloaded", "overloaded"])
def test_503_overloaded_is_rate_limit(error_type: str) -> None:
    exc = error(503, {"error": "queue full", "error_type": error_type})
    assert isinstance(exc, RateLimitError)


@pytest.mark.parametrize("error_type", ["Tokenizer", "tokenizer"])
def test_tei_tokenizer_error_is_input_error(error_type: str) -> None:
    exc = error(422, {"error": "tokenizer failed", "error_type": error_type})
    assert type(exc) is InputError
    assert exc.message == "tokenizer failed"


def test_tei_empty_400_is_input_error() -> None:
    exc = error(400, {"error": "Batch is empty", "error_type": "empty"})
    assert type(exc) is InputError


@pytest.mark.parametrize("estimated", [20.0, 2315, 0.5])
def test_503_loading_with_estimated_time(estimated: float) -> None:
    exc = error(
        503, {"error": "Model thenlper/gte-large is currently loading", "estimated_time": estimated}
    )
    assert isinstance(exc, ModelLoadingError)
    assert exc.retry_after == pytest.approx(estimated)
    assert "currently loading" in exc.message


def test_503_loading_without_estimated_time_uses_retry_after() -> None:
    exc = error(503, {"error": "Model is loading"}, **{"retry-after": "4"})
    assert isinstance(exc, ModelLoadingError)
    assert exc.retry_after == 4.0


def test_502_html_body_is_readable() -> None:
    exc = error(502, HTML_502, **{"content-type": "text/html"})
    assert isinstance(exc, ServerError)
    assert "<" not in exc.message
    assert "502 Bad Gateway" in exc.message
    assert "nginx" in exc.message
    assert "  " not in exc.message


def test_500_html_body_is_readable() -> None:
    exc = error(500, b"<html><body><h1>Internal\n\n  Server Error</h1></body></html>")
    assert isinstance(exc, ServerError)
    assert exc.message == "Internal Server Error"


def test_openai_nested_error_message() -> None:
    body = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    exc = error(400, body)
    assert isinstance(exc, InputError)
    assert exc.message == "This model's maximum context length is 8192 tokens"


def test_openai_nested_401() -> None:
    exc = error(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
    assert isinstance(exc, AuthenticationError)
    assert exc.message == "Incorrect API key provided"


def test_tei_openai_route_flat_error() -> None:
    exc = error(422, {"message": "Input validation error", "code": 422, "type": "validation"})
    assert isinstance(exc, InputError)
    assert exc.message == "Input validation error"


def test_infinity_detail_list() -> None:
    body = {
        "detail": [
            {"type": "missing", "loc": ["body", "input"], "msg": "Field required"},
            {"type": "too_long", "loc": ["body", "input"], "msg": "List should have at most 2048"},
        ]
    }
    exc = error(422, body)
    assert isinstance(exc, InputError)
    assert exc.message == "Field required; List should have at most 2048"


def test_detail_string() -> None:
    assert error(404, {"detail": "Not Found"}).message == "Not Found"


def test_x_error_message_header_when_the_body_says_nothing() -> None:
    exc = error(500, b"", **{"X-Error-Message": "Model too busy, unable to get response"})
    assert isinstance(exc, ServerError)
    assert exc.message == "Model too busy, unable to get response"


def test_the_body_wins_over_the_header() -> None:
    exc = error(500, {"error": "from body"}, **{"x-error-message": "from header"})
    assert exc.message == "from body"


def test_request_id_is_carried() -> None:
    exc = error(500, {"error": "boom"}, **{"x-request-id": "req-123"})
    assert exc.request_id == "req-123"
    assert "req-123" in str(exc)
    assert error(500, b"", **{"request-id": "req-9"}).request_id == "req-9"
    assert error(500, b"").request_id is None


def test_very_long_messages_are_clipped() -> None:
    exc = error(500, {"error": "x" * 10_000})
    assert 0 < len(exc.message) <= 500
    assert exc.message.endswith("…")


def test_body_that_is_not_json_is_the_message() -> None:
    assert error(400, b"Failed to parse the request body as JSON").message == (
        "Failed to parse the request body as JSON"
    )


def test_json_without_a_message_falls_back_to_the_header() -> None:
    exc = error(500, {"unexpected": 1}, **{"x-error-message": "header words"})
    assert exc.message == "header words"


def test_exceptions_pickle_round_trip() -> None:
    exc = error(429, {"error": "slow"}, **{"retry-after": "3", "x-request-id": "r1"})
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is RateLimitError
    assert (back.status_code, back.message, back.request_id, back.retry_after) == (
        429,
        "slow",
        "r1",
        3.0,
    )
    big = error(422, {"error": "batch size 64 > maximum allowed batch size 32"})
    big_back = pickle.loads(pickle.dumps(big))
    assert type(big_back) is BatchTooLargeError
    assert big_back.max_batch_size == 32
    assert str(big_back) == str(big)


# -------------------------------------------------------------------------- Retry-After


def test_retry_after_seconds() -> None:
    exc = error(429, {"error": "slow"}, **{"Retry-After": "7"})
    assert isinstance(exc, RateLimitError)
    assert exc.retry_after == 7.0


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=now) == pytest.approx(30.0)


def test_retry_after_http_date_through_the_mapping() -> None:
    date = email.utils.formatdate(time.time() + 120, usegmt=True)
    exc = error(429, {"error": "slow"}, **{"retry-after": date})
    assert exc.retry_after is not None
    assert 100 < exc.retry_after <= 121


def test_retry_after_in_the_past_is_zero() -> None:
    date = email.utils.formatdate(1_000_000_000, usegmt=True)
    assert parse_retry_after(httpx.Headers({"retry-after": date}), now=2_000_000_000) == 0.0
    assert parse_retry_after(httpx.Headers({"retry-after": "-5"})) == 0.0


def test_retry_after_ms_wins() -> None:
    headers = httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})
    assert parse_retry_after(headers) == 1.5
    exc = error(429, {"error": "slow"}, **{"retry-after-ms": "250"})
    assert exc.retry_after == 0.25


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "bogus", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "-1", "retry-after": "2"}, 2.0),
        ({"retry-after": " 3 "}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
    ],
)
def test_retry_after_edge_cases(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers)) == expected


# ------------------------------------------------------------------ through the client


Handler = Callable[[httpx.Request], httpx.Response]


def on_post(response: Callable[[], httpx.Response], seen: list[httpx.Request]) -> Handler:
    """A server that knows nothing at /info and answers every POST with `response()`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404)
        seen.append(request)
        return response()

    return handler


def client(api: str, handler: Handler, **kwargs: Any) -> embedkit.AsyncEmbedder:
    kwargs.setdefault("retry", None)
    return embedkit.AsyncEmbedder(
        "m",
        connection=Connection(transport=httpx.MockTransport(handler)),
        api=api,
        url=URLS[api],
        **kwargs,
    )


ERROR_CASES = [
    (401, {"error": "bad token"}, {}, AuthenticationError),
    (403, {"error": "forbidden"}, {}, AuthenticationError),
    (404, {"error": "no such model"}, {}, ModelNotFoundError),
    (400, {"error": "bad input"}, {}, InputError),
    (422, {"detail": [{"msg": "bad input"}]}, {}, InputError),
    (429, {"error": {"message": "slow down"}}, {"retry-after": "12"}, RateLimitError),
    (503, {"error": "Model m is currently loading", "estimated_time": 20.0}, {}, ModelLoadingError),
    (500, {"error": "unknown error"}, {}, ServerError),
    (424, {"error": "backend", "error_type": "Backend"}, {}, ServerError),
    (502, HTML_502, {"content-type": "text/html"}, ServerError),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ALL_APIS)
@pytest.mark.parametrize(("status", "body", "headers", "cls"), ERROR_CASES)
async def test_errors_surface_through_the_client(
    api: str, status: int, body: Any, headers: dict[str, str], cls: type[StatusError]
) -> None:
    seen: list[httpx.Request] = []
    content = body if isinstance(body, bytes) else httpx.Response(200, json=body).content
    all_headers = {"x-request-id": f"rid-{status}", **headers}

    def respond() -> httpx.Response:
        return httpx.Response(status, content=content, headers=all_headers)

    async with client(api, on_post(respond, seen)) as emb:
        with pytest.raises(cls) as info:
            await emb.embed_many(["a"])
    exc = info.value
    assert type(exc) is cls
    assert exc.status_code == status
    assert exc.request_id == f"rid-{status}"
    assert exc.message
    assert "<" not in exc.message
    if status == 429:
        assert exc.retry_after == 12.0
    if status == 503:
        assert exc.retry_after == 20.0
    assert len(seen) == 1  # retry=None: exactly one request


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "fault",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    ],
)
async def test_transport_faults_become_transport_error(fault: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise fault

    async with client("hf", handler) as emb:
        with pytest.raises(TransportError) as info:
            await emb.embed("a")
    assert info.value.__cause__ is fault
    assert type(fault).__name__ in str(info.value)
    assert "embed.test" in str(info.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"<html>oops</html>", "not JSON"),
        (b'{"embeddings": []}', None),
        (b"[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]", "sent 2 texts"),
    ],
)
async def test_bad_success_bodies_are_response_errors(content: bytes, needle: str | None) -> None:
    seen: list[httpx.Request] = []
    async with client("hf", on_post(lambda: httpx.Response(200, content=content), seen)) as emb:
        with pytest.raises(ResponseError, match=needle):
            await emb.embed_many(["a", "b"])


# --------------------------------------------------------------- with the default retry


async def no_sleep(seconds: float) -> None:
    """Stands in for anyio.sleep: retries go on at once."""


def one_row(api: str, seen: list[httpx.Request]) -> httpx.Response:
    """The answer [[1.0, 2.0]] to the last request seen, in `api`'s shape."""
    return success(api, httpx.Response(200, content=seen[-1].content).json(), [[1.0, 2.0]])


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ALL_APIS)
async def test_server_errors_are_retried_then_succeed(api: str) -> None:
    answers = [
        lambda: httpx.Response(500, json={"error": "unknown error"}),
        lambda: httpx.Response(502, content=HTML_502),
        lambda: one_row(api, seen),
    ]
    seen: list[httpx.Request] = []
    retry = embedkit.RetryPolicy(sleep=no_sleep)
    async with client(api, on_post(lambda: answers[len(seen) - 1](), seen), retry=retry) as emb:
        vector = await emb.embed("a")
        stats = emb.stats()
    np.testing.assert_array_equal(vector, [1.0, 2.0])
    assert len(seen) == 3
    assert stats.retries == {"500": 1, "502": 1}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, InputError), (401, AuthenticationError), (404, ModelNotFoundError), (422, InputError)],
)
async def test_caller_errors_are_not_retried(status: int, cls: type[StatusError]) -> None:
    seen: list[httpx.Request] = []
    retry = embedkit.RetryPolicy(sleep=no_sleep)
    respond = on_post(lambda: httpx.Response(status, json={"error": "no"}), seen)
    async with client("hf", respond, retry=retry) as emb:
        with pytest.raises(cls):
            await emb.embed("a")
    assert len(seen) == 1


@pytest.mark.asyncio
async def test_retries_give_up_after_attempts_with_the_last_error() -> None:
    seen: list[httpx.Request] = []
    retry = embedkit.RetryPolicy(attempts=3, sleep=no_sleep)
    respond = on_post(lambda: httpx.Response(500, json={"error": f"fail {len(seen)}"}), seen)
    async with client("hf", respond, retry=retry) as emb:
        with pytest.raises(ServerError) as info:
            await emb.embed("a")
    assert len(seen) == 3
    assert info.value.message == "fail 3"


@pytest.mark.asyncio
async def test_attempts_1_surfaces_the_first_error() -> None:
    seen: list[httpx.Request] = []
    retry = embedkit.RetryPolicy(attempts=1, sleep=no_sleep)
    respond = on_post(lambda: httpx.Response(503, json={"error": "Service Unavailable"}), seen)
    async with client("hf", respond, retry=retry) as emb:
        with pytest.raises(ServerError):
            await emb.embed("a")
    assert len(seen) == 1


@pytest.mark.asyncio
async def test_tei_batch_size_refusal_splits_the_batch() -> None:
    batches: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404)
        texts = httpx.Response(200, content=request.content).json()["inputs"]
        batches.append(len(texts))
        if len(texts) > 3:
            return httpx.Response(
                422,
                json={
                    "error": f"batch size {len(texts)} > maximum allowed batch size 3",
                    "error_type": "Validation",
                },
            )
        return httpx.Response(200, json=[[float(t), 0.0] for t in texts])

    async with client("tei", handler, limits=Limits(max_batch_size=8, max_concurrency=1)) as emb:
        out = await emb.embed_many([str(i) for i in range(8)])
        assert emb.stats().max_batch_size == 3
    np.testing.assert_array_equal(out[:, 0], np.arange(8))
    assert batches[0] == 8
    assert all(size <= 3 for size in batches[1:])
    assert sum(batches[1:]) == 8


@pytest.mark.asyncio
@pytest.mark.parametrize("api", ALL_APIS)
async def test_recorded_sleep_sees_the_server_retry_after(api: str) -> None:
    """`RetryPolicy(sleep=...)` makes a 429's wait observable without waiting."""
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    answers = [
        lambda: httpx.Response(429, json={"error": "slow down"}, headers={"retry-after": "0.4"}),
        lambda: one_row(api, seen),
    ]
    seen: list[httpx.Request] = []
    retry = embedkit.RetryPolicy(sleep=record)
    started = time.monotonic()
    async with client(api, on_post(lambda: answers[len(seen) - 1](), seen), retry=retry) as emb:
        await emb.embed("a")
    elapsed = time.monotonic() - started
    assert len(seen) == 2
    assert len(slept) <= 3  # a no-op sleep must never spin on the real clock
    assert [s for s in slept if s > 0] == [pytest.approx(0.4, abs=0.05)]
    assert elapsed < 0.3


@pytest.mark.asyncio
@pytest.mark.parametrize("estimated", [0, 0.001])
async def test_a_loading_model_with_no_estimate_is_not_hammered(estimated: float) -> None:
    """503 "loading" with estimated_time 0 must still back off, not retry in a tight loop."""
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    seen: list[httpx.Request] = []
    body = {"error": "Model m is currently loading", "estimated_time": estimated}
    retry = embedkit.RetryPolicy(loading_timeout=2.0, backoff=0.5, sleep=record)
    started = time.monotonic()
    respond = on_post(lambda: httpx.Response(503, json=body), seen)
    async with client("hf", respond, retry=retry) as emb:
        with pytest.raises(ModelLoadingError):
            await emb.embed("a")
    assert time.monotonic() - started < 1.0
    # About loading_timeout / backoff tries, not thousands.
    assert len(seen) <= 2.0 / 0.5 * 1.2 + 2
    # it waits until the next wait would not fit in loading_timeout, and not past it
    assert 2.0 - 0.5 * 1.1 <= sum(slept) <= 2.0
