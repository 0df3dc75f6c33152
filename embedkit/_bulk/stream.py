"""The one streaming loop: `embed_stream`, `encode`, `embed_file` and the CLI all run `stream`.

How a corpus travels:

1. A *source* hands out blocks of texts (`BlockSource.read`), each with a tag the caller
   chooses (its start index, or the file engine's block record). The sources here read an
   iterable on the event loop, an async iterable, or an iterable in the calling thread of a
   blocking caller (`stream_blocking`); `embed_file`'s source reads a corpus file in a
   worker thread. A source checks each text as it reads it (`_texts.check_text`).
2. A block is *planned*: duplicates inside it are folded (each distinct text is sent once)
   and, optionally, the distinct texts are sorted by length, so that the batches the
   scheduler cuts from it hold texts of similar length (servers pad a batch to its longest).
3. The planned block is enqueued on the scheduler as one `Ticket` (no task per block), so
   coalescing, concurrency limits, rate limits and retries all apply. At most `depth` blocks
   are queued at once: that is the read-ahead, and all the memory a stream holds
   (`depth × block_size` texts and their rows), however long the input.
4. The oldest block's matrix comes back; its rows are put back in input order (unsorted,
   duplicates expanded) and yielded as a `Done(tag, matrix, refused)`. Only then is another
   block read, so a slow consumer slows the reading, never the order. With
   `isolate_refused`, a block the server refuses (`InputError`) is embedded again text by
   text, and the refused texts come back as zero rows listed in `refused`.

The scheduler's own in-flight dedup and LRU cache (`cache_size=`) cover duplicates that
are further apart than one block.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import queue
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import anyio
import numpy as np
import numpy.typing as npt
from anyio.from_thread import BlockingPortal

from .._config import Matrix
from .._core import Scheduler, Ticket
from .._errors import InputError
from .._texts import check_texts, first_bad

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "BlockSource",
    "Done",
    "IterSource",
    "astream",
    "default_depth",
    "embed_each",
    "encode",
    "plan",
    "stream",
    "stream_blocking",
]

logger = logging.getLogger("embedkit")

#: Texts per block yielded by `embed_stream` (and per sorting/dedup window).
DEFAULT_BLOCK_SIZE = 1024

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Gather = npt.NDArray[np.intp]


def default_depth(block_size: int, max_concurrency: int, max_batch_size: int) -> int:
    """Blocks to keep queued: enough for two rounds of full batches in every slot, at least 2."""
    wanted = 2 * max_concurrency * max_batch_size
    return max(2, math.ceil(wanted / block_size) + 1)


def plan(texts: list[str], *, sort_by_length: bool, dedup: bool) -> tuple[list[str], Gather | None]:
    """What to send for `texts`, and how to get their rows back.

    Returns `(sent, gather)`: embed `sent`, then `matrix[gather]` is the matrix for `texts`
    (`gather` is None when `sent` is `texts` itself).
    """
    inverse: list[int] | None = None
    unique = texts
    if dedup:
        index: dict[str, int] = {}
        inverse = [index.setdefault(text, len(index)) for text in texts]
        if len(index) < len(texts):
            unique = list(index)
        else:
            inverse = None
    if sort_by_length and len(unique) > 1:
        order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
        if any(i != k for k, i in enumerate(order)):
            position = np.empty(len(order), dtype=np.intp)
            position[order] = np.arange(len(order), dtype=np.intp)
            sent = [unique[i] for i in order]
            if inverse is None:
                return sent, position
            return sent, position[np.asarray(inverse, dtype=np.intp)]
    if inverse is None:
        return unique, None
    return unique, np.asarray(inverse, dtype=np.intp)


class BlockSource(Protocol[T_co]):
    """Where `stream` gets its blocks."""

    async def read(self) -> tuple[T_co, list[str]] | None:
        """The next block as `(tag, texts)` (texts already checked); None at the end."""
        ...

    @property
    def error(self) -> BaseException | None:
        """An error to raise once every block before it has been handed out (or None)."""
        ...


@dataclasses.dataclass
class Done(Generic[T]):
    """A finished block: `matrix[k]` is the row of the block's text k.

    `refused` lists `(k, error)` for the texts the server refused (only with
    `isolate_refused`); their rows are zeros.
    """

    tag: T
    matrix: Matrix
    refused: list[tuple[int, InputError]]


async def embed_each(scheduler: Scheduler, texts: list[str]) -> list[Matrix | InputError]:
    """Embed each text as its own ticket: a vector per text, or the `InputError` it caused.

    Used after a block fails with an `InputError`, to find which texts the server refuses
    while the others still share batches. Other errors are raised.
    """
    tickets = [scheduler.enqueue([text]) for text in texts]
    results: list[Matrix | InputError] = []
    try:
        for ticket in tickets:
            try:
                results.append((await ticket.result())[0])
            except InputError as exc:
                results.append(exc)
    finally:
        for ticket in tickets:
            ticket.discard()
    return results


async def _isolate(
    scheduler: Scheduler, texts: list[str]
) -> tuple[Matrix, list[tuple[int, InputError]]]:
    results = await embed_each(scheduler, texts)
    refused = [(k, r) for k, r in enumerate(results) if isinstance(r, InputError)]
    good = [r for r in results if not isinstance(r, InputError)]
    dim = good[0].shape[0] if good else (scheduler.dimension or 0)
    matrix = np.zeros((len(texts), dim), dtype=np.float32)
    for k, row in enumerate(results):
        if not isinstance(row, InputError):
            matrix[k] = row
    return matrix, refused


async def stream(
    scheduler: Scheduler,
    source: BlockSource[T],
    *,
    depth: int,
    sort_by_length: bool,
    dedup: bool,
    isolate_refused: bool = False,
) -> AsyncGenerator[Done[T], None]:
    """The streaming loop: blocks from `source` through `scheduler`, back in order.

    Keeps at most `depth` blocks queued; reads the next one as soon as one is handed out.
    """
    queued: collections.deque[tuple[T, list[str], Ticket, Gather | None]] = collections.deque()
    exhausted = False

    async def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(queued) < depth:
            block = await source.read()
            if block is None:
                exhausted = True
                return
            tag, texts = block
            sent, gather = plan(texts, sort_by_length=sort_by_length, dedup=dedup)
            await scheduler.count_exact(sent)  # count_tokens="server": near the cap (else no-op)
            queued.append((tag, texts, scheduler.enqueue(sent), gather))

    try:
        while True:
            await fill()
            if not queued:
                if source.error is not None:
                    raise source.error
                return
            tag, texts, ticket, gather = queued[0]
            refused: list[tuple[int, InputError]] = []
            try:
                matrix = await ticket.result()
                if gather is not None:
                    matrix = matrix[gather]
            except InputError:
                if not isolate_refused:
                    raise
                matrix, refused = await _isolate(scheduler, texts)
            queued.popleft()
            await fill()  # keep the scheduler busy while the consumer handles this block
            yield Done(tag, matrix, refused)
    finally:
        for entry in queued:
            entry[2].discard()


# ------------------------------------------------------------------------------ sources


def _refuse_single_string(texts: object) -> None:
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"texts must be an iterable of strings, not a single {type(texts).__name__} "
            "(iterating it would embed one character at a time)"
        )


def _take(source: Iterator[Any], n: int) -> list[Any]:
    block = []
    for text in source:
        block.append(text)
        if len(block) >= n:
            break
    return block


class IterSource:
    """Blocks from an iterable, an async iterable, or a function that reads a raw block.

    A bad text ends the input after the texts before it; its error (naming its global index)
    is raised by `stream` once every block before it has been handed out.
    """

    def __init__(
        self,
        texts: Iterable[Any] | AsyncIterable[Any],
        *,
        block_size: int,
        reader: Any = None,
    ) -> None:
        _refuse_single_string(texts)
        self._source: Iterator[Any] | AsyncIterator[Any] = (
            texts.__aiter__() if isinstance(texts, AsyncIterable) else iter(texts)
        )
        self._reader = reader  # an async callable (n) -> raw block, replacing the default
        self.block_size = block_size
        self.start = 0
        self.exhausted = False
        self.error: BaseException | None = None

    async def _raw(self) -> list[Any]:
        if self._reader is not None:
            block: list[Any] = await self._reader(self.block_size)
            return block
        if isinstance(self._source, Iterator):
            return _take(self._source, self.block_size)
        block = []
        while len(block) < self.block_size:
            try:
                block.append(await self._source.__anext__())
            except StopAsyncIteration:
                break
        return block

    async def read(self) -> tuple[int, list[str]] | None:
        """The next checked block, tagged with its start index."""
        while not self.exhausted:
            block = await self._raw()
            if len(block) < self.block_size:
                self.exhausted = True
            bad = first_bad(block, self.start)
            if bad is not None:
                self.exhausted = True
                self.error = bad[1]
                block = block[: bad[0]]
            if block:
                start = self.start
                self.start += len(block)
                return start, block
        return None


def astream(
    scheduler: Scheduler,
    texts: Iterable[str] | AsyncIterable[str],
    *,
    block_size: int,
    depth: int,
    sort_by_length: bool,
    dedup: bool,
) -> AsyncGenerator[tuple[int, Matrix], None]:
    """The body of `AsyncEmbedder.embed_stream` (see there)."""
    source = IterSource(texts, block_size=block_size)
    return _pairs(
        stream(scheduler, source, depth=depth, sort_by_length=sort_by_length, dedup=dedup)
    )


async def _pairs(
    blocks: AsyncGenerator[Done[int], None],
) -> AsyncGenerator[tuple[int, Matrix], None]:
    async with contextlib.aclosing(blocks):
        async for done in blocks:
            yield done.tag, done.matrix


class _CallerThread:
    """Reads blocks in a blocking caller's thread for a stream that runs on the event loop.

    The loop asks (`request`), the caller's thread answers (`serve`): the caller waits for
    either the stream's next block or a read request, so a slow input never blocks the loop
    and the input is only ever touched by the thread that owns it (a sqlite cursor, say).
    """

    def __init__(self, texts: Iterable[Any]) -> None:
        self._texts = iter(texts)
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._answer: Any = None
        self._answered: anyio.Event | None = None

    async def request(self, n: int) -> list[Any]:
        self._answered = anyio.Event()
        self.inbox.put(("read", n))
        await self._answered.wait()
        answer, self._answer = self._answer, None
        if isinstance(answer, BaseException):
            raise answer
        block: list[Any] = answer
        return block

    def serve(self, portal: BlockingPortal, n: int) -> None:
        try:
            self._answer = _take(self._texts, n)
        except Exception as exc:
            self._answer = exc
        assert self._answered is not None
        portal.call(self._answered.set)


def stream_blocking(
    portal: BlockingPortal,
    scheduler: Scheduler,
    texts: Iterable[str],
    *,
    block_size: int,
    depth: int,
    sort_by_length: bool,
    dedup: bool,
) -> Iterator[tuple[int, Matrix]]:
    """The body of `Embedder.embed_stream`: `stream` on the loop, the input read here.

    Reading in the caller's thread (not on the event loop) means a slow input, such as a
    file on a network disk, never stalls the requests in flight.
    """
    _refuse_single_string(texts)
    caller = _CallerThread(texts)
    source = IterSource((), block_size=block_size, reader=caller.request)
    blocks = stream(scheduler, source, depth=depth, sort_by_length=sort_by_length, dedup=dedup)
    inbox = caller.inbox

    async def step() -> None:
        try:
            inbox.put(("done", await blocks.__anext__()))
        except BaseException as exc:  # StopAsyncIteration included: handed to the caller
            inbox.put(("error", exc))

    pending = None
    try:
        while True:
            pending = portal.start_task_soon(step)
            while True:
                kind, value = inbox.get()
                if kind == "read":
                    caller.serve(portal, value)
                    continue
                break
            pending = None
            if kind == "error":
                if isinstance(value, StopAsyncIteration):
                    return
                raise value
            yield value.tag, value.matrix
    finally:
        with contextlib.suppress(RuntimeError):  # the portal is already closed
            if pending is not None and not pending.done():
                pending.cancel()  # interrupted while a step ran (KeyboardInterrupt)
                with contextlib.suppress(BaseException):
                    pending.exception()
            portal.call(blocks.aclose)


# ------------------------------------------------------------------------------ encode

_PRECISIONS = ("float32",)


async def encode(
    scheduler: Scheduler,
    sentences: str | Iterable[str],
    *,
    batch_size: int,
    show_progress_bar: bool | None,
    normalize_embeddings: bool,
    prompt_name: str | None,
    configured_prompt_name: str | None,
    prompt: str | None,
    precision: str,
    truncate_dim: int | None,
    max_concurrency: int,
) -> Matrix:
    """The body of `AsyncEmbedder.encode` (see there)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if precision not in _PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not supported: embedkit returns float32 "
            "(quantize the result yourself, e.g. with sentence_transformers.quantize_embeddings)"
        )
    if prompt_name is not None and prompt_name != configured_prompt_name:
        raise ValueError(
            f"prompt_name={prompt_name!r} cannot be chosen per call: the server applies the "
            f"prompt, so it is set on the embedder (this one has prompt_name="
            f"{configured_prompt_name!r}); create one with prompt_name={prompt_name!r}, "
            "or pass prompt='...' to prepend a literal prompt to each sentence"
        )
    if truncate_dim is not None and truncate_dim < 1:
        raise ValueError("truncate_dim must be a positive integer")
    single = isinstance(sentences, str)
    if isinstance(sentences, bytes):
        raise TypeError("sentences must be a str or an iterable of str, not bytes")
    texts = check_texts([sentences] if single else sentences, "sentences")
    if prompt:
        texts = [prompt + text for text in texts]
    if not texts:
        return np.empty((0, truncate_dim or scheduler.dimension or 0), dtype=np.float32)
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)

    # As sentence-transformers does: the whole input sorted by length, then put back.
    sent, gather = plan(texts, sort_by_length=True, dedup=True)
    depth = default_depth(batch_size, max_concurrency, scheduler.max_batch_size)
    from .progress import progress_bar

    bar = progress_bar(len(sent)) if show_progress_bar and len(texts) > 1 else None
    out: Matrix | None = None
    source = IterSource(sent, block_size=batch_size)
    try:
        blocks = stream(scheduler, source, depth=depth, sort_by_length=False, dedup=False)
        async with contextlib.aclosing(blocks):
            async for done in blocks:
                block = done.matrix
                if out is None:
                    out = np.empty((len(sent), block.shape[1]), dtype=np.float32)
                out[done.tag : done.tag + block.shape[0]] = block
                if bar is not None:
                    bar.update(block.shape[0])
    finally:
        if bar is not None:
            bar.close()
    assert out is not None
    result = out if gather is None else out[gather]
    if truncate_dim is not None and truncate_dim < result.shape[1]:
        result = np.ascontiguousarray(result[:, :truncate_dim])
    if normalize_embeddings:
        norms = np.linalg.norm(result, axis=1, keepdims=True)
        np.divide(result, norms, out=result, where=norms > 0)
    if single:
        row: Matrix = result[0]
        return row
    return result
