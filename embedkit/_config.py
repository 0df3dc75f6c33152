"""The vocabulary every layer shares: types, defaults and configuration value objects."""

from __future__ import annotations

import dataclasses
import math
import os
import ssl
from typing import Literal

import httpx
import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MAX_BATCH_CHARS",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "DEFAULT_TIMEOUT",
    "OPENAI_MAX_BATCH_SIZE",
    "OPENAI_MAX_TOKENS_PER_REQUEST",
    "PROVIDER_MAX_BATCH_SIZE",
    "Api",
    "CertTypes",
    "Connection",
    "Dtype",
    "Kind",
    "Limits",
    "Matrix",
    "Pooling",
    "Priority",
    "VerifyTypes",
    "check_priority",
    "check_seconds",
    "default_max_batch_size",
]

#: An embedding matrix: (n, dim) float32, C-contiguous, one row per text.
Matrix = npt.NDArray[np.float32]
#: How token-level answers are pooled into one vector per text.
Pooling = Literal["mean", "cls"]

#: ``verify=``: True (httpx's trust store), False (no verification: testing only), a CA
#: bundle file or directory, or a ready `ssl.SSLContext`.
VerifyTypes = bool | str | os.PathLike[str] | ssl.SSLContext
#: ``cert=``: a client certificate file (with its key), ``(cert, key)`` or
#: ``(cert, key, password)``, as httpx takes it.
CertTypes = str | tuple[str, str] | tuple[str, str, str]

#: The protocols an embedder speaks: a wire format, or a model in this process.
Api = Literal["hf", "tei", "openai", "local", "cohere", "voyage", "gemini", "ollama"]
#: What a text is for: a search query, or a document to be searched. Each protocol maps it
#: to its own field (Cohere/Voyage `input_type`, Gemini `taskType`, `prompt_name`).
Kind = Literal["query", "document"]
#: The element type of the vectors an embedder returns: float32, one signed or unsigned
#: byte a dimension, or one bit a dimension packed eight to a byte ("binary" as int8 offset
#: by -128, "ubinary" as uint8), as Cohere and Voyage name them.
Dtype = Literal["float32", "int8", "uint8", "binary", "ubinary"]

#: Which lane a call's texts queue in: "interactive" texts are put in the next batch
#: before any "bulk" text queued earlier (bulk texts fill the rest of each batch).
Priority = Literal["interactive", "bulk"]

DEFAULT_MAX_BATCH_SIZE = 32
#: The default `max_batch_size` for `api="openai"`. OpenAI-compatible servers state no batch
#: limit (OpenAI and Infinity accept 2,048 inputs) and pay per request (HTTP and validation
#: on the server; OpenAI's requests-per-minute quota), so a request carries more texts.
OPENAI_MAX_BATCH_SIZE = 64
#: The default `max_tokens_per_request` for `api="openai"`: OpenAI refuses a request whose
#: inputs sum to more ("max_tokens_per_request: Requested 346134 tokens, max 300000").
OPENAI_MAX_TOKENS_PER_REQUEST = 300_000
DEFAULT_MAX_CONCURRENCY = 8
#: Characters a request carries at most by default, to stay under servers' body limits.
DEFAULT_MAX_BATCH_CHARS = 500_000
#: Generous reads: a held request (x-wait-for-model) or a busy server can take a while.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0, pool=None)
#: Largest response body accepted (bytes as received): far above any embedding answer.
DEFAULT_MAX_RESPONSE_SIZE = 256 * 1024 * 1024


#: Texts a request for the hosted APIs, from each provider's reference (see
#: docs/providers.md): Cohere 96 a call, Voyage 128 (the list limit its SDK documents;
#: newer models accept more), Gemini 100 requests a batchEmbedContents call. Ollama states
#: no limit; 32 keeps one request's latency short on a local GPU or CPU.
PROVIDER_MAX_BATCH_SIZE = {
    "openai": OPENAI_MAX_BATCH_SIZE,
    "cohere": 96,
    "voyage": 128,
    "gemini": 100,
    "ollama": 32,
}


