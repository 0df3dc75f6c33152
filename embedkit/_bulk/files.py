"""`embed_file` / `aembed_file`: a corpus file in, an `.npy` or `.parquet` out, resumable.

This module is the door: it checks every argument (a clear `ValueError` or `CorpusError`
before anything is read or sent), opens the corpus (a stream such as stdin is first copied
to a spool file next to the output, removed at the end), brings an embedder (the caller's,
or one of its own, closed after), and hands the checked `Settings` to `Run` (`run.py`),
the engine that scans, probes, streams, commits and resumes. `embed_file` is the same call
from synchronous code, through a blocking portal.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import anyio.from_thread

from .._client import AsyncEmbedder
from .._sync import Embedder
from .corpus import CorpusError, guess_format, open_corpus, spool
from .progress import ProgressArg
from .run import FileResult, Run, Settings, Words

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .._options import AnyOptions

__all__ = [
    "aembed_file",
    "embed_file",
    "run_file",
]

_PYTHON_WORDS = Words()  # messages to callers of embed_file name its keywords


def _job(
    input: str | os.PathLike[str] | IO[bytes],
    output: str | os.PathLike[str],
    *,
    field: str | None,
    column: str | None,
    id_field: str | None,
    format: str | None,
    resume: bool,
    overwrite: bool,
    on_bad: str,
    block_size: int,
    commit_interval: float,
    sort_by_length: bool,
    row_group_size: int | None,
    progress: ProgressArg,
    words: Words,
    spooled: list[Path],
) -> Settings:
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix not in (".npy", ".parquet"):
        raise ValueError(
            f"{out}: the output must end in .npy or .parquet, not {suffix or 'nothing'!r}"
        )
    kind: Literal["npy", "parquet"] = "npy" if suffix == ".npy" else "parquet"
    if on_bad not in ("fail", "skip"):
        raise ValueError(f"on_bad must be 'fail' or 'skip', not {on_bad!r}")
    if block_size < 1:
        raise ValueError("block_size must be at least 1")
    if row_group_size is not None and row_group_size < 1:
        raise ValueError("row_group_size must be at least 1")
    if not commit_interval >= 0:
        raise ValueError("commit_interval must be at least 0 seconds")
    if id_field is not None and kind == "npy":
        raise ValueError(
            "an .npy holds only vectors (row i = record i): write a .parquet to keep the ids"
        )
    if not out.parent.is_dir():
        raise CorpusError(f"{out.parent}: no such folder for the output")
    if isinstance(input, (str, os.PathLike)) and str(input) != "-":
        path = Path(input)
        corpus = open_corpus(path, format=format, field=field, column=column, id_field=id_field)
        source = str(path)
    else:
        stream_in: IO[bytes] = sys.stdin.buffer if not hasattr(input, "read") else input  # type: ignore[assignment]
        fmt = format or guess_format(None, field=field, column=column)
        spooled.append(spool(stream_in, out.parent, prefix=f".{out.name}.stdin-"))
        corpus = open_corpus(spooled[0], format=fmt, field=field, column=column, id_field=id_field)
        name = getattr(stream_in, "name", "<stream>")
        source = "stdin" if name in ("<stdin>", 0) else str(name)
    return Settings(
        corpus=corpus,
        source=source,
        output=out,
        kind=kind,
        resume=resume,
        overwrite=overwrite,
        on_bad=on_bad,
        block_size=block_size,
        commit_interval=commit_interval,
        sort_by_length=sort_by_length,
        row_group_size=row_group_size,
        progress=progress,
        words=words,
    )


async def run_file(
    input: str | os.PathLike[str] | IO[bytes],
    output: str | os.PathLike[str],
    *,
    embedder: AsyncEmbedder | None,
    options: dict[str, Any],
    words: Words = _PYTHON_WORDS,
    **settings: Any,
) -> FileResult:
    """`aembed_file`'s body; the CLI calls it with its own `words`."""
    spooled: list[Path] = []
    try:
        job = _job(input, output, words=words, spooled=spooled, **settings)
        if embedder is not None:
            if options:
                raise TypeError(
                    f"pass either embedder= or embedder options ({', '.join(sorted(options))}), "
                    "not both"
                )
            embedder.stats()  # raises ClientClosedError unless it is open
            return await Run(job, embedder).run()
        async with AsyncEmbedder(**options) as own:
            return await Run(job, own).run()
    finally:
        for path in spooled:
            path.unlink(missing_ok=True)


