"""OpenTelemetry spans and metrics for embedding calls, after the GenAI semantic conventions.

One span per logical call (`embed`, `embed_many`), covering its queueing, its retries and
its backoff: named `embeddings {model}`, kind CLIENT, with `gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.embeddings.dimension.count`, `gen_ai.request.encoding_formats`
(openai), `server.address`/`server.port`, `gen_ai.usage.input_tokens` when known, and
`error.type` when the call failed. The same call is recorded in the histograms
`gen_ai.client.operation.duration` (seconds) and, when the input tokens are known,
`gen_ai.client.token.usage` (`gen_ai.token.type=input`). Requests are not spans of their own:
a request carries texts of several calls, and nested spans would count the same tokens twice.

Nothing a caller sends is recorded: no text, no token, no server message (an error is
recorded by its type only, and without an exception event, whose message could quote input).

Only `opentelemetry-api` is used (the `otel` extra), imported when an embedder opens, never by
`import embedkit`. Without an SDK configured by the application the API is a no-op. The names
follow the OpenTelemetry GenAI conventions (gen-ai-spans.md, gen-ai-metrics.md of
open-telemetry/semantic-conventions, v1.37+; the bucket boundaries are the ones they advise).
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Awaitable
from typing import Any

from ._config import Matrix
from ._errors import StatusError
from ._version import __version__

__all__ = ["Telemetry", "telemetry_available"]

#: the API's own providers, in place until the application configures an SDK
_NO_OP = frozenset(
    {"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"}
)

#: advised by the conventions for gen_ai.client.operation.duration (seconds)
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24]
_DURATION_BUCKETS += [20.48, 40.96, 81.92]
#: advised for gen_ai.client.token.usage (tokens): powers of 4 from 1 to 4^13
_TOKEN_BUCKETS = [4**k for k in range(14)]


def telemetry_available() -> bool:
    """Whether `opentelemetry-api` is installed (`pip install embedkit[otel]`)."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except ModuleNotFoundError:
        return False


def error_type(exc: BaseException) -> str:
    """`error.type`: the status code of a server's error answer, else the exception's class."""
    if isinstance(exc, StatusError):
        return str(exc.status_code)
    return type(exc).__name__


class Telemetry:
    """Records embedding calls as spans and metrics (see the module docstring).

    Args:
        model: the model id (`gen_ai.request.model`), if known.
        address, port: the server (`server.address`, `server.port`), if one.
        encoding_format: what the request asks for (`gen_ai.request.encoding_formats`).
    """

    @classmethod
    def for_backend(
        cls, backend: object, *, model: str | None, encoding_format: str | None
    ) -> Telemetry:
        """Instruments for an embedder over `backend`: `server.address`/`server.port` are its
        one server's (none for a local model or several replicas)."""
        protocol = getattr(backend, "protocol", None)
        endpoint = getattr(protocol, "endpoint", None)
        address: str | None = None
        port: int | None = None
        if isinstance(endpoint, str):
            import httpx

            url = httpx.URL(endpoint)
            address = url.host or None
            port = url.port or {"http": 80, "https": 443}.get(url.scheme)
        return cls(model=model, address=address, port=port, encoding_format=encoding_format)

    def __init__(
        self,
        *,
        model: str | None,
        address: str | None = None,
        port: int | None = None,
        encoding_format: str | None = None,
    ) -> None:
        from opentelemetry import metrics, trace

        self._trace = trace
        self._metrics = metrics
        self._enabled = False
        self._recheck_at = -math.inf
        self._tracer = trace.get_tracer("embedkit", __version__)
        meter = metrics.get_meter("embedkit", __version__)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.name = f"embeddings {model}" if model else "embeddings"
        common: dict[str, Any] = {"gen_ai.operation.name": "embeddings"}
        if model:
            common["gen_ai.request.model"] = model
        if address:
            common["server.address"] = address
            if port is not None:
                common["server.port"] = port
        self._metric_attributes = dict(common)
        if encoding_format:
            common["gen_ai.request.encoding_formats"] = [encoding_format]
        self._span_attributes = common

    def enabled(self) -> bool:
        """Whether the application has configured a tracer or meter provider (an SDK).

        Until it has, the API's proxies record nothing, yet a span through them still costs
        about as much as the rest of an `embed` call: then `observe` is skipped. Asked again
        every second at most (reading the providers costs two environment lookups), so a
        provider set after the embedder opened is used from then on.
        """
        now = time.monotonic()
        if now < self._recheck_at:
            return self._enabled
        self._recheck_at = now + 1.0
        self._enabled = type(self._trace.get_tracer_provider()).__name__ not in _NO_OP or (
            type(self._metrics.get_meter_provider()).__name__ not in _NO_OP
        )
        return self._enabled

    async def observe(self, call: Awaitable[Matrix], input_tokens: int | None = None) -> Matrix:
        """Await `call` (one logical embedding call) inside its span, and record it.

        The span is not made the current one: requests carry texts of several calls, so
        nothing below belongs to this call alone (and attaching a context costs as much).
        """
        started = time.perf_counter()
        span = self._tracer.start_span(
            self.name, kind=self._trace.SpanKind.CLIENT, attributes=self._span_attributes
        )
        try:
            try:
                matrix = await call
            except BaseException as exc:
                kind_of_error = error_type(exc)
                span.set_attribute("error.type", kind_of_error)
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
                self._duration.record(
                    time.perf_counter() - started,
                    {**self._metric_attributes, "error.type": kind_of_error},
                )
                raise
            span.set_attribute("gen_ai.embeddings.dimension.count", int(matrix.shape[-1]))
            if input_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
            self._duration.record(time.perf_counter() - started, self._metric_attributes)
            if input_tokens is not None:
                self._tokens.record(
                    input_tokens, {**self._metric_attributes, "gen_ai.token.type": "input"}
                )
            return matrix
        finally:
            span.end()
