"""`count_tokens="server"`: TEI's `POST /tokenize`, asked only near the input cap (issue 19).

Wire format (TEI's router, `router/src/http/types.rs`): the body is `{"inputs": str | [str],
"add_special_tokens": bool (default true), "prompt_name": str | null}`; the answer is one list
of `{"id", "text", "special", "start", "stop"}` tokens per input.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from embedkit import AsyncEmbedder, Connection, TokenLimitError

from .fakes import vector_for

CAP = 50  # the server's max_input_length


def tokens_of(text: str) -> int:
    """The mock's rule: a token a word, plus CLS and SEP (not characters / 4)."""
    return len(text.split()) + 2


class TEI:
    """A MockTransport TEI: `/info` (max_input_length), `/tokenize`, `/embed`."""

    def __init__(self, *, tokenize: bool = True) -> None:
        self.tokenize = tokenize
        self.tokenized: list[dict[str, Any]] = []  # the bodies /tokenize was sent
        self.embedded: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/info":
            return httpx.Response(
                200, json={"model_id": "m", "max_input_length": CAP, "max_client_batch_size": 64}
            )
        body = orjson.loads(request.content)
        if path == "/tokenize" and self.tokenize:
            self.tokenized.append(body)
            inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            return httpx.Response(
                200,
                json=[
                    [
                        {"id": k, "text": "w", "special": False, "start": 0, "stop": 1}
                        for k in range(tokens_of(text))
                    ]
                    for text in inputs
                ],
            )
        if path == "/embed":
            self.embedded.extend(body["inputs"])
            return httpx.Response(200, json=[vector_for(t).tolist() for t in body["inputs"]])
        return httpx.Response(404, json={"error": "no such route", "error_type": "NotFound"})


def tei(server: TEI, **kwargs: Any) -> AsyncEmbedder:
    return AsyncEmbedder(
        api="tei",
        url="http://tei.test",
        connection=Connection(transport=httpx.MockTransport(server)),
        **kwargs,
    )


# a text the estimate (4 characters a token) puts near the cap, whose true count is far over
MANY_WORDS = "x " * 100  # 200 characters, about 50 tokens estimated; 102 counted
# and one it puts over the cap, whose true count is tiny
ONE_WORD = "y" * 260  # about 65 tokens estimated; 3 counted


@pytest.mark.asyncio
async def test_the_server_count_decides_where_the_estimate_would_be_wrong() -> None:
    server = TEI()
    async with tei(server, count_tokens="server") as emb:
        with pytest.raises(TokenLimitError) as caught:
            await emb.embed_many(["short", MANY_WORDS])
        assert caught.value.position == 1
        assert "has 102 tokens" in str(caught.value)  # exact: not "about"
        assert MANY_WORDS not in server.embedded  # refused before it was sent
        row = await emb.embed(ONE_WORD)  # the estimate alone would refuse it
    np.testing.assert_array_equal(row, vector_for(ONE_WORD))
    assert server.tokenized[0] == {"inputs": [MANY_WORDS], "add_special_tokens": True}


@pytest.mark.asyncio
async def test_without_it_the_estimate_decides() -> None:
    server = TEI()
    async with tei(server) as emb:
        with pytest.raises(TokenLimitError, match="about 65 tokens"):
            await emb.embed(ONE_WORD)
    assert server.tokenized == []


@pytest.mark.asyncio
async def test_only_texts_near_the_cap_are_asked_in_batches_and_once() -> None:
    server = TEI()
    long = [f"{k} " + "z" * 190 for k in range(40)]  # near the cap by estimate; 3 tokens
    short = [f"short text {k}" for k in range(100)]
    async with tei(server, count_tokens="server") as emb:
        await emb.embed_many(short + long)
        await emb.embed_many(long)  # counted already: not asked again
    asked = [body["inputs"] for body in server.tokenized]
    assert [len(a) for a in asked] == [32, 8]  # batches of at most 32 texts
    assert sorted(t for a in asked for t in a) == sorted(long)


@pytest.mark.asyncio
async def test_the_prompt_name_is_counted_as_embed_applies_it() -> None:
    server = TEI()
    async with tei(server, count_tokens="server", prompt_name="query") as emb:
        await emb.embed(ONE_WORD)
    assert server.tokenized[0]["prompt_name"] == "query"


@pytest.mark.asyncio
async def test_a_server_without_tokenize_falls_back_to_the_estimate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = TEI(tokenize=False)
    caplog.set_level(logging.WARNING, logger="embedkit")
    async with tei(server, count_tokens="server") as emb:
        with pytest.raises(TokenLimitError, match="about 65 tokens"):
            await emb.embed(ONE_WORD)
        await emb.embed_many(["short", MANY_WORDS])  # the estimate lets it through
    assert "estimating instead" in caplog.text
    assert MANY_WORDS in server.embedded


@pytest.mark.asyncio
async def test_a_stream_asks_too() -> None:
    server = TEI()
    async with tei(server, count_tokens="server") as emb:
        blocks = [block async for _, block in emb.embed_stream(["short", ONE_WORD])]
    assert sum(len(b) for b in blocks) == 2
    assert server.tokenized[0]["inputs"] == [ONE_WORD]


def test_server_counts_need_api_tei() -> None:
    with pytest.raises(ValueError, match="api='tei'"):
        AsyncEmbedder("m", api="openai", url="http://x.test/v1", token="sk", count_tokens="server")
