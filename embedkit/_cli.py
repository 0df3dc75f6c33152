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
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import anyio

from ._backends import PROTOCOLS
from ._bulk import FORMATS, CorpusError, ResumeState, state_path
from ._config import Limits
from ._quantize import DTYPES

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


_HELP = {
    "input": "a file, or - to read stdin",
    "--output": "the file to write: .npy (vectors only) or .parquet (ids and vectors)",
    "--api": "where embeddings come from (default: local, the packaged all-MiniLM-L6-v2)",
    "--url": "server URL (tei: the root; hf, openai: optional); repeat it for replicas of one "
    "model: batches are balanced over them, with failover (--concurrency is per replica)",
    "--model": "model id (or a folder, for --api local)",
    "--field": "the JSON field that holds the text (jsonl; default text)",
    "--column": "the column that holds the text (csv, tsv, parquet)",
    "--id-field": "the field (jsonl) or column (csv, tsv, parquet) holding each record's id, "
    "written as the id column of a .parquet (default: the record number, as 'id')",
    "--format": "the input format (default: from the file name)",
    "--batch-size": "texts per request at most (default 32; openai 64, cohere 96, voyage 128, "
    "gemini 100)",
    "--concurrency": "requests in flight at most (default 8)",
    "--rps": "requests per second at most",
    "--cache-size": "remember the last N vectors, so repeats further apart than a block are "
    "not sent again (default 0; repeats within a block are always sent once)",
    "--resume": "continue an interrupted run of the same command",
    "--force": "start over, replacing OUT and its state",
    "--on-bad": "a bad record (empty, missing field, not a string, refused by the server): "
    "fail the run (default) or write a zero row and mark it False in OUT.mask.npy (a null "
    "embedding in a .parquet)",
    "--normalize": "unit vectors",
    "--no-normalize": "raw vectors",
    "--prompt-name": "a prompt the model defines (hf, tei, local)",
    "--kind": "what the texts are for: query or document (Cohere/Voyage input_type, Gemini "
    "taskType, the model's prompt of that name for hf/tei/local)",
    "--dtype": "vector element type: float32, int8, uint8, or packed bits binary/ubinary "
    "(asked of Cohere/Voyage, else quantised here)",
    "--dimensions": "Matryoshka output size",
    "--truncate": "let the server cut long texts",
    "--no-sort": "send texts in input order (default: sort each block by length, so requests "
    "hold texts of similar length; rows are always in input order)",
    "--block-size": "records per block (default 1024)",
    "--row-group-size": "rows per Parquet row group, the unit a .parquet run resumes from "
    "(default: about 4 MiB of vectors, 2048 rows at 384 dimensions)",
    "--commit-interval": "fsync and record progress this often (default 2; 0: after every block)",
    "--progress-interval": "when stderr is not a terminal, log progress this often (default 10)",
    "--engine": "process: this process, into OUT.npy or OUT.parquet (default); ray: a Ray "
    "cluster, INPUT a folder or glob and OUT a folder of parquet files holding every input "
    "column and the vectors (pip install 'embedkit[ray]')",
    "--address": "with --engine ray: the cluster to join (default: start a local one)",
    "--workers": "with --engine ray: Ray actors, one embedder each (default 4)",
    "--quiet": "print only errors",
    "--verbose": "log retries and requests",
}


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
            "environment only: HF_TOKEN for hf and tei, OPENAI_API_KEY for openai, "
            "COHERE_API_KEY, VOYAGE_API_KEY, GEMINI_API_KEY for their APIs."
        ),
    )

    def add(group: Any, *flags: str, **options: Any) -> None:
        group.add_argument(*flags, help=_HELP[flags[-1]], **options)

    add(embed, "input", metavar="INPUT")
    add(embed, "-o", "--output", required=True, metavar="OUT.npy|OUT.parquet")
    add(embed, "--api", choices=[*PROTOCOLS, "local"], default="local")
    add(embed, "--url", action="append")
    add(embed, "--model")
    key = embed.add_mutually_exclusive_group()
    add(key, "--field")
    add(key, "--column")
    add(embed, "--id-field", metavar="NAME")
    add(embed, "--format", choices=FORMATS)
    add(embed, "--batch-size", type=int)
    add(embed, "--concurrency", type=int)
    add(embed, "--rps", type=float)
    add(embed, "--cache-size", type=int, default=0, metavar="N")
    add(embed, "--resume", action="store_true")
    add(embed, "--force", action="store_true")
    add(embed, "--on-bad", choices=["fail", "skip"], default="fail")
    normalize = embed.add_mutually_exclusive_group()
    add(normalize, "--normalize", dest="normalize", action="store_true", default=None)
    add(normalize, "--no-normalize", dest="normalize", action="store_false")
    add(embed, "--prompt-name")
    add(embed, "--kind", choices=["query", "document"])
    add(embed, "--dtype", choices=list(DTYPES), default="float32")
    add(embed, "--dimensions", type=int)
    add(embed, "--truncate", action="store_true", default=None)
    add(embed, "--no-sort", dest="sort", action="store_false")
    add(embed, "--block-size", type=int, default=1024)
    add(embed, "--row-group-size", type=int, metavar="ROWS")
    add(embed, "--commit-interval", type=float, default=2.0, metavar="SECONDS")
    add(embed, "--progress-interval", type=float, default=10.0, metavar="SECONDS")
    scale = embed.add_argument_group("scale-out")
    add(scale, "--engine", choices=["process", "ray"], default="process")
    add(scale, "--address")
    add(scale, "--workers", type=int, default=4)
    add(embed, "-q", "--quiet", action="store_true")
    add(embed, "-v", "--verbose", action="store_true")

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


