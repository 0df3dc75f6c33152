"""The ASGI app: routes for the five protocols (HF, TEI, OpenAI, Ollama, Cohere) over one
`Engine`.

Every embedding request takes the same path, whatever protocol it speaks:

1. the API key, when the server has one (`Authorization: Bearer ...`, constant-time compare);
2. the body, refused over `max_body_bytes` (413) before it is read whole, then parsed JSON;
3. the protocol's own fields (`Dialect.parse`) and the batch size limit;
4. readiness: while the model loads, a 503 with `estimated_time`, or, with
   `x-wait-for-model: true`, the request is held until the model is ready;
5. the model's own limits (prompt names, dimensions) and the texts-in-flight limit (429);
6. the engine's scheduler, shared by all concurrent requests, then per-request dimensions and
   normalization, and the protocol's answer.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._backends import LocalModel, normalize_rows
from .._errors import ClientClosedError, EmbedkitError, InputError
from .._version import __version__
from ._common import ApiError, Dialect, EmbedRequest, json_response
from ._engine import Engine, Loader
from .cohere import CohereDialect
from .hf import HFDialect
from .ollama import OllamaDialect
from .openai import OpenAIDialect
from .tei import TEIDialect

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

logger = logging.getLogger("embedkit.serve")

#: TEI's body limit: larger bodies get 413.
DEFAULT_MAX_BODY_BYTES = 2_000_000

_HF = HFDialect()
_TEI = TEIDialect()
_OPENAI = OpenAIDialect()
_OLLAMA = OllamaDialect()
_COHERE = CohereDialect()


class _Server:
    """The per-app settings and the request pipeline the routes share."""

    def __init__(
        self,
        engine: Engine,
        *,
        api_key: str | None,
        max_client_batch_size: int,
        max_body_bytes: int,
    ) -> None:
        self.engine = engine
        self._key = api_key.encode("utf-8") if api_key else None
        self.max_client_batch_size = max_client_batch_size
        self.max_body_bytes = max_body_bytes

    def authorized(self, request: Request) -> bool:
        if self._key is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8"), self._key)

    async def read_body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        too_large = ApiError(
            "too_large", f"Failed to buffer the request body: length limit exceeded ({limit} bytes)"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def loading_error(self) -> ApiError:
        engine = self.engine
        if engine.state == "failed":
            return ApiError("backend", f"Model {engine.model_id} failed to load: {engine.failure}")
        return ApiError(
            "loading",
            f"Model {engine.model_id} is currently loading",
            estimated_time=engine.estimated_time(),
        )

    async def handle(self, request: Request, dialect: Dialect) -> Response:
        try:
            return await self._handle(request, dialect)
        except ApiError as error:
            return dialect.error(error)

    async def _handle(self, request: Request, dialect: Dialect) -> Response:
        if not self.authorized(request):
            raise ApiError("unauthorized", "Invalid credentials in Authorization header")
        body = await self.read_body(request)
        try:
            payload: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError("bad_json", f"Failed to parse the request body as JSON: {exc}") from exc
        parsed = dialect.parse(payload)
        n = len(parsed.texts)
        if n > self.max_client_batch_size:
            raise ApiError(
                "validation",
                f"batch size {n} > maximum allowed batch size {self.max_client_batch_size}",
                param="input" if dialect is _OPENAI else "inputs",
            )
        engine = self.engine
        if engine.state == "loading":
            wanted = request.headers.get("x-wait-for-model", "").strip().lower() in ("true", "1")
            if not (wanted or parsed.wait_for_model):
                raise self.loading_error()
            await engine.wait_ready()
        model = engine.model
        if model is None:
            raise self.loading_error()
        if parsed.kind is not None and parsed.prompt_name is None and parsed.kind in model.prompts:
            parsed.prompt_name = parsed.kind
        self.check_model_limits(model, parsed)
        if engine.inputs_in_flight + n > engine.max_concurrent_requests:
            raise ApiError("overloaded", "Model is overloaded")
        try:
            raw = await engine.embed(
                parsed.texts,
                prompt_name=parsed.prompt_name,
                truncate=parsed.truncate,
                truncation_direction=parsed.truncation_direction,
            )
        except InputError as exc:
            raise ApiError(
                "validation", exc.message, param="input" if dialect is _OPENAI else "inputs"
            ) from exc
        except ClientClosedError as exc:
            raise ApiError("backend", "the server is shutting down") from exc
        except EmbedkitError as exc:
            logger.error("embedding failed: %s", exc)
            raise ApiError("backend", str(exc)) from exc
        matrix = raw[:, : parsed.dimensions] if parsed.dimensions is not None else raw
        matrix = normalize_rows(matrix) if parsed.normalize else np.ascontiguousarray(matrix)
        tokens = (
            await engine.count_tokens(parsed.texts, parsed.prompt_name)
            if dialect.counts_tokens
            else 0
        )
        return dialect.render(matrix, parsed, engine.model_id, tokens)

    @staticmethod
    def check_model_limits(model: LocalModel, parsed: EmbedRequest) -> None:
        if parsed.prompt_name is not None and parsed.prompt_name not in model.prompts:
            known = ", ".join(sorted(model.prompts)) or "none"
            raise ApiError(
                "validation",
                f"Prompt name `{parsed.prompt_name}` is not defined; the model's prompts: {known}",
                param="prompt_name",
            )
        if parsed.dimensions is not None and parsed.dimensions > model.dimension:
            raise ApiError(
                "validation",
                f"`dimensions` must be at most the model's dimension {model.dimension}, "
                f"got {parsed.dimensions}",
                param="dimensions",
            )

    # ------------------------------------------------------------------ the routes

    async def hf(self, request: Request) -> Response:
        return await self.handle(request, _HF)

    async def tei(self, request: Request) -> Response:
        return await self.handle(request, _TEI)

    async def openai(self, request: Request) -> Response:
        return await self.handle(request, _OPENAI)

    async def ollama(self, request: Request) -> Response:
        return await self.handle(request, _OLLAMA)

    async def cohere(self, request: Request) -> Response:
        return await self.handle(request, _COHERE)

    async def health(self, request: Request) -> Response:
        engine = self.engine
        if engine.state == "ready":
            return Response(status_code=200)
        error = self.loading_error()
        body: dict[str, Any] = {"error": error.message, "error_type": "Unhealthy"}
        if error.estimated_time is not None:
            body["estimated_time"] = error.estimated_time
        return json_response(body, 503)

    async def info(self, request: Request) -> Response:
        if not self.authorized(request):
            return Response(status_code=401)
        engine = self.engine
        model = engine.model
        return json_response(
            {
                "model_id": engine.model_id,
                "model_sha": None,
                "model_dtype": "float32",
                "model_type": {"embedding": {"pooling": "model"}},
                "max_concurrent_requests": engine.max_concurrent_requests,
                "max_input_length": model.max_seq_length if model is not None else None,
                "max_batch_tokens": None,
                "max_batch_requests": engine.max_batch_size,
                "max_client_batch_size": self.max_client_batch_size,
                "auto_truncate": engine.auto_truncate,
                "tokenization_workers": 1,
                "version": f"embedkit-{__version__}",
                "sha": None,
                "docker_label": None,
                "embedkit": {
                    "state": engine.state,
                    "dimension": model.dimension if model is not None else None,
                    "prompts": sorted(model.prompts) if model is not None else [],
                    "device": model.device if model is not None else None,
                    "batching": engine.stats(),
                },
            }
        )

    async def models(self, request: Request) -> Response:
        if not self.authorized(request):
            return _OPENAI.error(
                ApiError("unauthorized", "Invalid credentials in Authorization header")
            )
        model_id = self.engine.model_id
        return json_response(
            {
                "object": "list",
                "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "embedkit"}],
            }
        )


def create_app(
    model: str | LocalModel | None = None,
    *,
    api_key: str | None = None,
    device: str | None = None,
    max_client_batch_size: int = 32,
    max_batch_size: int = 32,
    max_concurrent_requests: int = 512,
    auto_truncate: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    load: Loader | None = None,
) -> Starlette:
    """The ASGI app of `embedkit serve`. Run it with uvicorn (see `run`), or test it in-process.

    The model loads in the background when the app's lifespan starts; until it is ready,
    `GET /health` answers 503 and embedding requests a 503 "currently loading" (or are held,
    with `x-wait-for-model: true`).

    Args:
        model: a model name or folder, None for the packaged all-MiniLM-L6-v2, or a loaded
            `LocalModel`.
        api_key: require `Authorization: Bearer <api_key>` on every route but `/health`.
        device: the torch device ("cpu" by default).
        max_client_batch_size: texts per request at most (larger requests get TEI's
            "batch size N > maximum allowed batch size M", which embedkit clients split on).
        max_batch_size: texts per model call; concurrent requests are batched up to this.
        max_concurrent_requests: texts in flight across requests before answering 429.
        auto_truncate: truncate inputs longer than the model reads when a request does not
            say `truncate`; False refuses them (422), as TEI without `--auto-truncate`.
        max_body_bytes: request bodies larger than this get 413.
        load: how to load the model (a seam for tests): an async callable returning a
            `LocalModel`.
    """
    if max_client_batch_size < 1 or max_batch_size < 1 or max_concurrent_requests < 1:
        raise ValueError("batch sizes and max_concurrent_requests must be at least 1")
    engine = Engine(
        model,
        device=device,
        load=load,
        max_batch_size=max_batch_size,
        max_concurrent_requests=max_concurrent_requests,
        auto_truncate=auto_truncate,
    )
    server = _Server(
        engine,
        api_key=api_key,
        max_client_batch_size=max_client_batch_size,
        max_body_bytes=max_body_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(engine.run)
            yield
            tg.cancel_scope.cancel()

    routes = [
        Route("/models/{model:path}", server.hf, methods=["POST"]),
        Route(
            "/hf-inference/models/{model:path}/pipeline/feature-extraction",
            server.hf,
            methods=["POST"],
        ),
        Route("/embed", server.tei, methods=["POST"]),
        Route("/info", server.info, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/embeddings", server.openai, methods=["POST"]),
        Route("/embeddings", server.openai, methods=["POST"]),
        Route("/api/embed", server.ollama, methods=["POST"]),
        Route("/v2/embed", server.cohere, methods=["POST"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/models", server.models, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.engine = engine
    return app