async def aembed_file(
    input: str | os.PathLike[str] | IO[bytes],
    output: str | os.PathLike[str],
    *,
    field: str | None = None,
    column: str | None = None,
    id_field: str | None = None,
    format: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_bad: Literal["fail", "skip"] = "fail",
    progress: ProgressArg = None,
    block_size: int = 1024,
    commit_interval: float = 2.0,
    sort_by_length: bool = True,
    row_group_size: int | None = None,
    embedder: AsyncEmbedder | None = None,
    **options: Unpack[AnyOptions],
) -> FileResult:
    """Embed every record of a file into an `.npy` or `.parquet`, resumably. See `embed_file`."""
    return await run_file(
        input,
        output,
        embedder=embedder,
        options=dict(options),
        field=field,
        column=column,
        id_field=id_field,
        format=format,
        resume=resume,
        overwrite=overwrite,
        on_bad=on_bad,
        block_size=block_size,
        commit_interval=commit_interval,
        sort_by_length=sort_by_length,
        row_group_size=row_group_size,
        progress=progress,
    )


def embed_file(
    input: str | os.PathLike[str] | IO[bytes],
    output: str | os.PathLike[str],
    *,
    field: str | None = None,
    column: str | None = None,
    id_field: str | None = None,
    format: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_bad: Literal["fail", "skip"] = "fail",
    progress: ProgressArg = None,
    block_size: int = 1024,
    commit_interval: float = 2.0,
    sort_by_length: bool = True,
    row_group_size: int | None = None,
    embedder: Embedder | None = None,
    **options: Unpack[AnyOptions],
) -> FileResult:
    """Embed every record of a file into an `.npy` or a `.parquet`; resumable after a crash.

    `embedkit embed` is this function with flags. Row i of the output is record i of the
    input, whatever happens to the records around it.

    Args:
        input: a `.txt` (a text per line), `.jsonl`, `.csv`, `.tsv` or `.parquet` file; or
            a binary stream (e.g. `sys.stdin.buffer`), copied to a spool file first.
        output: `OUT.npy` (float32, shape (records, dim)) or `OUT.parquet` (an id column and
            `embedding` as `fixed_size_list<float>[dim]`, in row groups).
        field: the JSON field that holds the text (jsonl; default "text").
        column: the column that holds the text (csv, tsv, parquet; default "text").
        id_field: the field (jsonl) or column (csv, tsv, parquet) holding each record's id,
            written as the Parquet id column under that name. Without it the id column is
            `id`, the record number. .parquet output only.
        format: the input format, when the name does not tell ("txt", "jsonl", "csv", ...).
        resume: continue an interrupted run of the same input, output and options.
        overwrite: start over, replacing the output and its state.
        on_bad: a bad record (empty, missing field, not a string, refused by the server):
            "fail" (the default; nothing is sent when the scan finds one) or "skip" (a zero
            row and False in `OUT.mask.npy`; a null embedding in Parquet).
        progress: True for a tqdm bar on stderr, a tqdm bar of your own, or a callable that
            receives a `FileProgress` after every block.
        block_size: records read, planned (dedup, sort) and written per block.
        commit_interval: seconds between commits (fsync + state); 0 commits every block.
            Parquet commits at row-group boundaries.
        sort_by_length: group texts of similar length into requests (rows stay in order).
        row_group_size: rows per Parquet row group (and per resumable part); default about
            4 MiB of vectors (2048 rows at 384 dimensions).
        embedder: an open `Embedder` to use (else one is made from `options` and closed).
        **options: any `AsyncEmbedder` argument (`api=`, `url=`, `model=`, `limits=`...).

    Returns:
        A `FileResult`: `rows`, `bad`, `dim`, `seconds`, `output`, ...

    Raises:
        CorpusError: the input or output cannot be used as asked (bad records with
            `on_bad="fail"`, a changed input on resume, an existing output without state).
        EmbedkitError: the server failed for good; the committed rows are kept, and
            `resume=True` continues.
    """
    run = functools.partial(
        run_file,
        input,
        output,
        embedder=None if embedder is None else embedder.aio,
        options=dict(options),
        field=field,
        column=column,
        id_field=id_field,
        format=format,
        resume=resume,
        overwrite=overwrite,
        on_bad=on_bad,
        block_size=block_size,
        commit_interval=commit_interval,
        sort_by_length=sort_by_length,
        row_group_size=row_group_size,
        progress=progress,
    )
    if embedder is not None:
        return embedder.running_portal().call(run)
    with anyio.from_thread.start_blocking_portal() as portal:
        return portal.call(run)
