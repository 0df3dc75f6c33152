"""The worker: the callable class Ray runs in each actor of the pool, one embedder per actor.

An actor keeps one `AsyncEmbedder` for its whole life, opened on Ray's event loop by its
first batch, so the batches Ray hands it at once share one scheduler, one connection pool
and the fleet's quota (`FleetQuota`), and their texts are coalesced into full requests. A
batch's texts are checked first, and a row that cannot be embedded (`on_bad`) either stops
the run with `BadRowError` naming the row, or comes out with a null vector and a flag.
After each batch, an actor adds the tokens its embedder used since its last report to the
run's `TokenMeter` (the fleet's quota actor, or a small actor of its own), so the driver can
state what the run cost (`embedkit.ray.tokens_used`) without asking every worker.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .._auth import Secret
from .._client import AsyncEmbedder
from .._errors import EmbedkitError, InputError
from .._quantize import numpy_dtype
from .quota import FleetQuota, TokenMeter

__all__ = ["BadRowError", "OnBad", "TokenMeter", "tokens_of"]

OnBad = Literal["fail", "skip"]


class BadRowError(EmbedkitError, ValueError):
    """A row's text cannot be embedded (`on_bad="fail"`): empty, missing, not a string, or
    refused by the server.

    Attributes:
        row: the row's other columns (values clipped), to find it in the input.
        reason: why it cannot be embedded.
    """

    def __init__(self, row: dict[str, str], reason: str) -> None:
        self.row = row
        self.reason = reason
        where = ", ".join(f"{k}={v}" for k, v in row.items()) or "a row without other columns"
        super().__init__(f"row ({where}): {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.row, self.reason))


def tokens_of(embedder: AsyncEmbedder) -> int:
    """Tokens `embedder` used so far: reported by the server, else counted (as
    `FileResult.tokens`); 0 with token awareness off."""
    stats = embedder.stats()
    return stats.tokens_reported or stats.tokens_sent


def _clip(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _EmbedBatches:
    """The callable class Ray runs in each actor of the pool: one embedder per actor."""

    def __init__(
        self,
        *,
        column: str,
        output_column: str,
        flag_column: str | None,
        on_bad: OnBad,
        options: dict[str, Any],
        token: Secret | None,
        quota: Any,
        inputs_quota: bool,
        tokens_quota: bool = False,
        meter: Any = None,
    ) -> None:
        self._column = column
        self._output = output_column
        self._flag = flag_column
        self._on_bad = on_bad
        self._options = options
        self._token = token
        self._quota_actor = quota
        self._inputs_quota = inputs_quota
        self._tokens_quota = tokens_quota
        self._meter = meter  # the run's TokenMeter (None: nobody counts)
        self._metered = 0  # tokens of this actor's embedder already reported
        self._embedder: AsyncEmbedder | None = None
        self._opening: asyncio.Future[AsyncEmbedder] | None = None
        self._holder: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<embedkit worker column={self._column!r} api={self._options.get('api')!r}>"

    async def _open(self) -> AsyncEmbedder:
        """The actor's embedder, opened once on this event loop and kept open.

        A holder task keeps the embedder's `async with` open for the actor's life, so
        batches (each its own task) share one scheduler, connection pool and quota.
        """
        if self._embedder is not None:
            return self._embedder
        if self._opening is None:
            loop = asyncio.get_running_loop()
            self._opening = loop.create_future()
            self._holder = loop.create_task(self._hold(self._opening))
        embedder = await asyncio.shield(self._opening)
        self._embedder = embedder
        return embedder

    async def _hold(self, opened: asyncio.Future[AsyncEmbedder]) -> None:
        token = self._token.reveal() if self._token is not None else None
        try:
            options = dict(self._options)
            quota = options.pop("quota", None)  # a quota of your own (RedisQuota), or
            if self._quota_actor is not None:  # the fleet's
                quota = FleetQuota(
                    self._quota_actor, inputs=self._inputs_quota, tokens=self._tokens_quota
                )
            embedder = AsyncEmbedder(token=token, quota=quota, **options)
            async with embedder:
                opened.set_result(embedder)
                await asyncio.Event().wait()  # until the actor ends
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc)
            raise

    async def __call__(self, batch: pa.Table) -> pa.Table:
        embedder = await self._open()
        texts = batch.column(self._column).to_pylist()
        good: list[int] = []
        bad: dict[int, str] = {}
        for k, text in enumerate(texts):
            if not isinstance(text, str):
                bad[k] = f"the {self._column!r} value is {type(text).__name__}, not a string"
            elif not text:
                bad[k] = f"the {self._column!r} value is an empty string"
            else:
                good.append(k)
        if bad and self._on_bad == "fail":
            k = min(bad)
            raise BadRowError(self._describe(batch, k), bad[k])
        rows: dict[int, np.ndarray] = {}
        matrix: np.ndarray | None = None
        if good:
            sent = [texts[k] for k in good]
            try:
                matrix = await embedder.embed_many(sent)
            except InputError:
                matrix = None
                for k, result in zip(good, await self._one_by_one(embedder, sent), strict=True):
                    if isinstance(result, InputError):
                        reason = f"refused by the server: {result.message or result}"
                        if self._on_bad == "fail":
                            raise BadRowError(self._describe(batch, k), reason) from result
                        bad[k] = reason
                    else:
                        rows[k] = result
        dim = embedder.dimension
        if dim is None:  # nothing embedded yet by this actor: learn the size
            dim = int((await embedder.embed("dimension probe")).shape[0])
        values = np.zeros((len(texts), dim), dtype=numpy_dtype(embedder.dtype))
        if matrix is not None:
            values[good] = matrix
        for k, vector in rows.items():
            values[k] = vector
        mask = None
        if bad:
            missing = np.zeros(len(texts), dtype=bool)
            missing[list(bad)] = True
            mask = pa.array(missing)
        if self._meter is not None:
            used = tokens_of(embedder)
            new, self._metered = used - self._metered, used
            if new:  # counted before the batch is handed back: a finished run is all counted
                await self._meter.add_tokens.remote(new)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim, mask=mask)
        out = batch.append_column(self._output, vectors)
        if self._flag is not None:
            flags = np.ones(len(texts), dtype=bool)
            flags[list(bad)] = False
            out = out.append_column(self._flag, pa.array(flags))
        return out

    async def _one_by_one(self, embedder: AsyncEmbedder, texts: list[str]) -> list[Any]:
        """After an `InputError`: embed each text alone, to find which ones are refused."""
        from .._bulk import embed_each

        return await embed_each(embedder.running_scheduler(), texts)

    def _describe(self, batch: pa.Table, k: int) -> dict[str, str]:
        others = [name for name in batch.column_names if name != self._column][:4]
        row = {name: _clip(batch.column(name)[k].as_py()) for name in others}
        if not row:
            row = {self._column: _clip(batch.column(self._column)[k].as_py())}
        return row
