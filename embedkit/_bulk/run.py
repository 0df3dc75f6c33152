"""The engine of `embed_file`: one resumable run, from a checked `Settings` to a `FileResult`.

A run in four steps:

1. **Scan** the input once (in a worker thread): count the records (= output rows), hash its
   bytes (the resume fingerprint) and find the bad records. With `on_bad="fail"` (the
   default) bad records stop the run here, before anything is sent or written. A stream
   (stdin) is first copied to a spool file next to the output, which is what gets read.
2. **Probe**: embed the first good record, to learn the dimension and to fail early (wrong
   URL, token, model) before any file exists.
3. **Stream**: blocks of records are read in a worker thread and go through `_bulk.stream`,
   the one streaming loop (the embedder's scheduler does the batching); each block's rows go
   to a sink (`sinks.py`), which writes them where they belong.
4. **Commit** every `commit_interval` seconds and at the end: the sink makes its rows durable,
   then `OUT.state.json` (committed rows + fingerprint) is replaced atomically. At the end
   the sink puts the final file in place and the state is marked complete.

Killed at any moment, the state never claims a row that is not on disk, and `resume=True`
rewrites everything from the committed row on: the result is the file an uninterrupted run
writes (byte for byte for .npy, row for row for .parquet), given a server that gives a text
the same vector every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import numpy as np

from .._client import AsyncEmbedder
from .._config import Matrix
from .._errors import EmbedkitError
from .._quantize import numpy_dtype
from .corpus import Bad, Corpus, CorpusError, Scan
from .progress import FileProgress, ProgressArg, reporter
from .sinks import NpySink, ParquetSink, Sink
from .state import OutputPaths, ResumeState, state_path
from .stream import default_depth, stream

__all__ = ["FileResult", "Run", "Settings", "Words"]

logger = logging.getLogger("embedkit.files")  # the CLI shows this logger's lines as the run's

_SHOWN_BAD = 20


@dataclasses.dataclass(frozen=True)
class FileResult:
    """What `embed_file` did.

    Attributes:
        output: the file written (`.npy` or `.parquet`).
        rows: rows in it (= records in the input, bad ones included).
        bad: rows without an embedding (`on_bad="skip"`): zero rows and False in `mask`
            for .npy, a null `embedding` for .parquet.
        dim: the embedding size.
        seconds: how long this call took.
        embedded: rows this call wrote (the others were written by an interrupted run).
        resumed_from: the first row this call wrote (0 unless it resumed a run).
        mask: the .npy mask file (`on_bad="skip"`), else None.
        tokens: tokens this call cost: as the server reported them (`usage.prompt_tokens`,
            `x-compute-tokens`), else as counted or estimated before sending; 0 when
            token awareness is off (`count_tokens=False`).
    """

    output: Path
    rows: int
    bad: int
    dim: int
    seconds: float
    embedded: int
    resumed_from: int
    mask: Path | None = None
    tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Words:
    """How messages name the options: as Python keywords, or as the CLI's flags."""

    resume: str = "resume=True"
    force: str = "overwrite=True"
    skip: str = "on_bad='skip'"
    fail: str = "on_bad='fail'"
    again: str = "call embed_file again with the same arguments"


@dataclasses.dataclass
class _Block:
    start: int
    n: int
    good: np.ndarray[Any, np.dtype[np.intp]] | None  # positions of the texts; None: all good
    bad: list[int]  # positions of bad records
    ids: list[Any] | None


@dataclasses.dataclass
class Settings:
    """Everything one run needs, checked."""

    corpus: Corpus
    source: str
    output: Path
    kind: Literal["npy", "parquet"]
    resume: bool
    overwrite: bool
    on_bad: str
    block_size: int
    commit_interval: float
    sort_by_length: bool
    row_group_size: int | None
    progress: ProgressArg
    words: Words


