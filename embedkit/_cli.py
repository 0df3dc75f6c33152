"""The `embedkit` command: `embed` a corpus (into .npy or .parquet), `serve`, `bench`.

`embedkit embed` parses its flags and calls `embed_file` (in `_files.py`, where the scan,
probe, streaming and resumable commits live); here are only the flags, the messages on
stderr, the progress display and the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio

from ._corpus import FORMATS, CorpusError, ResumeState

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
        help="embed a corpus (.txt, .jsonl, .csv, .tsv, .parquet or - for stdin) into an .npy "
        "or .parquet",
        description=(
            "Embed every record of INPUT into OUT.npy (float32, row i = record i) or "
            "OUT.parquet (an id column and an embedding column), written as it goes and "
            "resumable after any interruption (--resume). The token comes from the "
            "environment only: HF_TOKEN for hf and tei, OPENAI_API_KEY for openai."
        ),
    )
    embed.add_argument("input", metavar="INPUT", help="a file, or - to read stdin")
    embed.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT.npy|OUT.parquet",
        help="the file to write: .npy (vectors only) or .parquet (ids and vectors)",
    )
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
        "--id-field",
        metavar="NAME",
        help="the field (jsonl) or column (csv, tsv, parquet) holding each record's id, "
        "written as the id column of a .parquet (default: the record number, as 'id')",
    )
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
        "the run (default) or write a zero row and mark it False in OUT.mask.npy (a null "
        "embedding in a .parquet)",
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
        "--row-group-size",
        type=int,
        default=8192,
        metavar="ROWS",
        help="rows per Parquet row group, the unit a .parquet run resumes from (default 8192)",
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


# ------------------------------------------------------------------------------ embed


class _Console:
    """Messages on stderr, prefixed, that do not tear the progress bar."""

    def __init__(self, *, quiet: bool, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.progress: Any = None

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
def _logging_to(console: _Console, level: int, run_level: int) -> Iterator[None]:
    """Send the "embedkit" logs (at `level`) and the run's own ("embedkit.files") to stderr."""
    handler = _ConsoleHandler(console)
    handler.setLevel(min(level, run_level))
    loggers = [
        (logging.getLogger("embedkit"), level),
        (logging.getLogger("embedkit.files"), run_level),
    ]
    previous = [(log, log.level, log.propagate) for log, _ in loggers]
    loggers[0][0].addHandler(handler)
    for log, wanted in loggers:
        log.setLevel(wanted)
    loggers[0][0].propagate = False
    try:
        yield
    finally:
        loggers[0][0].removeHandler(handler)
        for log, old_level, old_propagate in previous:
            log.setLevel(old_level)
            log.propagate = old_propagate


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    hours, rest = divmod(int(seconds), 3600)
    return (
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        if hours
        else f"{rest // 60:02d}:{rest % 60:02d}"
    )


class ProgressLines:
    """Progress as a plain line every `interval` s, for logs (stderr is not a terminal).

    `embedkit: 1,000/3,000 (33.3%) · 950 texts/s · ETA 00:02 · retries 0`
    """

    def __init__(self, console: _Console, interval: float) -> None:
        self.console = console
        self.interval = interval
        self.last = -math.inf

    @staticmethod
    def line(update: Any) -> str:
        rate = update.rate
        eta = (update.total - update.done) / rate if rate > 0 else None
        pct = 100.0 * update.done / update.total if update.total else 100.0
        return (
            f"{update.done:,}/{update.total:,} ({pct:.1f}%) · {rate:,.0f} texts/s · "
            f"ETA {_clock(eta)} · retries {update.retries}"
        )

    def __call__(self, update: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.console.error(self.line(update))


def _embed(args: argparse.Namespace) -> int:
    from ._errors import EmbedkitError
    from ._files import Words, run_file

    console = _Console(quiet=args.quiet)
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    for name in ("batch_size", "concurrency", "block_size", "dimensions", "row_group_size"):
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
    options: dict[str, Any] = {"model": args.model, "api": args.api, "url": args.url}
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
    options.update({k: v for k, v in optional.items() if v is not None})
    progress: Any = None
    if not args.quiet:
        if console.stream.isatty():
            from ._bulk import progress_bar

            progress = console.progress = progress_bar(0, file=console.stream, mininterval=0.1)
        else:
            progress = ProgressLines(console, args.progress_interval)
    words = Words(
        resume="--resume",
        force="--force",
        skip="--on-bad skip",
        fail=f"--on-bad {args.on_bad}",
        again="run the same command with",
    )
    out = Path(args.output)
    try:
        with _logging_to(console, level, logging.ERROR if args.quiet else logging.INFO):
            run = functools.partial(
                run_file,
                sys.stdin.buffer if args.input == "-" else args.input,
                out,
                embedder=None,
                options=options,
                words=words,
                field=args.field,
                column=args.column,
                id_field=args.id_field,
                format=args.format,
                resume=args.resume,
                overwrite=args.force,
                on_bad=args.on_bad,
                block_size=args.block_size,
                commit_interval=args.commit_interval,
                sort_by_length=args.sort,
                row_group_size=args.row_group_size,
                progress=progress,
            )
            anyio.run(run)
    except CorpusError as exc:
        console.error(str(exc))
        return EXIT_FAILED
    except EmbedkitError as exc:
        console.error(f"error: {exc}")
        return EXIT_FAILED
    except (ValueError, TypeError, ImportError) as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except OSError as exc:  # disk full, output folder gone...
        console.error(
            f"error: {exc}\nwhat was saved is kept: fix the cause and run the same command "
            "with --resume to continue"
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        state = ResumeState.load(out.with_name(out.name + ".state.json"))
        saved = state.committed if state is not None else 0
        console.error(f"interrupted: {saved:,} rows are saved; --resume continues from there")
        return EXIT_INTERRUPTED
    finally:
        console.progress = None
    return EXIT_OK
