"""Streaming a corpus through the scheduler: `embed_stream`, `encode`, and the CLI's pipeline.

How a corpus travels:

1. The input (any iterable or async iterable of str) is read in *blocks* of `block_size`
   texts; each text is checked as it is read, and a bad one is named by its global index.
2. A block is *planned*: duplicates inside it are folded (each distinct text is sent once)
   and, optionally, the distinct texts are sorted by length, so that the batches the
   scheduler cuts from it hold texts of similar length (servers pad a batch to its longest).
3. The planned block is enqueued on the scheduler as one job (`Scheduler.enqueue`: no task
   per block), so coalescing, concurrency limits, rate limits and retries all apply. At most
   `depth` blocks are queued at once: that is the read-ahead, and all the memory a stream
   holds (`depth × block_size` texts and their rows), however long the input.
4. The oldest block's matrix comes back; its rows are put back in input order (unsorted,
   duplicates expanded) and yielded as `(start, matrix)`: `matrix[k]` is text `start + k`.
   Only then is another block read, so a slow consumer slows the reading, never the order.

The scheduler's own in-flight dedup and LRU cache (`cache_size=`) cover duplicates that
are further apart than one block.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
)
from typing import Any, Generic, TextIO, TypeVar

import numpy as np
import numpy.typing as npt
from anyio.from_thread import BlockingPortal

from ._decode import Matrix
from ._errors import InputError
from ._scheduler import Scheduler, _Job

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "Progress",
    "Window",
    "astream",
    "default_depth",
    "embed_each",
    "encode",
    "plan",
    "stream_blocking",
]

logger = logging.getLogger("embedkit")

#: Texts per block yielded by `embed_stream` (and per sorting/dedup window).
DEFAULT_BLOCK_SIZE = 1024

T = TypeVar("T")
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


class Window(Generic[T]):
    """Blocks queued on the scheduler, handed back oldest first.

    Lives on the event loop: call `push` and `pop` from the embedder's loop (through a
    blocking portal from other threads). `T` is whatever the caller tags a block with.
    """

    def __init__(self, scheduler: Scheduler, *, sort_by_length: bool, dedup: bool) -> None:
        self._scheduler = scheduler
        self._sort = sort_by_length
        self._dedup = dedup
        self._blocks: collections.deque[tuple[T, _Job, Gather | None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def head(self) -> T:
        """The tag of the oldest block (the one `pop` waits for)."""
        return self._blocks[0][0]

    def push(self, texts: list[str], tag: T) -> None:
        """Plan `texts` and enqueue them as one job (texts must already be validated)."""
        sent, gather = plan(texts, sort_by_length=self._sort, dedup=self._dedup)
        self._blocks.append((tag, self._scheduler.enqueue(sent), gather))

    async def pop(self) -> tuple[T, Matrix]:
        """Wait for the oldest block: `(tag, matrix)`, rows in the order they were pushed.

        The block leaves the window even when it failed; its error is raised here.
        """
        tag, job, gather = self._blocks.popleft()
        matrix = await self._scheduler.result(job)
        return tag, matrix if gather is None else matrix[gather]

    def discard(self) -> None:
        """Give up on every queued block (their texts are skipped, their rows dropped)."""
        while self._blocks:
            self._scheduler.discard(self._blocks.popleft()[1])


def first_bad(block: list[Any], start: int) -> tuple[int, Exception] | None:
    """The position of the first text that is not a non-empty str, and its error."""
    for k, text in enumerate(block):
        if not isinstance(text, str):
            return k, TypeError(f"texts[{start + k}] is {type(text).__name__}, expected str")
        if not text:
            return k, ValueError(
                f"texts[{start + k}] is an empty string; embedding servers reject empty inputs"
            )
    return None


def check_block(block: list[Any], start: int) -> list[str]:
    """`block`, or the `TypeError`/`ValueError` naming the global index of its first bad text."""
    bad = first_bad(block, start)
    if bad is not None:
        raise bad[1]
    return block


class _Reader:
    """Blocks from the input; a bad text ends the input after the texts before it.

    The error is kept in `error` and raised by the stream once every block before it has
    been handed out, so a caller gets everything up to the bad text, then the error.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.start = 0
        self.exhausted = False
        self.error: Exception | None = None

    def accept(self, block: list[Any]) -> list[str] | None:
        """The part of a freshly read block to embed (None: nothing)."""
        if len(block) < self.block_size:
            self.exhausted = True
        bad = first_bad(block, self.start)
        if bad is not None:
            self.exhausted = True
            self.error = bad[1]
            block = block[: bad[0]]
        return block or None