class _FileSource:
    """Blocks of records from the corpus, read in a worker thread."""

    def __init__(self, corpus: Corpus, start: int, block_size: int) -> None:
        self._pairs = corpus.pairs(start)
        self._with_ids = corpus.id_key is not None
        self.position = start
        self.block_size = block_size
        self.error: BaseException | None = None

    def _read(self) -> tuple[_Block, list[str]] | None:
        texts: list[str] = []
        good: list[int] = []
        bad: list[int] = []
        ids: list[Any] = []
        n = 0
        for record, raw_id in self._pairs:
            if isinstance(record, Bad):
                bad.append(n)
            else:
                good.append(n)
                texts.append(record)
            ids.append(raw_id)
            n += 1
            if n >= self.block_size:
                break
        if n == 0:
            return None
        positions = None if not bad else np.asarray(good, dtype=np.intp)
        block = _Block(self.position, n, positions, bad, ids if self._with_ids else None)
        self.position += n
        return block, texts

    async def read(self) -> tuple[_Block, list[str]] | None:
        return await anyio.to_thread.run_sync(self._read)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class Run:
    """One run of `embed_file`: scan, probe, stream, commit (or resume a run that was cut)."""

    def __init__(self, job: Settings, embedder: AsyncEmbedder) -> None:
        self.job = job
        self.embedder = embedder
        self.sink: Sink | None = None
        self.state: ResumeState | None = None
        self.refused_shown = 0
        self._tokens_before = 0

    # ---------------------------------------------------------------- setup

    def fingerprint(self, scan: Scan) -> dict[str, Any]:
        job = self.job
        found = {
            **job.corpus.options(),
            "records": scan.records,
            "bytes": scan.size,
            "input_blake2b": scan.digest,
            **self.embedder.identity(),
        }
        if job.kind == "parquet":
            found["output"] = "parquet"
            found["row_group_size"] = job.row_group_size
            found["id_type"] = None if scan.id_type is None else str(scan.id_type)
        return found

    def decide(self, fingerprint: dict[str, Any], scan: Scan) -> ResumeState | bool | None:
        """The state to resume, False to start anew, None when the output is complete."""
        job, words = self.job, self.job.words
        path = state_path(job.output)
        state = None if job.overwrite else ResumeState.load(path)
        if job.overwrite:
            path.unlink(missing_ok=True)
        if state is None:
            if job.output.exists() and not job.overwrite:
                raise CorpusError(
                    f"{job.output} already exists and no {path.name} says how it was "
                    f"made; pass {words.force} to replace it"
                )
            if job.resume:
                logger.info("nothing to resume: starting from the first record")
            return False
        changed = state.mismatch(fingerprint)
        if changed is not None:
            what = "input" if changed in ("records", "bytes", "input_blake2b") else changed
            raise CorpusError(
                f"{path.name} records a run made with a different {what} than this one; "
                f"it cannot be continued. Pass {words.force} to start over, or choose another "
                "output"
            )
        if state.complete:
            if job.output.exists():
                logger.info(
                    f"{job.output} is already complete ({state.rows:,} × {state.dim}); "
                    "nothing to do"
                )
                return None
            raise CorpusError(
                f"{path.name} says the run finished, but {job.output} is gone; "
                f"pass {words.force} to embed again"
            )
        if state.committed < state.rows and not job.resume:
            raise CorpusError(
                f"an interrupted run of {job.output.name} exists ({state.committed:,} of "
                f"{state.rows:,} rows done): pass {words.resume} to continue it, or "
                f"{words.force} to start over"
            )
        if state.on_bad == "skip" and job.on_bad == "fail":
            raise CorpusError(
                f"this run was started with {words.skip}: resume it with {words.skip}"
            )
        return state

    def report_bad(self, scan: Scan) -> str:
        job = self.job
        lines = [
            f"{scan.bad:,} bad record{'s' if scan.bad != 1 else ''} in {job.source} "
            f"({job.words.fail}):"
        ]
        shown = scan.examples[:_SHOWN_BAD]
        lines += [f"  {job.corpus.where(index)}: {reason}" for index, reason in shown]
        if scan.bad > len(shown):
            lines.append(f"  … and {scan.bad - len(shown):,} more")
        lines.append(
            f"nothing was sent or written. Fix these records, or pass {job.words.skip} to "
            + (
                "write a zero row for each and a mask (False = not embedded)"
                if job.kind == "npy"
                else "write a null embedding for each"
            )
        )
        return "\n".join(lines)

    def open_sink(self, scan: Scan, dim: int, resume: ResumeState | None) -> Sink:
        job = self.job
        if job.kind == "npy":
            return NpySink(
                job.output,
                scan.records,
                dim,
                mask=job.on_bad == "skip",
                resume=resume,
                dtype=self.embedder.dtype,
            )
        return ParquetSink(
            job.output,
            scan.records,
            dim,
            id_name=job.corpus.id_key or "id",
            id_type=scan.id_type,
            row_group_size=job.row_group_size,
            resume=resume,
            dtype=self.embedder.dtype,
        )

    # ---------------------------------------------------------------- the run

    async def run(self) -> FileResult:
        job = self.job
        started = time.monotonic()
        self._tokens_before = self._tokens_now()
        scan = await anyio.to_thread.run_sync(job.corpus.scan)
        logger.info(
            f"{job.source}: {_count(scan.records, 'record')} ({job.corpus.format}), "
            f"{scan.bad:,} bad; scanned in {time.monotonic() - started:.1f} s"
        )
        fingerprint = self.fingerprint(scan)
        resume = self.decide(fingerprint, scan)
        if resume is None:
            state = ResumeState.load(state_path(job.output))
            assert state is not None
            return self._result(state, started, resumed_from=state.rows)
        if scan.bad and job.on_bad == "fail":
            raise CorpusError(self.report_bad(scan))
        if scan.bad:
            logger.info(
                f"{_count(scan.bad, 'bad record')} will be written as "
                + ("zero rows (see the mask)" if job.kind == "npy" else "null embeddings")
            )
        if isinstance(resume, ResumeState):
            dim = resume.dim
            self.state = resume
            started_with = resume.on_bad
            resume.on_bad = job.on_bad if started_with == "fail" else started_with
            sink = self.sink = await anyio.to_thread.run_sync(
                functools.partial(
                    self.open_sink, scan, dim, dataclasses.replace(resume, on_bad=started_with)
                )
            )
        else:
            dim = self.embedder.dimension or 0
            if scan.first_good is not None:
                dim = int((await self.embedder.embed(scan.first_good)).shape[0])
            self.state = ResumeState(
                fingerprint=fingerprint, rows=scan.records, dim=dim, on_bad=job.on_bad
            )
            sink = self.sink = await anyio.to_thread.run_sync(
                functools.partial(self.open_sink, scan, dim, None)
            )
            self.state.save(sink.state_path)
        first = sink.committed
        try:
            if first < scan.records:
                await self._stream(scan, dim, first)
            await anyio.to_thread.run_sync(self._finish)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await anyio.to_thread.run_sync(self._commit)
            if isinstance(exc, EmbedkitError) and not isinstance(exc, CorpusError):
                state = self.state
                logger.warning(
                    f"{state.committed:,} of {state.rows:,} rows are saved; fix the cause and "
                    f"{job.words.again} and {job.words.resume} to continue"
                )
            raise
        finally:
            sink.close()
        result = self._result(self.state, started, resumed_from=first)
        element = numpy_dtype(self.embedder.dtype).__name__
        shape = f"{self.state.rows:,} × {self.state.dim} {element}"
        if job.kind == "parquet":
            id_name = job.corpus.id_key or "id"
            shape = f"{self.state.rows:,} rows: {id_name}, embedding {element}[{self.state.dim}]"
        summary = f"wrote {job.output} ({shape})"
        if result.embedded:
            summary += (
                f" in {result.seconds:.1f} s, {result.embedded / max(result.seconds, 1e-9):,.0f}"
                " texts/s"
            )
        if self.state.on_bad == "skip":
            if job.kind == "npy":
                summary += (
                    f"; {_count(self.state.bad, 'bad record')} written as zero rows, "
                    f"see {result.mask}"
                )
            else:
                summary += f"; {_count(self.state.bad, 'bad record')} with a null embedding"
        logger.info(summary)
        return result

    def _result(self, state: ResumeState, started: float, *, resumed_from: int) -> FileResult:
        mask = None
        if self.job.kind == "npy" and state.on_bad == "skip":
            mask = OutputPaths.for_output(self.job.output).mask
        return FileResult(
            output=self.job.output,
            rows=state.rows,
            bad=state.bad,
            dim=state.dim,
            seconds=time.monotonic() - started,
            embedded=state.rows - resumed_from,
            resumed_from=resumed_from,
            mask=mask,
            tokens=self._tokens_now() - self._tokens_before,
        )

    def _tokens_now(self) -> int:
        """Tokens spent so far by the embedder: the server's count, else ours."""
        try:
            stats = self.embedder.stats()
        except EmbedkitError:  # not open: nothing spent
            return 0
        return stats.tokens_reported or stats.tokens_sent

    async def _stream(self, scan: Scan, dim: int, first: int) -> None:
        job, embedder = self.job, self.embedder
        assert self.sink is not None
        logger.info(
            f"embedding {_count(scan.records - first, 'record')} into {job.output} with "
            f"{embedder.describe()}" + (f", from record {first:,}" if first else "")
        )
        report = reporter(job.progress, scan.records, first)
        started = last_commit = time.monotonic()
        bad_here = 0
        source = _FileSource(job.corpus, first, job.block_size)
        depth = default_depth(job.block_size, embedder.max_concurrency, embedder.max_batch_size)
        blocks = stream(
            embedder.running_scheduler(),
            source,
            depth=depth,
            sort_by_length=job.sort_by_length,
            dedup=True,
            isolate_refused=True,
        )
        try:
            async with contextlib.aclosing(blocks):
                async for done in blocks:
                    block = done.tag
                    if done.refused:
                        self._refused(block, done.refused)
                    rows, ok = self._rows(block, done.matrix, dim, done.refused)
                    await anyio.to_thread.run_sync(
                        self.sink.write, block.start, rows, ok, block.ids
                    )
                    bad_here += 0 if ok is None else int(ok.size - np.count_nonzero(ok))
                    if report is not None:
                        now = time.monotonic()
                        retries = sum(embedder.stats().retries.values())
                        report(
                            FileProgress(
                                done=block.start + block.n,
                                total=scan.records,
                                bad=bad_here,
                                seconds=now - started,
                                initial=first,
                                retries=retries,
                            )
                        )
                    now = time.monotonic()
                    if now - last_commit >= job.commit_interval:
                        await anyio.to_thread.run_sync(self._commit)
                        last_commit = now
        finally:
            if report is not None:
                report(None)

    def _refused(self, block: _Block, refused: list[tuple[int, Any]]) -> None:
        job = self.job
        positions = block.good if block.good is not None else np.arange(block.n, dtype=np.intp)
        for k, error in refused:
            index = block.start + int(positions[k])
            reason = f"refused by the server: {error.message or error}"
            if job.on_bad == "fail":
                assert self.sink is not None
                raise CorpusError(
                    f"{job.corpus.where(index)}: {reason}\n{block.start:,} rows before it are "
                    f"saved. Fix the input and start over, or {job.words.again} and "
                    f"{job.words.resume} {job.words.skip} to write "
                    + ("a zero row" if job.kind == "npy" else "a null embedding")
                    + " for it"
                )
            if self.refused_shown < _SHOWN_BAD:
                logger.warning(
                    f"{job.corpus.where(index)}: {reason} "
                    + ("(zero row)" if job.kind == "npy" else "(null embedding)")
                )
                self.refused_shown += 1

    def _rows(
        self, block: _Block, matrix: Matrix, dim: int, refused: list[tuple[int, Any]]
    ) -> tuple[Matrix, np.ndarray[Any, np.dtype[np.bool_]] | None]:
        if matrix.shape[0] and matrix.shape[1] != dim:
            raise CorpusError(
                f"the embeddings now have {matrix.shape[1]} dimensions, but this output has "
                f"{dim}: did the server switch models?"
            )
        if not block.bad and not refused:
            return matrix, None
        rows = np.zeros((block.n, dim), dtype=np.float32)
        positions = block.good if block.good is not None else np.arange(block.n, dtype=np.intp)
        if len(positions):
            rows[positions] = matrix
        ok = np.zeros(block.n, dtype=np.bool_)
        ok[positions] = True
        if refused:
            ok[positions[[k for k, _ in refused]]] = False
        return rows, ok

    def _commit(self) -> None:
        """Make the written rows durable, then record them in the state file."""
        if self.state is None or self.sink is None:
            return
        self.sink.sync()
        self.state.committed = self.sink.committed
        self.state.bad = self.sink.committed_bad
        self.state.save(self.sink.state_path)

    def _finish(self) -> None:
        assert self.sink is not None
        assert self.state is not None
        self._commit()
        self.sink.finish()
        self.state.complete = True
        self.state.save(self.sink.state_path)
        if isinstance(self.sink, ParquetSink):
            self.sink.cleanup()