def default_max_batch_size(api: str) -> int:
    """The `max_batch_size` an embedder for `api` uses unless told one."""
    return PROVIDER_MAX_BATCH_SIZE.get(api, DEFAULT_MAX_BATCH_SIZE)


def _check_rate(name: str, rate: float | None) -> None:
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"{name} must be a positive number")


def check_seconds(name: str, seconds: float | None) -> None:
    """A time limit must be a positive, finite number of seconds (or None: no limit)."""
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(seconds).__name__}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{name} must be a positive number of seconds (or None), not {seconds!r}")


def check_priority(priority: object) -> None:
    """`priority=` must be "interactive" or "bulk"."""
    if priority not in ("interactive", "bulk"):
        raise ValueError(f"priority must be 'interactive' or 'bulk', not {priority!r}")


def _check_timeout(timeout: httpx.Timeout | float | None) -> None:
    """A zero or negative timeout would fail every request: refuse it here instead."""
    if isinstance(timeout, httpx.Timeout):
        values = [("connect", timeout.connect), ("read", timeout.read)]
        values += [("write", timeout.write), ("pool", timeout.pool)]
    elif timeout is None:
        return
    else:
        values = [("", timeout)]
    for part, value in values:
        if value is not None and not (value > 0):
            where = f"timeout.{part}" if part else "timeout"
            raise ValueError(
                f"{where} must be a positive number of seconds (or None for no limit), "
                f"not {value!r}"
            )


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much an embedder sends at once, and how fast: `limits=embedkit.Limits(...)`.

    Like `httpx.Limits`, a value object: build it once, pass it to any embedder. Every field
    is checked when it is built, so a bad limit fails before anything is sent.

    Attributes:
        max_batch_size: texts per request at most (lowered to the server's own limit);
            None: `PROVIDER_MAX_BATCH_SIZE` for openai (64), cohere (96), voyage (128),
            gemini (100) and ollama (32), else `DEFAULT_MAX_BATCH_SIZE` (32). A hosted
            API's documented limit also caps a larger value.
        max_batch_chars: characters per request at most, to stay under body limits.
        max_concurrency: requests in flight at most; adaptive below this after 429s. With
            several URLs, per replica (an `Endpoint` may set its own); the total is the sum.
        adaptive_concurrency: halve concurrency on 429 and grow it back on success, and
            learn a request pace from 429s.
        requests_per_second: a client-side request rate limit (token bucket).
        inputs_per_second: a client-side limit on texts per second.
        dedup: send identical in-flight texts once.
        tokens_per_minute: a client-side limit on tokens a minute (hosted APIs' TPM quota);
            paced per request by the tokens counted (see the "tokens and quotas" guide).
            Without it, the server's `x-ratelimit-*` headers pace, else the 429s.
        max_tokens_per_request: tokens one request carries at most, summed over its texts;
            None: `OPENAI_MAX_TOKENS_PER_REQUEST` (300,000) for openai, else no limit.
            Lowered to the server's own when a 400 names it.
        max_tokens_per_input: tokens one text may have (None: the server's `/info`
            `max_input_length` for TEI, else unknown until a 400 names it); longer texts
            go by `on_overflow`.
        max_queue_wait: seconds a call's texts may wait in the client's queue before the
            call fails with `DeadlineExceededError` (None: no limit). Only queueing counts:
            a text already sent is not timed by it. It times `embed` and `embed_many` calls;
            bulk streams (`embed_stream`, `embed_file`) queue as long as they need.
        deadline: the default `deadline=` of `embed` and `embed_many`: seconds a call may
            take in all (queueing, attempts, backoff) before `DeadlineExceededError`; a wait
            the server asks for (429 `Retry-After`, a loading model) that would not fit
            raises at once instead. None: no deadline.
    """

    max_batch_size: int | None = None
    max_batch_chars: int | None = DEFAULT_MAX_BATCH_CHARS
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    adaptive_concurrency: bool = True
    requests_per_second: float | None = None
    inputs_per_second: float | None = None
    dedup: bool = True
    tokens_per_minute: float | None = None
    max_tokens_per_request: int | None = None
    max_tokens_per_input: int | None = None
    max_queue_wait: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_batch_chars is not None and self.max_batch_chars < 1:
            raise ValueError("max_batch_chars must be at least 1")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        _check_rate("requests_per_second", self.requests_per_second)
        _check_rate("inputs_per_second", self.inputs_per_second)
        _check_rate("tokens_per_minute", self.tokens_per_minute)
        for name in ("max_tokens_per_request", "max_tokens_per_input"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an int or None")
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        check_seconds("max_queue_wait", self.max_queue_wait)
        check_seconds("deadline", self.deadline)

    def batch_size_for(self, api: str) -> int:
        """`max_batch_size`, or the default for `api` when it is None."""
        return (
            self.max_batch_size
            if self.max_batch_size is not None
            else (default_max_batch_size(api))
        )

    def tokens_per_request_for(self, api: str) -> int | None:
        """`max_tokens_per_request`, or the default for `api` when it is None."""
        if self.max_tokens_per_request is not None:
            return self.max_tokens_per_request
        return OPENAI_MAX_TOKENS_PER_REQUEST if api == "openai" else None


@dataclasses.dataclass(frozen=True)
class Connection:
    """How an HTTP backend reaches its server: `connection=embedkit.Connection(...)`.

    Only HTTP backends read it (`api="local"` refuses one that sets a transport or client).

    Attributes:
        timeout: httpx timeout for the client embedkit builds.
        verify: TLS verification as httpx takes it: True (httpx's trust store: certifi,
            or `SSL_CERT_FILE`/`SSL_CERT_DIR`), False, a CA bundle path, or an `ssl.SSLContext`.
        cert: a client certificate: a file, `(cert, key)` or `(cert, key, password)`.
        http2: send over httpx's stock transport with HTTP/2 (`pip install embedkit[http2]`).
        max_response_size: a response body larger than this (bytes as received) is a
            `ResponseError`; None: no limit.
        transport: an httpx transport (e.g. `httpx.MockTransport` in tests).
        http_client: an `httpx.AsyncClient` to use instead (you keep ownership).
        encoding_format: openai: "base64" (default, fast) or "float".
        wait_for_model: force HF's `x-wait-for-model` header on or off; default: on after
            the first 503 "loading".
        use_cache: False asks HF not to answer from its result cache.
        warm: after the first answer, open connections up to the concurrency limit in the
            background (embedkit's own transport only), so a later burst does not wait for
            TCP/TLS handshakes; False: each opens when a request needs it.
    """

    timeout: httpx.Timeout | float | None = dataclasses.field(
        default_factory=lambda: DEFAULT_TIMEOUT
    )
    verify: VerifyTypes = True
    cert: CertTypes | None = None
    http2: bool = False
    max_response_size: int | None = DEFAULT_MAX_RESPONSE_SIZE
    transport: httpx.AsyncBaseTransport | None = None
    http_client: httpx.AsyncClient | None = None
    encoding_format: Literal["base64", "float"] = "base64"
    wait_for_model: bool | None = None
    use_cache: bool | None = None
    warm: bool = True

    def __post_init__(self) -> None:
        _check_timeout(self.timeout)
        if self.encoding_format not in ("base64", "float"):
            raise ValueError("encoding_format must be 'base64' or 'float'")
        if self.max_response_size is not None and self.max_response_size < 1:
            raise ValueError("max_response_size must be a positive number of bytes, or None")


#: The keywords each value object took when they were flat `AsyncEmbedder` arguments
#: (fields added since, such as `max_queue_wait`, were never flat keywords).
LIMITS_FIELDS = frozenset(
    {
        "max_batch_size",
        "max_batch_chars",
        "max_concurrency",
        "adaptive_concurrency",
        "requests_per_second",
        "inputs_per_second",
        "dedup",
    }
)
CONNECTION_FIELDS = frozenset(f.name for f in dataclasses.fields(Connection)) - {"warm"}