def _refuse_single_string(texts: object) -> None:
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"texts must be an iterable of strings, not a single {type(texts).__name__} "
            "(iterating it would embed one character at a time)"
        )


async def _read_block(source: Iterator[Any] | AsyncIterator[Any], size: int) -> list[Any]:
    if isinstance(source, Iterator):
        block = []
        for text in source:
            block.append(text)
            if len(block) >= size:
                break
        return block
    block = []
    while len(block) < size:
        try:
            block.append(await source.__anext__())
        except StopAsyncIteration:
            break
    return block


async def astream(
    scheduler: Scheduler,
    texts: Iterable[str] | AsyncIterable[str],
    *,
    block_size: int,
    depth: int,
    sort_by_length: bool,
    dedup: bool,
) -> AsyncGenerator[tuple[int, Matrix], None]:
    """The body of `AsyncEmbedder.embed_stream` (see there)."""
    _refuse_single_string(texts)
    source: Iterator[Any] | AsyncIterator[Any] = (
        texts.__aiter__() if isinstance(texts, AsyncIterable) else iter(texts)
    )
    window: Window[int] = Window(scheduler, sort_by_length=sort_by_length, dedup=dedup)
    reader = _Reader(block_size)

    async def fill() -> None:
        while not reader.exhausted and len(window) < depth:
            block = reader.accept(await _read_block(source, block_size))
            if block is not None:
                window.push(block, reader.start)
                reader.start += len(block)

    try:
        while True:
            await fill()
            if not window:
                if reader.error is not None:
                    raise reader.error
                return
            item = await window.pop()
            await fill()  # keep the scheduler busy while the consumer handles this block
            yield item
    finally:
        window.discard()


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
    """The body of `Embedder.embed_stream`: the input is read in the caller's thread.

    Reading there (not on the event loop) means a slow input, such as a file on a network
    disk, never stalls the requests in flight.
    """
    _refuse_single_string(texts)
    source = iter(texts)
    window: Window[int] = Window(scheduler, sort_by_length=sort_by_length, dedup=dedup)
    reader = _Reader(block_size)

    def fill() -> None:
        while not reader.exhausted and len(window) < depth:
            block = reader.accept(list(_take(source, block_size)))
            if block is not None:
                portal.call(window.push, block, reader.start)
                reader.start += len(block)

    try:
        while True:
            fill()
            if not window:
                if reader.error is not None:
                    raise reader.error
                return
            item = portal.call(window.pop)
            fill()
            yield item
    finally:
        if window:
            with contextlib.suppress(RuntimeError):  # the portal is already closed
                portal.call(window.discard)


def _take(source: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        try:
            yield next(source)
        except StopIteration:
            return


async def embed_each(scheduler: Scheduler, texts: list[str]) -> list[Matrix | InputError]:
    """Embed each text as its own job: a vector per text, or the `InputError` it caused.

    Used after a block fails with an `InputError`, to find which texts the server refuses
    while the others still share batches. Other errors are raised.
    """
    jobs = [scheduler.enqueue([text]) for text in texts]
    results: list[Matrix | InputError] = []
    try:
        for job in jobs:
            try:
                results.append((await scheduler.result(job))[0])
            except InputError as exc:
                results.append(exc)
    finally:
        for job in jobs:
            scheduler.discard(job)
    return results


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
    texts = check_block([sentences] if single else list(sentences), 0)
    if prompt:
        texts = [prompt + text for text in texts]
    if not texts:
        return np.empty((0, truncate_dim or scheduler.dimension or 0), dtype=np.float32)
    if show_progress_bar is None:
        show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)

    # As sentence-transformers does: the whole input sorted by length, then put back.
    sent, gather = plan(texts, sort_by_length=True, dedup=True)
    depth = default_depth(batch_size, max_concurrency, scheduler.max_batch_size)
    progress = (
        Progress(len(sent), retries=lambda: sum(scheduler.stats().retries.values()))
        if show_progress_bar and len(texts) > 1
        else None
    )
    out: Matrix | None = None
    try:
        blocks = astream(
            scheduler, sent, block_size=batch_size, depth=depth, sort_by_length=False, dedup=False
        )
        async with contextlib.aclosing(blocks):
            async for start, block in blocks:
                if out is None:
                    out = np.empty((len(sent), block.shape[1]), dtype=np.float32)
                out[start : start + block.shape[0]] = block
                if progress is not None:
                    progress.update(block.shape[0])
    finally:
        if progress is not None:
            progress.close()
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


