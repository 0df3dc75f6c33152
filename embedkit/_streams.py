"""The streaming methods of `AsyncEmbedder`: `embed_stream` and `encode`.

Both are callers of the scheduler like `embed`; the loops themselves live in `_bulk` (the one
streaming loop, `encode`'s body). They are a mixin of `AsyncEmbedder` so that `_client.py`
holds configuration, life cycle and the single-call path only.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable
from typing import TYPE_CHECKING, Literal

from ._config import Dtype, Matrix
from ._kinds import check_kind, in_dtype
from ._quantize import as_dtype

if TYPE_CHECKING:
    from ._backends import Options
    from ._config import Kind
    from ._core import Scheduler

__all__ = ["StreamMethods"]


class StreamMethods:
    """`embed_stream` and `encode`, over what `AsyncEmbedder` provides."""

    max_concurrency: int
    dtype: Dtype
    _options: Options

    def running_scheduler(self) -> Scheduler:
        raise NotImplementedError

    async def scheduler_for(self, kind: Kind | None = None) -> Scheduler:
        raise NotImplementedError

    def embed_stream(
        self,
        texts: Iterable[str] | AsyncIterable[str],
        *,
        block_size: int = 1024,
        max_blocks_in_flight: int | None = None,
        sort_by_length: bool = False,
        dedup: bool = True,
        kind: Kind | None = None,
    ) -> AsyncGenerator[tuple[int, Matrix], None]:
        """Embed an iterable or async iterable of any length, in order, with bounded memory.

        `async for start, matrix in emb.embed_stream(texts):` — `matrix[k]` is the vector of
        text `start + k`; blocks come in input order and hold `block_size` rows (the last may
        hold fewer). At most `max_blocks_in_flight` blocks are read ahead (default: enough
        to keep every concurrency slot busy), so a generator over a huge file is never read
        further than the embedder can use, and neither the input nor the output is held.
        Duplicates within a block are sent once; `sort_by_length` groups texts of similar
        length into the same requests (then restores the order). A non-str, empty or
        invalid (lone surrogate) text raises `TypeError`/`ValueError` naming its index, after
        the blocks before it.

        A plain iterable is read on the event loop, a block at a time: if reading it can
        block for long (a network disk), pass an async iterable, or use `Embedder.embed_stream`,
        which reads in the calling thread. Leaving the loop early drops what was queued (at
        once with `contextlib.aclosing`, otherwise when the generator is collected).
        `kind` overrides the embedder's default `kind`; blocks are in the embedder's `dtype`.
        """
        from ._bulk import astream, default_depth

        scheduler = self.running_scheduler()
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        check_kind(kind)
        depth = max_blocks_in_flight or default_depth(
            block_size, self.max_concurrency, scheduler.max_batch_size
        )

        def stream(chosen: Scheduler) -> AsyncGenerator[tuple[int, Matrix], None]:
            return astream(
                chosen,
                texts,
                block_size=block_size,
                depth=depth,
                sort_by_length=sort_by_length,
                dedup=dedup,
            )

        if (kind is None or kind == self._options.kind) and self.dtype == "float32":
            return stream(scheduler)

        async def blocks() -> AsyncGenerator[tuple[int, Matrix], None]:
            async for block in in_dtype(stream(await self.scheduler_for(kind)), self.dtype):
                yield block

        return blocks()

    async def encode(
        self,
        sentences: str | Iterable[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        convert_to_numpy: bool = True,
        precision: Literal["float32"] = "float32",
        truncate_dim: int | None = None,
    ) -> Matrix:
        """`SentenceTransformer.encode`, for people who know it: (n, dim) float32, (dim,) for a str.

        Args:
            sentences: a string, or an iterable of strings.
            batch_size: texts per step of the work (and of the progress bar). Requests are
                cut by the embedder's `max_batch_size`, because they are shared with every
                other caller of this embedder.
            show_progress_bar: a bar on stderr; None shows it when the "embedkit" logger
                is at INFO or DEBUG, as sentence-transformers does.
            normalize_embeddings: scale every row to unit length, here in numpy (so it holds
                whatever the server does). False adds nothing: rows are what the embedder
                returns (TEI normalizes unless the embedder has `normalize=False`).
            prompt_name: must equal the embedder's own `prompt_name` (the server applies it,
                so it cannot change per call); anything else raises `ValueError`.
            prompt: a literal string prepended to every sentence, here in the client.
            convert_to_numpy: only True (the result is always a numpy array).
            precision: only "float32".
            truncate_dim: keep the first `truncate_dim` dimensions (before normalizing).

        Like sentence-transformers, the whole input is sorted by length before it is sent
        and put back in order after; duplicates are sent once.
        """
        from ._bulk import encode

        if not convert_to_numpy:
            raise ValueError("convert_to_numpy=False is not supported: encode returns numpy")
        if self.dtype != "float32" and (normalize_embeddings or truncate_dim is not None):
            raise ValueError(
                f"normalize_embeddings= and truncate_dim= work on floats; this embedder "
                f"returns {self.dtype} (dtype=)"
            )
        result = await encode(
            self.running_scheduler(),
            sentences,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            normalize_embeddings=normalize_embeddings,
            prompt_name=prompt_name,
            configured_prompt_name=self._options.prompt_name,
            prompt=prompt,
            precision=precision,
            truncate_dim=truncate_dim,
            max_concurrency=self.max_concurrency,
        )
        return as_dtype(result, self.dtype)
