"""The slow start for a server that caps tokens and has stated no quota (issue 19)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from embedkit import Limits
from embedkit._core.flow import AdaptiveConcurrency

from .fakes import vectors_for
from .test_tokens import OpenAIServer, openai


def test_slow_start_holds_one_in_flight_until_a_full_wave_comes_back_clean() -> None:
    c = AdaptiveConcurrency(4)
    c.slow_start()
    assert (c.starting, c.limit) == (True, 1.0)
    for _ in range(3):
        c.on_success()
        assert c.limit == 1.0
    c.on_success()  # the fourth clean answer in a row: a wave's worth, one by one
    assert (c.starting, c.limit) == (False, 4.0)
    c.slow_start()  # only the first call counts
    assert (c.starting, c.limit) == (False, 4.0)


def test_a_429_or_a_stated_quota_ends_the_slow_start() -> None:
    c = AdaptiveConcurrency(8)
    c.slow_start()
    c.on_success()
    c.on_overload(c.ticket())
    assert (c.starting, c.limit) == (False, 1.0)  # back to the floor, then AIMD
    c.on_success()
    assert c.limit == 2.0
    stated = AdaptiveConcurrency(8)
    stated.slow_start()
    stated.end_slow_start()
    assert (stated.starting, stated.limit) == (False, 8.0)
    fixed = AdaptiveConcurrency(8, adaptive=False)
    fixed.slow_start()
    assert (fixed.starting, fixed.limit) == (False, 8.0)


class Overlap(OpenAIServer):
    """`OpenAIServer` answering after a short pause, noting the requests in flight as each
    one arrives (`seen`), and where its first size refusal came (`first_refusal`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.now = 0
        self.seen: list[int] = []
        self.first_refusal: int | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.now += 1
        self.seen.append(self.now)
        try:
            await anyio.sleep(0.002)  # a round trip, so that requests can overlap
            response = self(request)
            if self.refused and self.first_refusal is None:
                self.first_refusal = len(self.seen)
            return response
        finally:
            self.now -= 1


def texts_of(n: int) -> list[str]:
    return [f"text {i} " + "word " * (20 + (i * 7) % 30) for i in range(n)]


@pytest.mark.asyncio
async def test_after_a_token_cap_refusal_without_a_quota_batches_go_one_at_a_time() -> None:
    server = Overlap(request_cap=300)
    texts = texts_of(400)
    async with openai(server.handle) as emb:
        out = await emb.embed_many(texts)
    np.testing.assert_array_equal(out, vectors_for(texts))
    assert server.first_refusal is not None, "the server never named its cap"
    # requests already sent when the refusal came back may overlap; the slow start begins
    # once they are gone: then a full wave's worth (8) goes one by one, then all 8 again
    after = server.seen[server.first_refusal :]
    ones = [k for k in range(len(after) - 8) if after[k : k + 8] == [1] * 8]
    assert ones, after
    assert max(after[ones[0] + 8 :]) > 1


@pytest.mark.asyncio
async def test_no_slow_start_when_no_cap_is_hit_or_the_quota_is_stated() -> None:
    texts = texts_of(400)
    plain = Overlap()  # never refuses: the ordinary case pays nothing
    async with openai(plain.handle) as emb:
        await emb.embed_many(texts)
    assert max(plain.seen[:8]) > 1
    stated = Overlap(
        request_cap=300,
        headers={
            "x-ratelimit-limit-tokens": "100000000",
            "x-ratelimit-remaining-tokens": "9999999",
        },
    )
    async with openai(stated.handle) as emb:
        await emb.embed_many(texts[:4])  # the quota is stated before any cap refusal
        await emb.embed_many(texts[4:])
        assert not emb.stats().retries  # no 429 either
    assert stated.first_refusal is not None
    assert max(stated.seen[stated.first_refusal : stated.first_refusal + 8]) > 1


@pytest.mark.asyncio
async def test_a_given_token_cap_starts_slow_unless_a_rate_is_given() -> None:
    texts = texts_of(200)
    capped = Overlap()
    async with openai(capped.handle, limits=Limits(max_tokens_per_request=300)) as emb:
        await emb.embed_many(texts)
        limit = emb.stats().concurrency_limit
    assert capped.seen[:8] == [1] * 8  # one by one at first
    assert max(capped.seen[8:]) > 1  # then all 8
    assert limit == 8.0
    paced = Overlap()
    limits = Limits(max_tokens_per_request=300, tokens_per_minute=60_000_000)
    async with openai(paced.handle, limits=limits) as emb:
        await emb.embed_many(texts)
    assert max(paced.seen[:8]) > 1
