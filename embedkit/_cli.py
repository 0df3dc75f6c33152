"""The `embedkit` command: `embed` a corpus into an .npy file, `serve` a local model, `bench`.

`embedkit embed INPUT -o OUT.npy` in four steps:

1. **Scan** the input once: count the records (the .npy header needs the row count), hash
   its bytes (the resume fingerprint) and find the bad records. With `--on-bad fail` (the
   default) bad records stop the run here, before anything is sent or written. Stdin is
   first copied to a spool file next to OUT, which is what gets scanned and read.
2. **Probe**: embed the first good record, to learn the dimension and to fail early (wrong
   URL, token, model) before any file exists.
3. **Stream**: records are read in blocks on the main thread and go through the embedder's
   scheduler (`_bulk.Window`, on the embedder's event loop in a background thread); each
   block's rows are written in place into `OUT.npy.partial` (an .npy with its final header).
4. **Commit** every `--commit-interval` seconds and at the end: fsync the rows, then write
   `OUT.npy.state.json` (committed rows + fingerprint) atomically. At the end the partial files
   are renamed to `OUT.npy` (and `OUT.mask.npy`), and the state is marked complete.

Killed at any moment, the state never claims a row that is not on disk, and `--resume`
rewrites everything from the committed row on: the result is byte for byte the file an
uninterrupted run writes (given a server that gives a text the same vector every time).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from ._corpus import (
    FORMATS,
    Bad,
    Corpus,
    CorpusError,
    NpyWriter,
    OutputPaths,
    ResumeState,
    Scan,
    fsync_dir,
    guess_format,
    open_corpus,
    spool,
)

__all__ = ["main"]

logger = logging.getLogger("embedkit")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_SHOWN_BAD = 20


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The `embedkit` command line."""
    parser = argparse.ArgumentParser(
        prog="embedkit",
        description="Fast, batched, resilient text embeddings.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    embed = commands.add_parser(
        "embed",
        help="embed a corpus (.txt, .jsonl, .csv, .tsv, .parquet or - for stdin) into an .npy",
        description=(
            "Embed every record of INPUT into OUT.npy (float32, row i = record i), written as "
            "it goes and resumable after any interruption (--resume). The token comes from "
            "the environment only: HF_TOKEN for hf and tei, OPENAI_API_KEY for openai."
        ),
    )
    embed.add_argument("input", metavar="INPUT", help="a file, or - to read stdin")
    embed.add_argument("-o", "--output", required=True, metavar="OUT.npy", help="the .npy to write")
    embed.add_argument(
        "--api",
        choices=["hf", "tei", "openai", "local"],
        default="local",
        help="where embeddings come from (default: local, the packaged all-MiniLM-L6-v2)",
    )
    embed.add_argument("--url", help="server URL (tei: the root; hf, openai: optional)")
    embed.add_argument("--model", help="model id (or a folder, for --api local)")
    key = embed.add_mutually_exclusive_group()
    key.add_argument("--field", help="the JSON field that holds the text (jsonl; default text)")
    key.add_argument("--column", help="the column that holds the text (csv, tsv, parquet)")
    embed.add_argument(
        "--format", choices=FORMATS, help="the input format (default: from the file name)"
    )
    embed.add_argument("--batch-size", type=int, help="texts per request at most (default 32)")
    embed.add_argument("--concurrency", type=int, help="requests in flight at most (default 8)")
    embed.add_argument("--rps", type=float, help="requests per second at most")
    embed.add_argument(
        "--cache-size",
        type=int,
        default=0,
        metavar="N",
        help="remember the last N vectors, so repeats further apart than a block are not "
        "sent again (default 0; repeats within a block are always sent once)",
    )
    embed.add_argument(
        "--resume", action="store_true", help="continue an interrupted run of the same command"
    )
    embed.add_argument(
        "--force", action="store_true", help="start over, replacing OUT and its state"
    )
    embed.add_argument(
        "--on-bad",
        choices=["fail", "skip"],
        default="fail",
        help="a bad record (empty, missing field, not a string, refused by the server): fail "
        "the run (default) or write a zero row and mark it False in OUT.mask.npy",
    )
    normalize = embed.add_mutually_exclusive_group()
    normalize.add_argument(
        "--normalize", dest="normalize", action="store_true", default=None, help="unit vectors"
    )
    normalize.add_argument(
        "--no-normalize", dest="normalize", action="store_false", help="raw vectors"
    )
    embed.add_argument("--prompt-name", help="a prompt the model defines (hf, tei, local)")
    embed.add_argument("--dimensions", type=int, help="Matryoshka output size")
    embed.add_argument(
        "--truncate", action="store_true", default=None, help="let the server cut long texts"
    )
    embed.add_argument(
        "--no-sort",
        dest="sort",
        action="store_false",
        help="send texts in input order (default: sort each block by length, so requests "
        "hold texts of similar length; rows are always in input order)",
    )
    embed.add_argument(
        "--block-size", type=int, default=1024, help="records per block (default 1024)"
    )
    embed.add_argument(
        "--commit-interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="fsync and record progress this often (default 2; 0: after every block)",
    )
    embed.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="when stderr is not a terminal, log progress this often (default 10)",
    )
    engine = embed.add_argument_group(
        "scale-out (--engine ray: INPUT a folder or glob, OUT a folder)"
    )
    engine.add_argument(
        "--engine",
        choices=["process", "ray"],
        default="process",
        help="process: this process, into OUT.npy (default); ray: a Ray cluster, into a folder "
        "of parquet files with every input column and the vectors (pip install 'embedkit[ray]')",
    )
    engine.add_argument("--address", help="the Ray cluster to join (default: start a local one)")
    engine.add_argument(
        "--workers", type=int, default=4, help="Ray actors, one embedder each (default 4)"
    )
    embed.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    embed.add_argument("-v", "--verbose", action="store_true", help="log retries and requests")

    commands.add_parser(
        "serve",
        help="serve a local model over HTTP (HF, TEI and OpenAI protocols)",
        add_help=False,
        prefix_chars="\0",
    ).add_argument("rest", nargs=argparse.REMAINDER)
    commands.add_parser(
        "bench",
        help="run the benchmarks (python -m benchmarks, from a source checkout)",
        add_help=False,
        prefix_chars="\0",
    ).add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `embedkit ...`; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.rest)
    if args.command == "bench":
        return _bench(args.rest)
    if args.engine == "ray":
        return _embed_ray(args)
    return _embed(args)