def _serve(rest: list[str]) -> int:
    try:
        from . import serve
    except ImportError as exc:
        _Console().error(f"serve needs the extras: pip install 'embedkit[serve,local]' ({exc})")
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


class _Console(logging.Handler):
    """Messages (and log records) on stderr, prefixed, that do not tear the progress bar."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.progress: Any = None

    def error(self, message: str) -> None:
        if self.progress is not None:
            self.progress.clear()
        print(f"embedkit: {message}", file=self.stream, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.error(self.format(record))


@contextlib.contextmanager
def _logging_to(console: _Console, level: int, run_level: int) -> Iterator[None]:
    """Send the "embedkit" logs (at `level`) and the run's own ("embedkit.files") to stderr."""
    console.setLevel(min(level, run_level))
    root, run = logging.getLogger("embedkit"), logging.getLogger("embedkit.files")
    previous = (root.level, root.propagate, run.level)
    root.addHandler(console)
    root.setLevel(level)
    run.setLevel(run_level)
    root.propagate = False
    try:
        yield
    finally:
        root.removeHandler(console)
        root.setLevel(previous[0])
        run.setLevel(previous[2])
        root.propagate = previous[1]


#: Flags handed to `embed_file` under their own names.
_PASSED = "field column id_field format resume on_bad block_size commit_interval row_group_size"


def _embed(args: argparse.Namespace) -> int:
    from ._bulk import ProgressLines, Words, run_file
    from ._errors import EmbedkitError

    console = _Console()
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    at_least_1 = ("batch_size", "concurrency", "block_size", "dimensions", "row_group_size")
    mistakes = [
        f"--{name.replace('_', '-')} must be at least 1"
        for name in at_least_1
        if getattr(args, name) is not None and getattr(args, name) < 1
    ]
    mistakes += ["--cache-size must be at least 0"] if args.cache_size < 0 else []
    mistakes += (
        ["--rps must be a positive number"] if args.rps is not None and args.rps <= 0 else []
    )
    if args.url and args.api == "local":
        mistakes.append(
            "--url is for the HTTP APIs (hf, tei, openai, ...); --api local runs the model here"
        )
    if mistakes:
        console.error(mistakes[0])
        return EXIT_USAGE
    urls = args.url or []
    url: str | list[str] | None = urls[0] if len(urls) == 1 else urls or None
    options: dict[str, Any] = {"model": args.model, "api": args.api, "url": url}
    names = {name: name for name in ("cache_size", "normalize", "prompt_name", "dimensions")}
    names.update(truncate="truncate", kind="kind", dtype="dtype")
    options.update({names[k]: getattr(args, k) for k in names if getattr(args, k) is not None})
    limits = {"batch_size": "max_batch_size", "concurrency": "max_concurrency"}
    limits.update(rps="requests_per_second")
    given = {limits[k]: getattr(args, k) for k in limits if getattr(args, k) is not None}
    if given:
        options["limits"] = Limits(**given)
    progress: Any = None
    if not args.quiet:
        if console.stream.isatty():
            from ._bulk import progress_bar

            progress = console.progress = progress_bar(0, file=console.stream, mininterval=0.1)
        else:
            progress = ProgressLines(console.error, args.progress_interval)
    words = Words(
        "--resume", "--force", "--on-bad skip", "--on-bad fail", "run the same command with"
    )
    settings = {name: getattr(args, name) for name in _PASSED.split()}
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
                overwrite=args.force,
                sort_by_length=args.sort,
                progress=progress,
                **settings,
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
        state = ResumeState.load(state_path(out))
        saved = state.committed if state is not None else 0
        console.error(f"interrupted: {saved:,} rows are saved; --resume continues from there")
        return EXIT_INTERRUPTED
    finally:
        if console.progress is not None:
            console.progress.close()
            console.progress = None
    return EXIT_OK


# ------------------------------------------------------------------------ embed on Ray


def _embed_ray(args: argparse.Namespace) -> int:
    """`embedkit embed INPUT -o OUT_DIR --engine ray`: `embedkit.ray` runs it (beside
    `embed_files`); here, only Ray's import (for this engine alone), messages and status."""
    console = _Console()
    try:
        import ray

        from .ray import run_command
    except ImportError as exc:
        console.error(f"--engine ray needs the ray extra: pip install 'embedkit[ray]' ({exc})")
        return EXIT_FAILED
    from ._errors import EmbedkitError

    started = time.monotonic()
    try:
        rows, tokens = run_command(args)
    except (ValueError, TypeError, CorpusError) as exc:
        console.error(str(exc))
        return EXIT_USAGE
    except (EmbedkitError, ray.exceptions.RayError) as exc:
        console.error(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if not args.quiet:
        used = f", {tokens:,} tokens" if tokens else ""
        console.error(
            f"wrote {args.output} ({rows:,} rows{used}) in {time.monotonic() - started:.1f} s"
        )
    return EXIT_OK
