"""The engine behind `embedkit serve`: one loaded model, fed by embedkit's own scheduler.

The model loads in the background while the server already answers (`/health` says 503 until
it is ready). Requests go through an `AsyncEmbedder` over a `LocalBackend`, so concurrent HTTP
requests are coalesced into full batches exactly as concurrent `embed()` calls are.

Options that change what the model reads (prompt, truncation) need their own batches, so each
combination gets its own embedder, started on first use and sharing the one loaded model.
Options that only change the output (normalize, dimensions) are applied per request to the raw
pooled vectors: requests that differ only there still share batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import anyio.abc
import anyio.to_thread

from .._backends import DEFAULT_LOCAL_MODEL, LocalBackend, LocalModel, Options, is_packaged
from .._client import AsyncEmbedder
from .._config import Limits, Matrix

__all__ = ["Engine", "Loader"]

logger = logging.getLogger("embedkit.serve")

#: Something that produces the loaded model (the default loads it on a worker thread).
Loader = Callable[[], Awaitable[LocalModel]]

_Mode = Literal["right", "left", "refuse"]


class Engine:
    """The model, its state (loading, ready, failed), and the embedders that feed it.

    Args:
        model: a model name or folder, None for the packaged default, or a loaded `LocalModel`.
        device: the torch device.
        load: how to obtain the model (a seam for tests); default: `LocalModel.load` on a
            worker thread.
        max_batch_size: texts per model call.
        max_concurrent_requests: texts in flight across all requests before answering 429.
        auto_truncate: truncate over-long inputs when a request does not say.
        load_estimate: seconds a load is expected to take, for `estimated_time`.
    """

    def __init__(
        self,
        model: str | LocalModel | None = None,
        *,
        device: str | None = None,
        load: Loader | None = None,
        max_batch_size: int = 32,
        max_concurrent_requests: int = 512,
        auto_truncate: bool = True,
        load_estimate: float = 20.0,
    ) -> None:
        if isinstance(model, LocalModel):
            self.model_id = model.model_id
            loaded = model

            async def given() -> LocalModel:
                return loaded

            self._load: Loader = load or given
        else:
            self.model_id = DEFAULT_LOCAL_MODEL if is_packaged(model) else str(model)
            name = model

            async def from_disk() -> LocalModel:
                return await anyio.to_thread.run_sync(
                    lambda: LocalModel.load(name, device=device), abandon_on_cancel=True
                )

            self._load = load or from_disk
        self.max_batch_size = max_batch_size
        self.max_concurrent_requests = max_concurrent_requests
        self.auto_truncate = auto_truncate
        self.load_estimate = load_estimate
        self.model: LocalModel | None = None
        self.state: Literal["loading", "ready", "failed"] = "loading"
        self.failure: str | None = None
        #: requests held until the model is ready (x-wait-for-model).
        self.held = 0
        #: texts being embedded right now, across requests.
        self.inputs_in_flight = 0
        self._started = time.monotonic()
        self._ready: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock: anyio.Lock | None = None
        self._embedders: dict[tuple[str | None, _Mode], AsyncEmbedder] = {}

    # ------------------------------------------------------------------- life cycle

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the embedders until cancelled; load the model in the background meanwhile."""
        self._ready = anyio.Event()
        self._lock = anyio.Lock()
        self._started = time.monotonic()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._load_model)
            task_status.started()
            await anyio.sleep_forever()

    async def _load_model(self) -> None:
        assert self._ready is not None
        try:
            model = await self._load()
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            logger.error("could not load model %r: %s", self.model_id, self.failure)
        else:
            self.model = model
            self.model_id = model.model_id
            self.state = "ready"
            logger.info(
                "model %r ready (dim %d, max_seq_length %s) after %.1f s",
                model.model_id,
                model.dimension,
                model.max_seq_length,
                time.monotonic() - self._started,
            )
        self._ready.set()

    def estimated_time(self) -> float:
        """Seconds until the model is expected to be ready (at least 1)."""
        left = self.load_estimate - (time.monotonic() - self._started)
        return float(max(1, math.ceil(left)))

    async def wait_ready(self) -> None:
        """Hold until the model has loaded (or failed to)."""
        if self._ready is None or self._ready.is_set():
            return
        self.held += 1
        try:
            await self._ready.wait()
        finally:
            self.held -= 1

    # --------------------------------------------------------------------- embedding

    async def _embedder(self, prompt_name: str | None, mode: _Mode) -> AsyncEmbedder:
        key = (prompt_name, mode)
        embedder = self._embedders.get(key)
        if embedder is not None:
            return embedder
        assert self._lock is not None
        assert self._tg is not None
        with anyio.CancelScope(shield=True):
            async with self._lock:
                embedder = self._embedders.get(key)
                if embedder is None:
                    embedder = await self._tg.start(self._host, key)
        assert embedder is not None
        return embedder

    async def _host(
        self,
        key: tuple[str | None, _Mode],
        *,
        task_status: anyio.abc.TaskStatus[AsyncEmbedder] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one embedder (for one prompt and truncation mode) until the server stops."""
        prompt_name, mode = key
        assert self.model is not None
        options = Options(
            normalize=False,  # raw pooled vectors; each request normalizes (or not) itself
            prompt_name=prompt_name,
            truncate=mode != "refuse",
            truncation_direction="left" if mode == "left" else "right",
        )
        backend = LocalBackend(self.model, options=options)
        async with AsyncEmbedder(
            api="local",
            backend=backend,
            # One batch at a time: texts queue while the model works and the next batch
            # leaves full, which is what coalescing is for.
            limits=Limits(
                max_batch_size=self.max_batch_size, max_concurrency=1, adaptive_concurrency=False
            ),
            retry=None,
        ) as embedder:
            self._embedders[key] = embedder
            task_status.started(embedder)
            try:
                await anyio.sleep_forever()
            finally:
                self._embedders.pop(key, None)

    async def embed(
        self,
        texts: list[str],
        *,
        prompt_name: str | None,
        truncate: bool | None,
        truncation_direction: str,
    ) -> Matrix:
        """The raw (unnormalized, full-size) vectors for `texts`, batched with other requests."""
        if truncate is None:
            truncate = self.auto_truncate
        mode: _Mode = (
            "refuse" if not truncate else ("left" if truncation_direction == "left" else "right")
        )
        self.inputs_in_flight += len(texts)  # before any await: check-and-count is atomic
        try:
            embedder = await self._embedder(prompt_name, mode)
            return await embedder.embed_many(texts)
        finally:
            self.inputs_in_flight -= len(texts)

    def stats(self) -> dict[str, float]:
        """Batching so far, over all embedders: texts, batches, mean batch size."""
        snapshots = [embedder.stats() for embedder in self._embedders.values()]
        texts = sum(s.texts for s in snapshots)
        sent = sum(s.texts_sent for s in snapshots)
        batches = sum(s.batches for s in snapshots)
        return {
            "texts": texts,
            "batches": batches,
            "mean_batch_size": round(sent / batches, 2) if batches else 0.0,
        }

    async def count_tokens(self, texts: list[str], prompt_name: str | None) -> int:
        """Tokens the model reads for `texts` (capped at its max_seq_length each)."""
        model = self.model
        assert model is not None
        prompt = model.prompt_text(prompt_name)
        counts = await anyio.to_thread.run_sync(lambda: model.count_tokens(texts, prompt))
        limit = model.max_seq_length
        return sum(min(c, limit) if limit else c for c in counts)
