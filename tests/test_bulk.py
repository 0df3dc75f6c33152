"""`embed_stream` and `encode`: order, bounded read-ahead, dedup, length sorting, shapes."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import AsyncIterator, Iterator

import anyio
import numpy as np
import pytest

from embedkit import AsyncEmbedder, Embedder, InputError, Limits
from embedkit._bulk.progress import FileProgress, ProgressLines
from embedkit._bulk.stream import embed_each, plan
from embedkit._cli import _Console
from embedkit._config import Matrix

from .fakes import DIM, FakeBackend, vectors_for


def corpus(n: int) -> list[str]:
    return [f"text number {i} " + "x" * (i * 7919 % 53) for i in range(n)]


class Counting:
    """A generator over `texts` that records how far it has been read."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.pulled = 0
        self.threads: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.pulled += 1
            self.threads.add(threading.get_ident())
            yield text

    async def agen(self) -> AsyncIterator[str]:
        for text in self.texts:
            self.pulled += 1
            await anyio.lowlevel.checkpoint()
            yield text


def stack(blocks: list[tuple[int, Matrix]], n: int) -> Matrix:
    """Check that blocks tile 0..n in order, and stack them."""
    expected_start = 0
    for start, matrix in blocks:
        assert start == expected_start
        expected_start += matrix.shape[0]
    assert expected_start == n
    return np.concatenate([matrix for _, matrix in blocks])


# --------------------------------------------------------------------------- embed_stream


@pytest.mark.asyncio
async def test_stream_from_a_generator_is_in_order_and_reads_ahead_a_bounded_amount() -> None:
    texts = corpus(5000)
    source = Counting(texts)
    backend = FakeBackend()
    block_size, depth = 100, 3
    blocks = []
    async with AsyncEmbedder(
        limits=Limits(max_batch_size=16, max_concurrency=4), backend=backend
    ) as emb:
        async for start, matrix in emb.embed_stream(
            iter(source), block_size=block_size, max_blocks_in_flight=depth
        ):
            # never more than `depth` blocks read beyond what was handed out
            assert source.pulled - (start + matrix.shape[0]) <= depth * block_size
            blocks.append((start, matrix))
    assert all(matrix.shape == (block_size, DIM) for _, matrix in blocks)
    assert np.array_equal(stack(blocks, len(texts)), vectors_for(texts))
    assert max(len(batch) for batch in backend.batches) == 16


@pytest.mark.asyncio
async def test_stream_from_an_async_generator_with_a_short_last_block() -> None:
    texts = corpus(1234)
    source = Counting(texts)
    blocks = []
    async with AsyncEmbedder(limits=Limits(max_batch_size=32), backend=FakeBackend()) as emb:
        async for start, matrix in emb.embed_stream(
            source.agen(), block_size=500, max_blocks_in_flight=2
        ):
            assert source.pulled - (start + matrix.shape[0]) <= 2 * 500
            blocks.append((start, matrix))
    assert [m.shape[0] for _, m in blocks] == [500, 500, 234]
    assert np.array_equal(stack(blocks, len(texts)), vectors_for(texts))


def test_blocking_stream_reads_in_the_callers_thread_and_keeps_order() -> None:
    texts = corpus(3000)
    source = Counting(texts)
    blocks = []
    with Embedder(limits=Limits(max_batch_size=32), backend=FakeBackend()) as emb:
        for start, matrix in emb.embed_stream(source, block_size=256, max_blocks_in_flight=2):
            assert source.pulled - (start + matrix.shape[0]) <= 2 * 256
            blocks.append((start, matrix))
    assert source.threads == {threading.get_ident()}
    assert np.array_equal(stack(blocks, len(texts)), vectors_for(texts))


@pytest.mark.asyncio
async def test_duplicates_in_a_block_are_sent_once_and_rows_still_line_up() -> None:
    distinct = corpus(50)
    texts = [distinct[(i * 31) % 50] for i in range(1000)]
    backend = FakeBackend()
    async with AsyncEmbedder(backend=backend) as emb:
        blocks = [b async for b in emb.embed_stream(texts, block_size=1000)]
        assert emb.stats().texts_sent == 50
    assert sorted(backend.sent) == sorted(distinct)
    assert np.array_equal(stack(blocks, 1000), vectors_for(texts))