# ------------------------------------------------------------------------ serve, bench


def _serve(rest: list[str]) -> int:
    try:
        from . import serve
    except ImportError as exc:
        print(
            f"embedkit serve needs the serve and local extras: pip install 'embedkit[serve,local]' "
            f"({exc})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        serve.main(rest)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _bench(rest: list[str]) -> int:
    if importlib.util.find_spec("benchmarks") is None:
        root = Path(__file__).resolve().parent.parent
        if (root / "benchmarks" / "__main__.py").is_file():
            sys.path.insert(0, str(root))
    if importlib.util.find_spec("benchmarks") is None:
        print(
            "embedkit bench runs the benchmarks/ package of a source checkout, which this "
            "installation does not have:\n"
            "  git clone <the embedkit repository> && cd embedkit\n"
            '  pip install -e ".[bench,local,serve]" && python -m benchmarks --smoke',
            file=sys.stderr,
        )
        return EXIT_FAILED
    module = importlib.import_module("benchmarks.__main__")
    result = module.main(rest)
    return int(result or 0)


# ------------------------------------------------------------------------ embed on Ray


def _embed_ray(args: argparse.Namespace) -> int:
    """`embedkit embed INPUT -o OUT_DIR --engine ray`: `embedkit.ray.embed_files` on a cluster."""
    console = _Console(quiet=args.quiet)
    for flag, given in (("--resume", args.resume), ("stdin (-)", args.input == "-")):
        if given:
            console.error(f"{flag} is for the process engine; --engine ray writes a new folder")
            return EXIT_USAGE
    if args.workers < 1:
        console.error("--workers must be at least 1")
        return EXIT_USAGE
    try:
        import ray

        import embedkit.ray
    except ImportError as exc:
        console.error(f"--engine ray needs the ray extra: pip install 'embedkit[ray]' ({exc})")
        return EXIT_FAILED
    from ._errors import EmbedkitError

    options = {
        "api": args.api,
        "url": args.url,
        "model": args.model,
        "normalize": args.normalize,
        "prompt_name": args.prompt_name,
        "dimensions": args.dimensions,
        "truncate": args.truncate,
        "max_batch_size": args.batch_size,
        "max_concurrency": args.concurrency,
        "cache_size": args.cache_size or None,
    }
    kwargs: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    started = time.monotonic()
    try:
        ray.init(address=args.address, logging_level=logging.ERROR, log_to_driver=args.verbose)
        ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
        rows = embedkit.ray.embed_files(
            args.input,
            args.output,
            format=args.format,
            column=args.column or args.field,
            overwrite=args.force,
            workers=args.workers,
            requests_per_second=args.rps,
            on_bad=args.on_bad,
            batch_size=args.block_size,
            **kwargs,
        )
    except (ValueError, TypeError, CorpusError) as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except (EmbedkitError, ray.exceptions.RayError) as exc:
        console.error(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        ray.shutdown()
    console.say(f"wrote {args.output} ({rows:,} rows) in {time.monotonic() - started:.1f} s")
    return EXIT_OK


# ------------------------------------------------------------------------------ embed


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class _Console:
    """Messages on stderr, prefixed, that do not tear the progress bar."""

    def __init__(self, *, quiet: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.progress: Any = None

    def say(self, message: str) -> None:
        if not self.quiet:
            self.error(message)

    def error(self, message: str) -> None:
        if self.progress is not None:
            self.progress.clear()
        print(f"embedkit: {message}", file=self.stream, flush=True)


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: _Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.console.error(self.format(record))


@contextlib.contextmanager
def _logging_to(console: _Console, level: int) -> Iterator[None]:
    handler = _ConsoleHandler(console)
    handler.setLevel(level)
    previous = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


class _Failed(Exception):
    """Stop `embed` with this message and exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


def _embed(args: argparse.Namespace) -> int:
    console = _Console(quiet=args.quiet)
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    for name in ("batch_size", "concurrency", "block_size", "dimensions"):
        value = getattr(args, name)
        if value is not None and value < 1:
            console.error(f"--{name.replace('_', '-')} must be at least 1")
            return EXIT_USAGE
    if args.cache_size < 0:
        console.error("--cache-size must be at least 0")
        return EXIT_USAGE
    if args.rps is not None and not args.rps > 0:
        console.error("--rps must be a positive number")
        return EXIT_USAGE
    if args.url and args.api == "local":
        console.error("--url is for --api hf, tei or openai; --api local runs the model here")
        return EXIT_USAGE
    spooled: Path | None = None
    with _logging_to(console, level):
        try:
            out = Path(args.output)
            if not out.parent.is_dir():
                raise CorpusError(f"{out.parent}: no such folder for the output")
            if args.input == "-":
                fmt = args.format or guess_format(None, field=args.field, column=args.column)
                spooled = spool(sys.stdin.buffer, out.parent, prefix=f".{out.name}.stdin-")
                corpus = open_corpus(spooled, format=fmt, field=args.field, column=args.column)
                source = "stdin"
            else:
                path = Path(args.input)
                corpus = open_corpus(path, format=args.format, field=args.field, column=args.column)
                source = str(path)
            return _Run(args, corpus, source, out, console).run()
        except _Failed as exc:
            console.error(str(exc))
            return exc.status
        except CorpusError as exc:
            console.error(str(exc))
            return EXIT_FAILED
        finally:
            if spooled is not None:
                spooled.unlink(missing_ok=True)


@dataclasses.dataclass
class _Block:
    start: int
    n: int
    texts: list[str]
    good: npt.NDArray[np.intp] | None  # positions of `texts` in the block; None: all good
    bad: list[tuple[int, str]]  # (position in the block, reason)


class _Run:
    """One `embedkit embed` run, from the scan to the renamed output."""

    def __init__(
        self, args: argparse.Namespace, corpus: Corpus, source: str, out: Path, console: _Console
    ) -> None:
        self.args = args
        self.corpus = corpus
        self.source = source
        self.paths = OutputPaths.for_output(out)
        self.console = console
        self.data: NpyWriter | None = None
        self.mask: NpyWriter | None = None
        self.state: ResumeState | None = None
        self.done = 0
        self.bad = 0
        self.refused_shown = 0

    # ---------------------------------------------------------------- setup

    def fingerprint(self, scan: Scan) -> dict[str, Any]:
        args = self.args
        url = args.url
        return {
            **self.corpus.options(),
            "records": scan.records,
            "bytes": scan.size,
            "input_blake2b": scan.digest,
            "api": args.api,
            "model": args.model,
            # the URL may carry credentials: keep only a hash of it
            "url_sha256": hashlib.sha256(url.encode()).hexdigest()[:16] if url else None,
            "normalize": args.normalize,
            "prompt_name": args.prompt_name,
            "dimensions": args.dimensions,
            "truncate": args.truncate,
        }

    def run(self) -> int:
        args, paths, console = self.args, self.paths, self.console
        started = time.monotonic()
        scan = self.corpus.scan()
        console.say(
            f"{self.source}: {_count(scan.records, 'record')} ({self.corpus.format}), "
            f"{scan.bad:,} bad; scanned in {time.monotonic() - started:.1f} s"
        )
        fingerprint = self.fingerprint(scan)
        state = None if args.force else ResumeState.load(paths.state)
        if args.force:
            paths.state.unlink(missing_ok=True)
        resume_from = self._decide(state, fingerprint, scan)
        if resume_from is None:
            return EXIT_OK
        if scan.bad and args.on_bad == "fail":
            self._report_bad(scan)
            raise _Failed(
                "nothing was sent or written. Fix these records, or pass --on-bad skip to "
                f"write a zero row for each and a mask ({paths.mask.name}, False = not embedded)"
            )
        if scan.bad:
            self._report_bad(scan)
            console.say(f"they get zero rows, and False in {paths.mask.name}")
        if scan.first_good is None and scan.records:
            raise _Failed(f"none of the {scan.records:,} records can be embedded")
        return self._embed(scan, fingerprint, resume_from)

    def _decide(
        self, state: ResumeState | None, fingerprint: dict[str, Any], scan: Scan
    ) -> ResumeState | bool | None:
        """A state to continue, False to start afresh, or None when there is nothing to do."""
        args, paths = self.args, self.paths
        if state is None:
            if paths.data.exists() and not args.force:
                raise _Failed(
                    f"{paths.data} already exists and no {paths.state.name} says how it was "
                    "made; pass --force to replace it"
                )
            if args.resume:
                self.console.say("nothing to resume: starting from the first record")
            return False
        changed = state.mismatch(fingerprint)
        if changed is not None:
            what = "input" if changed in ("records", "bytes", "input_blake2b") else changed
            raise _Failed(
                f"{paths.state.name} records a run made with a different {what} than this one; "
                f"it cannot be continued. Pass --force to start over, or choose another -o"
            )
        if state.complete:
            if paths.data.exists():
                self.console.say(
                    f"{paths.data} is already complete ({state.rows:,} × {state.dim}); "
                    "nothing to do"
                )
                return None
            raise _Failed(
                f"{paths.state.name} says the run finished, but {paths.data} is gone; "
                "pass --force to embed again"
            )
        if state.committed < state.rows and not args.resume:
            raise _Failed(
                f"an interrupted run of {paths.data.name} exists ({state.committed:,} of "
                f"{state.rows:,} rows done): pass --resume to continue it, or --force to start over"
            )
        if state.on_bad == "skip" and args.on_bad == "fail":
            raise _Failed("this run was started with --on-bad skip: resume it with --on-bad skip")
        return state

    def _report_bad(self, scan: Scan) -> None:
        self.console.error(
            f"{scan.bad:,} bad record{'s' if scan.bad != 1 else ''} in {self.source} "
            f"(--on-bad {self.args.on_bad}):"
        )
        for index, reason in scan.examples[:_SHOWN_BAD]:
            self.console.error(f"  {self.corpus.where(index)}: {reason}")
        if scan.bad > len(scan.examples[:_SHOWN_BAD]):
            self.console.error(f"  … and {scan.bad - len(scan.examples[:_SHOWN_BAD]):,} more")

    def _embedder_kwargs(self) -> dict[str, Any]:
        args = self.args
        kwargs: dict[str, Any] = {"api": args.api, "url": args.url}
        optional = {
            "normalize": args.normalize,
            "prompt_name": args.prompt_name,
            "dimensions": args.dimensions,
            "truncate": args.truncate,
            "max_batch_size": args.batch_size,
            "max_concurrency": args.concurrency,
            "requests_per_second": args.rps,
            "cache_size": args.cache_size or None,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        return kwargs

    # ---------------------------------------------------------------- the run

    def _embed(self, scan: Scan, fingerprint: dict[str, Any], resume: ResumeState | bool) -> int:
        import anyio.from_thread

        from ._client import AsyncEmbedder
        from ._errors import EmbedkitError

        args, console = self.args, self.console
        try:
            embedder = AsyncEmbedder(args.model, **self._embedder_kwargs())
        except (ValueError, TypeError, ImportError) as exc:
            raise _Failed(str(exc), EXIT_USAGE) from exc
        with anyio.from_thread.start_blocking_portal() as portal:
            try:
                with portal.wrap_async_context_manager(embedder):
                    return self._stream(portal, embedder, scan, fingerprint, resume)
            except EmbedkitError as exc:
                self._commit()
                message = f"error: {exc}"
                if self.state is not None and self.done < self.state.rows:
                    message += (
                        f"\n{self.done:,} of {self.state.rows:,} rows are saved; fix the cause "
                        "and run the same command with --resume to continue"
                    )
                raise _Failed(message) from exc
            except _Failed:
                self._commit()
                raise
            except OSError as exc:  # disk full, output folder gone...
                with contextlib.suppress(OSError):
                    self._commit()
                raise _Failed(
                    f"error: {exc}\nwhat was saved is kept: fix the cause and run the same "
                    "command with --resume to continue"
                ) from exc
            except KeyboardInterrupt:
                self._commit()
                console.error(
                    f"interrupted: {self.done:,} rows are saved; --resume continues from there"
                )
                return EXIT_INTERRUPTED
            finally:
                self._close()

    def _stream(
        self,
        portal: Any,
        embedder: Any,
        scan: Scan,
        fingerprint: dict[str, Any],
        resume: ResumeState | bool,
    ) -> int:
        from ._bulk import Progress, Window, default_depth
        from ._errors import InputError

        args, console, paths = self.args, self.console, self.paths
        scheduler = embedder._open_scheduler()
        if isinstance(resume, ResumeState):
            dim = resume.dim
            self._open_files(scan.records, dim, resume, fingerprint)
        else:
            dim = 0
            if scan.first_good is not None:
                vector = portal.call(embedder.embed, scan.first_good)
                dim = int(vector.shape[0])
            self._open_files(scan.records, dim, None, fingerprint)
        if self.done == scan.records:
            return self._finish()
        console.say(
            f"embedding {_count(scan.records - self.done, 'record')} into {paths.data} with "
            f"{embedder._backend.describe()}"
            + (f", from record {self.done:,}" if self.done else "")
        )

        progress = None
        if not args.quiet:
            progress = Progress(
                scan.records,
                initial=self.done,
                interval=args.progress_interval,
                retries=lambda: sum(portal.call(embedder.stats).retries.values()),
            )
            console.progress = progress
        window: Window[_Block] = Window(scheduler, sort_by_length=args.sort, dedup=True)
        depth = default_depth(args.block_size, embedder.max_concurrency, scheduler.max_batch_size)
        records = self.corpus.records(self.done)
        position = self.done
        exhausted = False
        last_commit = time.monotonic()
        try:
            while True:
                while not exhausted and len(window) < depth:
                    block = self._read_block(records, position)
                    if block is None:
                        exhausted = True
                        break
                    if block.n < args.block_size:
                        exhausted = True
                    portal.call(window.push, block.texts, block)
                    position += block.n
                if not window:
                    break
                block = window.head
                try:
                    matrix = portal.call(window.pop)[1]
                except InputError:
                    matrix = self._find_refused(portal, scheduler, block)
                self._write(block, matrix, dim)
                if progress is not None:
                    progress.update(block.n)
                now = time.monotonic()
                if now - last_commit >= args.commit_interval:
                    self._commit()
                    last_commit = now
        finally:
            if window:
                with contextlib.suppress(Exception):
                    portal.call(window.discard)
            if progress is not None:
                progress.close(final_line=False)  # the summary line follows
                console.progress = None
        return self._finish(progress)

    def _read_block(self, records: Iterator[str | Bad], start: int) -> _Block | None:
        texts: list[str] = []
        good: list[int] = []
        bad: list[tuple[int, str]] = []
        n = 0
        for record in records:
            if isinstance(record, Bad):
                bad.append((n, record.reason))
            else:
                good.append(n)
                texts.append(record)
            n += 1
            if n >= self.args.block_size:
                break
        if n == 0:
            return None
        positions = None if not bad else np.asarray(good, dtype=np.intp)
        return _Block(start, n, texts, positions, bad)

    def _find_refused(self, portal: Any, scheduler: Any, block: _Block) -> npt.NDArray[np.float32]:
        """The server refused something in this block: embed its texts one by one."""
        from ._bulk import embed_each
        from ._errors import InputError

        results = portal.call(embed_each, scheduler, block.texts)
        good_positions = block.good if block.good is not None else np.arange(block.n, dtype=np.intp)
        refused = [
            (int(good_positions[k]), result)
            for k, result in enumerate(results)
            if isinstance(result, InputError)
        ]
        for position, error in refused:
            index = block.start + position
            reason = f"refused by the server: {error.message or error}"
            if self.args.on_bad == "fail":
                raise _Failed(
                    f"{self.corpus.where(index)}: {reason}\n{self.done:,} rows before it are "
                    "saved. Fix the input and start over, or run the same command with --resume "
                    "--on-bad skip to write a zero row for it",
                )
            if self.refused_shown < _SHOWN_BAD:
                self.console.error(f"{self.corpus.where(index)}: {reason} (zero row)")
                self.refused_shown += 1
        # fold the refused texts into the block's bad records
        keep = [k for k, result in enumerate(results) if not isinstance(result, InputError)]
        rows = [results[k] for k in keep]
        block.bad = sorted(block.bad + [(p, "refused") for p, _ in refused])
        block.good = good_positions[keep] if keep else np.empty(0, dtype=np.intp)
        block.texts = [block.texts[k] for k in keep]
        if not rows:
            return np.empty((0, 0), dtype=np.float32)
        return np.stack(rows)

    def _open_files(
        self, rows: int, dim: int, resume: ResumeState | None, fingerprint: dict[str, Any]
    ) -> None:
        paths, skip = self.paths, self.args.on_bad == "skip"
        if resume is None:
            for stale in (paths.mask, paths.mask_partial):
                stale.unlink(missing_ok=True)
            self.data = NpyWriter(paths.data_partial, (rows, dim), np.float32, create=True)
            if skip:
                self.mask = NpyWriter(paths.mask_partial, (rows,), np.bool_, create=True)
            self.data.sync()
            if self.mask is not None:
                self.mask.sync()
            fsync_dir(paths.data_partial.parent)
            self.state = ResumeState(
                fingerprint=fingerprint, rows=rows, dim=dim, on_bad=self.args.on_bad
            )
            self.state.save(paths.state)
            return
        self.state = resume
        started_with = resume.on_bad
        resume.on_bad = self.args.on_bad
        self.done = resume.committed
        self.bad = resume.bad
        if resume.committed == resume.rows and not paths.data_partial.exists():
            return  # renamed already; _finish completes the state
        if not paths.data_partial.exists():
            raise _Failed(
                f"{paths.state.name} says {resume.committed:,} rows are done, but "
                f"{paths.data_partial.name} is missing; pass --force to start over"
            )
        self.data = NpyWriter(paths.data_partial, (rows, resume.dim), np.float32, create=False)
        if started_with == "skip":
            self.mask = NpyWriter(paths.mask_partial, (rows,), np.bool_, create=False)
        elif skip:
            # the run started with --on-bad fail: every committed row was embedded
            self.mask = NpyWriter(paths.mask_partial, (rows,), np.bool_, create=True)
            for start in range(0, resume.committed, 1 << 20):
                stop = min(resume.committed, start + (1 << 20))
                self.mask.write(start, np.ones(stop - start, dtype=np.bool_))

    def _write(self, block: _Block, matrix: npt.NDArray[np.float32], dim: int) -> None:
        assert self.data is not None
        if matrix.shape[0] and matrix.shape[1] != dim:
            raise _Failed(
                f"the embeddings now have {matrix.shape[1]} dimensions, but this output has "
                f"{dim}: did the server switch models?"
            )
        if block.bad:
            rows = np.zeros((block.n, dim), dtype=np.float32)
            if block.good is not None and len(block.good):
                rows[block.good] = matrix
        else:
            rows = matrix
        self.data.write(block.start, rows)
        if self.mask is not None:
            flags = np.ones(block.n, dtype=np.bool_)
            if block.bad:
                flags[[position for position, _ in block.bad]] = False
            self.mask.write(block.start, flags)
        self.bad += len(block.bad)
        self.done = block.start + block.n

    def _commit(self) -> None:
        """fsync the rows written so far, then record them in the state file."""
        if self.state is None or self.data is None:
            return
        self.data.sync()
        if self.mask is not None:
            self.mask.sync()
        self.state.committed = self.done
        self.state.bad = self.bad
        self.state.save(self.paths.state)

    def _close(self) -> None:
        for writer in (self.data, self.mask):
            if writer is not None:
                writer.close()

    def _finish(self, progress: Any = None) -> int:
        paths, state = self.paths, self.state
        assert state is not None
        self._commit()
        self._close()
        if paths.data_partial.exists():
            os.replace(paths.data_partial, paths.data)
        if state.on_bad == "skip" and paths.mask_partial.exists():
            os.replace(paths.mask_partial, paths.mask)
        fsync_dir(paths.data.parent)
        state.complete = True
        state.save(paths.state)
        summary = f"wrote {paths.data} ({state.rows:,} × {state.dim} float32)"
        if progress is not None and progress.done > progress._initial:
            summary += f" in {progress.elapsed:.1f} s, {progress.average_rate:,.0f} texts/s"
        if state.on_bad == "skip":
            summary += f"; {_count(state.bad, 'bad record')} written as zero rows, see {paths.mask}"
        self.console.say(summary)
        return EXIT_OK