# ----------------------------------------------------------------------------- progress


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        if hours
        else f"{rest // 60:02d}:{rest % 60:02d}"
    )


class Progress:
    """Progress on stderr: a redrawn bar on a terminal, a plain line every `interval` s otherwise.

    Shows done/total, texts/s (over the last 30 s), ETA and retries (from `retries()`).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        interval: float = 10.0,
        label: str = "embedkit",
        retries: Callable[[], int] | None = None,
    ) -> None:
        self.total = total
        self.done = initial
        self._initial = initial
        self._stream = stream if stream is not None else sys.stderr
        self.tty = self._stream.isatty() if tty is None else tty
        self._interval = 0.1 if self.tty else interval
        self._label = label
        self._retries = retries
        self._started = time.monotonic()
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._samples.append((self._started, initial))
        self._last_render = self._started
        self._drawn = False

    def rate(self, now: float | None = None) -> float:
        """Texts per second over the last 30 s."""
        now = time.monotonic() if now is None else now
        # keep one sample at least 30 s old (when there is one), so the window spans 30 s
        while len(self._samples) > 2 and now - self._samples[1][0] >= 30.0:
            self._samples.popleft()
        then, done_then = self._samples[0]
        return (self.done - done_then) / (now - then) if now > then else 0.0

    def update(self, n: int) -> None:
        """Count `n` more texts done; redraw when it is time."""
        self.done += n
        now = time.monotonic()
        if not self._samples or now - self._samples[-1][0] >= 0.5:
            self._samples.append((now, self.done))
        if now - self._last_render >= self._interval:
            self._last_render = now
            self._render(now)

    def line(self, now: float | None = None) -> str:
        """The status line: done/total, percent, rate, ETA, retries."""
        now = time.monotonic() if now is None else now
        rate = self.rate(now)
        remaining = self.total - self.done
        eta = remaining / rate if rate > 0 else None
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (
            f"{self.done:,}/{self.total:,} ({pct:.1f}%) · {rate:,.0f} texts/s · ETA {_clock(eta)}"
        )
        if self._retries is not None:
            text += f" · retries {self._retries()}"
        if self.tty:
            width = 24
            filled = int(width * self.done / self.total) if self.total else width
            return f"{self._label} [{'#' * filled}{'.' * (width - filled)}] {text}"
        return f"{self._label}: {text}"

    def _render(self, now: float) -> None:
        if self.tty:
            self._stream.write("\r" + self.line(now) + "\x1b[K")
            self._drawn = True
        else:
            self._stream.write(self.line(now) + "\n")
        self._stream.flush()

    def clear(self) -> None:
        """Wipe the bar (before another message is printed on the terminal)."""
        if self.tty and self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False

    def close(self, *, final_line: bool = True) -> None:
        """Draw the final state (a terminal bar ends with a newline).

        Off a terminal the final line is printed only when `final_line` is true.
        """
        if self.tty:
            self._render(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
        elif final_line:
            self._render(time.monotonic())

    @property
    def elapsed(self) -> float:
        """Seconds since this progress started."""
        return time.monotonic() - self._started

    @property
    def average_rate(self) -> float:
        """Texts per second since the start (this run only)."""
        elapsed = self.elapsed
        return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0