@pytest.mark.asyncio
async def test_length_sorting_groups_similar_lengths_and_restores_order() -> None:
    texts = ["x" * (1 + (i * 37) % 200) + f" {i}" for i in range(640)]
    backend = FakeBackend()
    async with AsyncEmbedder(
        limits=Limits(max_batch_size=32, max_concurrency=1), backend=backend
    ) as emb:
        blocks = [b async for b in emb.embed_stream(texts, block_size=320, sort_by_length=True)]
    assert np.array_equal(stack(blocks, 640), vectors_for(texts))
    for batch in backend.batches:
        lengths = [len(t) for t in batch]
        assert lengths == sorted(lengths)
    spread_sorted = np.mean([len(b[-1]) - len(b[0]) for b in backend.batches])
    assert spread_sorted < 20  # unsorted batches of this corpus span ~190 characters


@pytest.mark.asyncio
async def test_a_bad_text_ends_the_stream_after_everything_before_it() -> None:
    texts: list[object] = [*corpus(250), None, *corpus(10)]
    got: list[tuple[int, Matrix]] = []

    async def consume(stream: AsyncIterator[tuple[int, Matrix]]) -> None:
        async for item in stream:
            got.append(item)

    async with AsyncEmbedder(backend=FakeBackend()) as emb:
        stream = emb.embed_stream(texts, block_size=100, max_blocks_in_flight=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"texts\[250\] is NoneType"):
            await consume(stream)
        assert np.array_equal(stack(got, 250), vectors_for(texts[:250]))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"texts\[3\] is an empty string"):
            await consume(emb.embed_stream(["a", "b", "c", ""]))
        with pytest.raises(TypeError, match="not a single str"):
            await consume(emb.embed_stream("one string"))


def test_a_bad_text_ends_the_blocking_stream_the_same_way() -> None:
    texts: list[object] = [*corpus(30), "", *corpus(5)]
    got: list[tuple[int, Matrix]] = []
    with Embedder(backend=FakeBackend()) as emb:
        with pytest.raises(ValueError, match=r"texts\[30\] is an empty string"):
            got.extend(emb.embed_stream(texts, block_size=8))  # type: ignore[arg-type]
        assert np.array_equal(stack(got, 30), vectors_for(texts[:30]))  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_leaving_a_stream_early_drops_what_it_queued() -> None:
    gate = anyio.Event()

    class Gated(FakeBackend):
        async def embed_batch(self, texts: list[str]) -> Matrix:
            if self.batches:
                await gate.wait()
            return await super().embed_batch(texts)

    backend = Gated()
    async with AsyncEmbedder(
        limits=Limits(max_batch_size=10, max_concurrency=1), backend=backend
    ) as emb:
        stream = emb.embed_stream(corpus(10_000), block_size=10, max_blocks_in_flight=4)
        async with contextlib.aclosing(stream):
            async for _start, _matrix in stream:
                break
        gate.set()
        assert emb.stats().queue_depth == 0
        assert emb.stats().texts <= 10 * 6  # what was queued, not the corpus
        # the embedder is still fine for other callers
        assert np.array_equal(await emb.embed_many(["z"]), vectors_for(["z"]))


def test_stream_runs_on_trio_too() -> None:
    texts = corpus(700)

    async def main() -> Matrix:
        async with AsyncEmbedder(backend=FakeBackend()) as emb:
            blocks = [b async for b in emb.embed_stream(texts, block_size=128)]
        return stack(blocks, len(texts))

    assert np.array_equal(anyio.run(main, backend="trio"), vectors_for(texts))


def test_plan_round_trips() -> None:
    rng = np.random.default_rng(1)
    words = [f"w{'y' * int(k)}" for k in rng.integers(0, 30, 300)]
    for sort in (False, True):
        for dedup in (False, True):
            sent, gather = plan(words, sort_by_length=sort, dedup=dedup)
            rows = np.array(sent, dtype=object)
            back = rows if gather is None else rows[gather]
            assert list(back) == words
            if dedup:
                assert len(sent) == len(set(words))
    assert plan(["a", "bb"], sort_by_length=True, dedup=True) == (["a", "bb"], None)


