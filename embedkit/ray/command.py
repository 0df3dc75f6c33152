"""The engine of `embedkit embed INPUT -o OUT_DIR --engine ray`: the command's flags as
`embed_files`' arguments, run on a cluster it joins for the run.

It lives here, not in `_cli.py`, so that the command imports Ray (and this package) only
when `--engine ray` is asked for; `_cli.py` keeps the messages and exit statuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._config import Limits
from .dataset import write_files

if TYPE_CHECKING:
    import argparse

__all__ = ["run_command"]


def run_command(args: argparse.Namespace) -> tuple[int, int]:
    """`embedkit embed INPUT -o OUT_DIR --engine ray`: the command's flags as `embed_files`'
    arguments, run on a cluster; returns the rows written and the tokens used.

    Joins the cluster at `--address` (or starts a local one) for the run and leaves it after.
    A flag only the process engine takes is a `ValueError`; the command (`_cli.py`) turns
    errors into messages and exit statuses.
    """
    import logging

    import ray
    import ray.data

    for flag, given in (
        ("--resume", args.resume),
        ("stdin (-)", args.input == "-"),
        ("--id-field (every input column is kept)", args.id_field is not None),
    ):
        if given:
            raise ValueError(f"{flag} is for --engine process; --engine ray writes a new folder")
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    # --rps is the fleet's rate (embed_dataset's own argument); the rest go to each embedder
    names = {"rps": "requests_per_second", "cache_size": "cache_size", "model": "model"}
    names.update(url="url")
    names.update({name: name for name in ("normalize", "prompt_name", "dimensions", "truncate")})
    options: dict[str, Any] = {
        names[k]: getattr(args, k) for k in names if getattr(args, k) is not None
    }
    options["cache_size"] = options.get("cache_size") or 0
    limits = {"batch_size": "max_batch_size", "concurrency": "max_concurrency"}
    given = {limits[k]: getattr(args, k) for k in limits if getattr(args, k) is not None}
    if given:
        options["limits"] = Limits(**given)
    try:
        ray.init(address=args.address, logging_level=logging.ERROR, log_to_driver=args.verbose)
        ray.data.DataContext.get_current().enable_progress_bars = not args.quiet
        return write_files(
            args.input,
            args.output,
            format=args.format,
            column=args.column or args.field,
            overwrite=args.force,
            workers=args.workers,
            on_bad=args.on_bad,
            batch_size=args.block_size,
            api=args.api,
            **options,
        )
    finally:
        ray.shutdown()
