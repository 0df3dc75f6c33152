"""The token-quota server: `benchmarks._server` with the limits of a hosted API, in tokens.

    python -m benchmarks._tokenserver --tpm 1200000 --request-cap 16384 --input-cap 2048

An OpenAI-compatible `POST /v1/embeddings` (base64 or float) on the same raw-asyncio
HTTP/1.1 server and cost model as `benchmarks._server`, which adds, in this order:

* a per-input cap: an input over `--input-cap` tokens gets vLLM's 400, "This model's
  maximum context length is N tokens. However, you requested M tokens in the input for
  embedding generation." (vllm-project/vllm#19798);
* a per-request cap: inputs summing to more than `--request-cap` get OpenAI's 400,
  "max_tokens_per_request: Requested M tokens, max N" (code `max_tokens_per_request`;
  /work/shared/HOSTED.md);
* a tokens-per-minute quota: a bucket refilled at TPM/60 a second holding `--burst-s`
  seconds of it; a request whose tokens it cannot pay gets OpenAI's token 429, "... on
  tokens per min (TPM): Limit X, Used Y, Requested Z. Please try again in Ws." (and
  `retry-after-ms` with the headers on);
* with `--headers 1`, on every answer OpenAI's `x-ratelimit-{limit,remaining,reset}-
  {requests,tokens}` (resets as Go durations, e.g. `1.5s`, `20ms`); the request side is a
  generous RPM (`--rpm`), also enforced.

Tokens are counted by this server's own rule, not characters / 4: every word costs one
token plus one per 6 letters beyond its first, and every input two more (the [CLS] and
[SEP] of a BERT model). Every answer carries `usage.prompt_tokens`.

`GET /stats` adds `tokens_ok` (tokens admitted), `refused_size` (400s for size),
`refused_size_late` (those whose request arrived over `LATE_AFTER_S` after the first one
was answered),
`rejected` (429s), `capacity` (the bucket's size) and `rate` (tokens/s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time

import orjson

from ._server import App, Bucket, Connection, response, row_index
from ._server import main as base_main
from ._server import parse_args as base_args

_TASKS: set[asyncio.Task[None]] = set()
#: A size refusal is "late" (not of the first wave, already on the wire) when its request
#: arrives this long after the first size refusal was answered (loopback: a round trip is
#: well under a millisecond; this leaves room for a loaded machine).
LATE_AFTER_S = 0.05


def tokens_of(text: str) -> int:
    """This server's token rule (see the module docstring)."""
    return 2 + sum(1 + (len(word) - 1) // 6 for word in text.split())


def go_duration(seconds: float) -> str:
    """A Go-style duration, as OpenAI writes its resets: `6m0s`, `1.5s`, `17ms`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"


class TokenBucket(Bucket):
    """`Bucket` in tokens: `take(n)` admits n tokens or says how long until it could."""

    def level(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return self.tokens

    def take_n(self, n: float) -> float:
        if self.level() >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class TokenApp(App):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.tpm = args.tpm
        rate = args.tpm / 60.0
        self.tokens = TokenBucket(rate, rate * args.burst_s)
        self.rpm = args.rpm
        self.requests_bucket = TokenBucket(args.rpm / 60.0, args.rpm / 60.0 * args.burst_s)
        self.request_cap = args.request_cap
        self.input_cap = args.input_cap
        self.headers = bool(args.headers)
        self.reset_counts()

    def reset_counts(self) -> None:
        self.tokens_ok = 0
        self.refused_size = 0
        self.refused_size_late = 0
        self.first_size_refusal: float | None = None
        self.tokens.tokens = self.tokens.burst
        self.tokens.last = time.monotonic()
        self.requests_bucket.tokens = self.requests_bucket.burst

    def stats(self) -> bytes:
        data = orjson.loads(self.counters.as_json())
        data.update(
            tokens_ok=self.tokens_ok,
            refused_size=self.refused_size,
            refused_size_late=self.refused_size_late,
            capacity=self.tokens.burst,
            rate=self.tokens.rate,
        )
        return orjson.dumps(data)

    def answer_headers(self) -> bytes:
        return self.limit_headers()

    def limit_headers(self) -> bytes:
        if not self.headers:
            return b""
        tokens, requests = self.tokens, self.requests_bucket
        left, left_requests = tokens.level(), requests.level()
        return (
            b"x-ratelimit-limit-requests: %d\r\nx-ratelimit-limit-tokens: %d\r\n"
            b"x-ratelimit-remaining-requests: %d\r\nx-ratelimit-remaining-tokens: %d\r\n"
            b"x-ratelimit-reset-requests: %s\r\nx-ratelimit-reset-tokens: %s\r\n"
            % (
                self.rpm,
                self.tpm,
                max(0, math.floor(left_requests)),
                max(0, math.floor(left)),
                go_duration((requests.burst - left_requests) / requests.rate).encode(),
                go_duration((tokens.burst - left) / tokens.rate).encode(),
            )
        )

    def size_refusal(self, message: str, code: str | None, arrived: float) -> bytes:
        self.refused_size += 1
        if self.first_size_refusal is None:
            self.first_size_refusal = time.monotonic()
        elif arrived > self.first_size_refusal + LATE_AFTER_S:
            self.refused_size_late += 1
        error: dict[str, object] = {"message": message, "type": "invalid_request_error"}
        if code:
            error["code"] = code
        return response(400, b"application/json", orjson.dumps({"error": error}))

    def admit(self, body: bytes, arrived: float) -> tuple[bytes | None, int, bytes]:
        """(refusal, texts, answer body): the refusal to send now, or the answer to serve."""
        payload = orjson.loads(body)
        inputs = payload.get("input") if isinstance(payload, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            bad = b'{"error":{"message":"input must be a non-empty list"}}'
            return response(400, b"application/json", bad), 0, b""
        counts = [tokens_of(t) for t in inputs]
        for count in counts:
            if count > self.input_cap:
                message = (
                    f"This model's maximum context length is {self.input_cap} tokens. However, "
                    f"you requested {count} tokens in the input for embedding generation. "
                    "Please reduce the length of the input."
                )
                return self.size_refusal(message, None, arrived), 0, b""
        total = sum(counts)
        if total > self.request_cap:
            message = f"max_tokens_per_request: Requested {total} tokens, max {self.request_cap}"
            return self.size_refusal(message, "max_tokens_per_request", arrived), 0, b""
        wait = max(self.requests_bucket.take_n(1.0), 0.0)
        if wait == 0:
            wait = self.tokens.take_n(float(total))
            if wait > 0:  # give the request permit back: it was not admitted
                self.requests_bucket.tokens += 1.0
        if wait > 0:
            self.counters.rejected += 1
            used = self.tpm - max(0, math.floor(self.tokens.level()))
            message = (
                "Rate limit reached for bench in organization org-bench on tokens per min "
                f"(TPM): Limit {self.tpm}, Used {used}, Requested {total}. "
                f"Please try again in {wait:.3f}s. Visit https://platform.openai.com/account/"
                "rate-limits to learn more."
            )
            extra = self.limit_headers()
            if self.headers:
                extra += b"retry-after-ms: %d\r\n" % max(1, math.ceil(wait * 1000))
            body429 = orjson.dumps({"error": {"message": message, "type": "tokens"}})
            return response(429, b"application/json", body429, extra), 0, b""
        self.tokens_ok += total
        n = len(inputs)
        self.counters.texts += n
        self.counters.max_batch = max(self.counters.max_batch, n)
        rows = [row_index(t) for t in inputs]
        return None, n, self.openai_body(payload, rows, total)


class TokenConnection(Connection):
    app: TokenApp

    def handle(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        app = self.app
        if method == b"GET" and path == b"/stats":
            self.send(response(200, b"application/json", app.stats()), close)
            return
        if path == b"/reset":
            app.counters.reset()
            app.reset_counts()
            self.send(response(200, b"text/plain", b"ok"), close)
            return
        if method == b"GET":
            super().handle(method, path, body, close)
            return
        arrived = time.monotonic()
        app.counters.requests += 1
        if app.counters.first is None:
            app.counters.first = arrived
        refusal, n, answer = app.admit(body, arrived)
        if refusal is not None:
            self.send(refusal, close)
            return
        self.busy = True
        task = asyncio.get_running_loop().create_task(self.slow(n, answer, close))
        task.add_done_callback(_TASKS.discard)
        _TASKS.add(task)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tpm", type=int, default=1_200_000, help="tokens per minute")
    parser.add_argument("--rpm", type=int, default=60_000, help="requests per minute")
    parser.add_argument("--burst-s", type=float, default=2.0, help="seconds of TPM in a burst")
    parser.add_argument("--request-cap", type=int, default=16_384)
    parser.add_argument("--input-cap", type=int, default=2_048)
    parser.add_argument("--headers", type=int, default=1, help="send x-ratelimit-* (1) or not")
    return base_args(argv, parser)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(base_main(parse_args(), TokenApp, TokenConnection))