@pytest.mark.asyncio
async def test_embed_each_names_the_refused_texts() -> None:
    backend = FakeBackend(refuse=frozenset({"bad"}))
    async with AsyncEmbedder(backend=backend) as emb:
        results = await embed_each(emb.running_scheduler(), ["a", "bad", "c"])
    assert isinstance(results[1], InputError)
    assert np.array_equal(results[0], vectors_for(["a"])[0])
    assert np.array_equal(results[2], vectors_for(["c"])[0])


# --------------------------------------------------------------------------------- encode


@pytest.mark.asyncio
async def test_encode_shapes_like_sentence_transformers() -> None:
    async with AsyncEmbedder(backend=FakeBackend()) as emb:
        one = await emb.encode("hello")
        assert one.shape == (DIM,)
        assert np.array_equal(one, vectors_for(["hello"])[0])
        many = await emb.encode(["a", "bb", "a", "ccc"], batch_size=2)
        assert many.shape == (4, DIM)
        assert many.dtype == np.float32
        assert np.array_equal(many, vectors_for(["a", "bb", "a", "ccc"]))
        assert (await emb.encode([])).shape == (0, DIM)
        generator = await emb.encode(t for t in ["x", "y"])
        assert generator.shape == (2, DIM)


@pytest.mark.asyncio
async def test_encode_normalize_truncate_and_prompt_happen_in_the_client() -> None:
    backend = FakeBackend()
    async with AsyncEmbedder(backend=backend) as emb:
        texts = corpus(40)
        unit = await emb.encode(texts, normalize_embeddings=True)
        assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
        raw = vectors_for(texts)
        assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
        short = await emb.encode(texts, truncate_dim=5, normalize_embeddings=True)
        assert short.shape == (40, 5)
        assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
        prompted = await emb.encode(["apple"], prompt="query: ")
        assert np.array_equal(prompted, vectors_for(["query: apple"]))
        assert "query: apple" in backend.sent


@pytest.mark.asyncio
async def test_encode_refuses_what_it_cannot_honour() -> None:
    async with AsyncEmbedder(backend=FakeBackend()) as emb:
        with pytest.raises(ValueError, match="cannot be chosen per call"):
            await emb.encode(["a"], prompt_name="query")
        with pytest.raises(ValueError, match="not supported"):
            await emb.encode(["a"], precision="int8")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="convert_to_numpy=False"):
            await emb.encode(["a"], convert_to_numpy=False)
        with pytest.raises(ValueError, match="empty string"):
            await emb.encode(["a", ""])
        with pytest.raises(ValueError, match="batch_size"):
            await emb.encode(["a"], batch_size=0)


def test_blocking_encode_and_its_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    texts = corpus(300)
    with Embedder(backend=FakeBackend()) as emb:
        matrix = emb.encode(texts, batch_size=64, show_progress_bar=True)
        assert np.array_equal(matrix, vectors_for(texts))
        assert emb.encode("one").shape == (DIM,)
    assert "300/300" in capsys.readouterr().err


# ------------------------------------------------------------------------------- progress


def test_progress_lines_for_logs_show_count_rate_eta_and_retries() -> None:
    log = io.StringIO()
    lines = ProgressLines(_Console(stream=log).error, interval=0.0)
    lines(FileProgress(done=7, total=10, bad=0, seconds=1.5, initial=4, retries=3))
    assert log.getvalue() == "embedkit: 7/10 (70.0%) · 2 texts/s · ETA 00:01 · retries 3\n"
    quiet = ProgressLines(_Console(stream=log).error, interval=3600.0)
    quiet(FileProgress(done=8, total=10, bad=0, seconds=2.0, initial=4, retries=3))
    quiet(FileProgress(done=9, total=10, bad=0, seconds=2.5, initial=4, retries=3))
    assert log.getvalue().count("\n") == 2  # the first update, then nothing for an hour
    assert "\r" not in log.getvalue()
