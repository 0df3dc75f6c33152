"""OpenTelemetry: one span per logical call, the GenAI attributes and histograms, no secrets.

The SDK's in-memory exporters are installed as the global providers once for this module
(OpenTelemetry allows setting them once per process); each test clears what they hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import Histogram, MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import (  # noqa: E402
    AggregationTemporality,
    InMemoryMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

import embedkit  # noqa: E402
from embedkit import AuthenticationError, Connection, RetryPolicy  # noqa: E402
from embedkit._telemetry import Telemetry  # noqa: E402

from .fakes import vector_for  # noqa: E402

TOKEN = "sk-very-secret-token"
TEXTS = ["the first secret text", "the second secret text"]

_SPANS = InMemorySpanExporter()
# delta temporality: each read holds what was recorded since the one before
_METRICS = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
_PROVIDERS: list[Any] = []


@pytest.fixture
def otel() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    if not _PROVIDERS:
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(_SPANS))
        trace.set_tracer_provider(tracer_provider)
        meter_provider = MeterProvider(metric_readers=[_METRICS])
        metrics.set_meter_provider(meter_provider)
        _PROVIDERS.extend([tracer_provider, meter_provider])
    _SPANS.clear()
    _METRICS.get_metrics_data()  # drain what earlier tests recorded
    yield _SPANS, _METRICS
    _SPANS.clear()


def openai_server(fail_first: int = 0, status: int = 500) -> httpx.MockTransport:
    seen: list[int] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        if len(seen) <= fail_first:
            return httpx.Response(status, json={"error": {"message": f"no {TOKEN}"}})
        texts = orjson.loads(request.content)["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": vector_for(t).tolist()}
            for i, t in enumerate(texts)
        ]
        return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})

    return httpx.MockTransport(respond)


def embedder(transport: httpx.MockTransport, **options: Any) -> embedkit.AsyncEmbedder:
    return embedkit.AsyncEmbedder(
        "text-embedding-3-small",
        api="openai",
        url="https://api.example.com:8443/v1",
        token=TOKEN,
        connection=Connection(transport=transport, encoding_format="float"),
        **options,
    )


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend((metric, point) for point in metric.data.data_points)
    return found


def no_secret_in(span: ReadableSpan) -> None:
    values = [str(v) for v in (span.attributes or {}).values()]
    values += [str(v) for event in span.events for v in (event.attributes or {}).values()]
    values.append(str(span.status.description))
    for value in values:
        assert TOKEN not in value
        for text in TEXTS:
            assert text not in value


@pytest.mark.asyncio
async def test_one_client_span_per_call_with_the_genai_attributes(otel: Any) -> None:
    spans, reader = otel
    async with embedder(openai_server()) as emb:
        await emb.embed_many(TEXTS)
        await emb.embed(TEXTS[0])
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["embeddings text-embedding-3-small"] * 2
    span = finished[0]
    assert span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": "text-embedding-3-small",
        "gen_ai.request.encoding_formats": ("float",),
        "server.address": "api.example.com",
        "server.port": 8443,
        "gen_ai.embeddings.dimension.count": 32,
    }
    assert span.status.status_code is StatusCode.UNSET
    no_secret_in(span)

    [(metric, point)] = points(reader, "gen_ai.client.operation.duration")
    assert metric.unit == "s"
    assert point.count == 2
    assert dict(point.attributes) == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": "text-embedding-3-small",
        "server.address": "api.example.com",
        "server.port": 8443,
    }
    assert list(point.explicit_bounds)[:3] == [0.01, 0.02, 0.04]


@pytest.mark.asyncio
async def test_retries_stay_inside_the_one_span_of_the_call(otel: Any) -> None:
    spans, _ = otel
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    retry = RetryPolicy(sleep=record)
    async with embedder(openai_server(fail_first=2), retry=retry) as emb:
        await emb.embed("a")
    assert len(slept) == 2  # two retries...
    [span] = spans.get_finished_spans()  # ...one span
    assert "error.type" not in (span.attributes or {})


@pytest.mark.asyncio
async def test_a_failed_call_records_its_error_type_and_nothing_secret(otel: Any) -> None:
    spans, reader = otel
    async with embedder(openai_server(fail_first=99, status=401)) as emb:
        with pytest.raises(AuthenticationError):
            await emb.embed_many(TEXTS)
    [span] = spans.get_finished_spans()
    assert (span.attributes or {})["error.type"] == "401"
    assert span.status.status_code is StatusCode.ERROR
    assert span.events == ()  # no exception event: its message could quote the input
    no_secret_in(span)
    [(_, point)] = points(reader, "gen_ai.client.operation.duration")
    assert dict(point.attributes)["error.type"] == "401"


@pytest.mark.asyncio
async def test_token_usage_is_recorded_when_the_input_tokens_are_known(otel: Any) -> None:
    spans, reader = otel
    telemetry = Telemetry(model="m", address="h", port=1)

    async def call() -> Any:
        import numpy as np

        return np.zeros((3, 8), dtype=np.float32)

    await telemetry.observe(call(), input_tokens=17)
    [span] = spans.get_finished_spans()
    assert (span.attributes or {})["gen_ai.usage.input_tokens"] == 17
    [(metric, point)] = points(reader, "gen_ai.client.token.usage")
    assert metric.unit == "{token}"
    assert point.sum == 17
    assert dict(point.attributes) == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": "m",
        "server.address": "h",
        "server.port": 1,
        "gen_ai.token.type": "input",
    }
