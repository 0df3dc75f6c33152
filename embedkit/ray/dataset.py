"""The public face: `embed_dataset` adds the embedding stage to a Ray Dataset, `embed_files`
runs it from a folder of files to a folder of parquet files.

Everything that can be checked is checked here, in the driver, where the mistake was made,
not later in a remote actor: the arguments, every `AsyncEmbedder` option (by building one),
and the token, resolved here and sent to the actors as a `Secret`. Then one quota actor is
started for the fleet and the dataset gets a `map_batches` stage over a pool of workers.
That actor also sums the tokens the workers used (a `TokenMeter` actor of its own when the
quota is the user's): `tokens_used(result)` reads it.
Ray itself is imported only when these functions run.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

from .._auth import Secret, resolve_token
from .._client import AsyncEmbedder
from .quota import QuotaActor, TokenMeter
from .worker import OnBad, _EmbedBatches

if TYPE_CHECKING:
    import ray.data

__all__ = ["HTTP_WORKER_CPUS", "embed_dataset", "embed_files"]

#: CPUs an HTTP worker asks Ray for: a fraction, since it waits on the network, and a
#: whole CPU per actor can starve the read tasks of a small cluster (ray#44687).
HTTP_WORKER_CPUS = 0.25


def _actor_cpus(api: str, num_cpus: float | None, num_gpus: float | None) -> float:
    """CPUs one worker asks Ray for: what was given, else a fraction for an HTTP backend
    (it waits on the network), a whole CPU for a local model (a GPU's feeder needs little)."""
    if num_cpus is not None:
        return num_cpus
    if api == "local" and not num_gpus:
        return 1.0
    return HTTP_WORKER_CPUS


def embed_dataset(
    ds: ray.data.Dataset,
    column: str = "text",
    output_column: str = "embedding",
    *,
    workers: int = 4,
    requests_per_second: float | None = None,
    inputs_per_second: float | None = None,
    on_bad: OnBad = "fail",
    flag_column: str | None = None,
    batch_size: int = 1024,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    **options: Any,
) -> ray.data.Dataset:
    """Add an embedding stage to a Ray Dataset: `column` in, `output_column` out.

    A pool of `workers` Ray actors, each with one long-lived `AsyncEmbedder` built from
    `options` (any `AsyncEmbedder` argument: `api`, `url`, `model`, `token`,
    `limits`, `retry`…), embeds the dataset's batches. Every
    input column is kept; the vectors come as `fixed_size_list<float>[dim]`.

    Args:
        ds: the dataset; nothing runs until it is consumed (`write_parquet`, `take`…).
        column: the column holding the texts.
        output_column: the column the vectors go to.
        workers: actors in the pool (each keeps `limits.max_concurrency` requests in flight).
        requests_per_second: a request rate for the whole fleet, not per worker.
        inputs_per_second: a texts-per-second rate for the whole fleet.
        on_bad: a row whose text is missing, empty, not a string or refused by the server:
            "fail" raises `BadRowError` naming the row; "skip" gives it a null vector and
            False in `flag_column`.
        flag_column: with `on_bad="skip"`, the bool column saying whether a row was
            embedded (default: `output_column + "_ok"`).
        batch_size: rows per Ray batch (an actor works on up to 4 batches at once).
        num_cpus: CPUs per actor (default: 0.25 for HTTP backends, 1 for `api="local"`).
        num_gpus: GPUs per actor (for `api="local"` on a GPU node).
        **options: `AsyncEmbedder` arguments; the token (argument or environment) is
            resolved here, in the driver, and sent to the actors as a `Secret`.

    A worker that dies is restarted and its batches are redone (Ray Data's actor pools
    restart actors and retry their tasks without limit by default).

    With no rate given, the fleet is unpaced until a server answers 429: then the pace
    learned from that 429 holds for every worker. The 429 pause (Retry-After) holds for
    every worker too.
    """
    import ray
    import ray.data

    if not isinstance(column, str) or not isinstance(output_column, str):
        raise TypeError("column and output_column must be column names (str)")
    if on_bad not in ("fail", "skip"):
        raise ValueError("on_bad must be 'fail' or 'skip'")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    connection = options.get("connection")
    for name in ("backend", "transport", "http_client"):
        if options.get(name) is not None or getattr(connection, name, None) is not None:
            raise ValueError(f"{name}= cannot be sent to Ray actors; pass api=, url= instead")
    for name, rate in (
        ("requests_per_second", requests_per_second),
        ("inputs_per_second", inputs_per_second),
    ):
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"{name} must be a positive number")
    api = options.setdefault("api", "hf")
    token = options.pop("token", None)
    # checks every option here, where the mistake is made, not in a remote actor
    AsyncEmbedder(**options, token=token if api != "local" else None)
    secret: Secret | None = resolve_token(api, token) if api != "local" else None
    if on_bad == "skip" and flag_column is None:
        flag_column = f"{output_column}_ok"
    if on_bad == "fail":
        flag_column = None

    limits = options.get("limits")
    learn = bool(
        limits.adaptive_concurrency
        if limits is not None
        else options.get("adaptive_concurrency", True)
    )
    if options.get("quota") is not None and (requests_per_second or inputs_per_second):
        raise ValueError(
            "quota= and requests_per_second=/inputs_per_second= were both given; set the "
            "rates on the quota (e.g. embedkit.RedisQuota(url, requests_per_second=...))"
        )
    # a quota of your own (a RedisQuota shared with other jobs) replaces the fleet's actor;
    # it is pickled to each actor, which connects to Redis itself
    quota = (
        None
        if options.get("quota") is not None
        else (
            ray.remote(QuotaActor)
            .options(
                name=f"embedkit-quota-{uuid.uuid4().hex[:12]}",
                num_cpus=0,
                max_restarts=-1,
                max_concurrency=1,
            )
            .remote(
                requests_per_second=requests_per_second,
                inputs_per_second=inputs_per_second,
                learn_rate=learn,
                # Limits(tokens_per_minute=...) is the fleet's, like requests_per_second here
                tokens_per_minute=getattr(limits, "tokens_per_minute", None),
            )
        )
    )
    num_cpus = _actor_cpus(api, num_cpus, num_gpus)
    # the tokens are summed by the quota actor, or (a quota of the user's) by one of their own
    meter = (
        quota
        if quota is not None
        else ray.remote(TokenMeter).options(num_cpus=0, max_concurrency=1).remote()
    )
    out = ds.map_batches(
        _EmbedBatches,
        fn_constructor_kwargs={
            "column": column,
            "output_column": output_column,
            "flag_column": flag_column,
            "on_bad": on_bad,
            "options": options,
            "token": secret,
            "quota": quota,
            "inputs_quota": inputs_per_second is not None,
            "tokens_quota": getattr(limits, "tokens_per_minute", None) is not None,
            "meter": meter,
        },
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        zero_copy_batch=True,
    )
    out._embedkit_meter = meter  # type: ignore[attr-defined]  # for `tokens_used(out)`
    return out


def tokens_used(dataset: ray.data.Dataset) -> int:
    """The tokens an `embed_dataset` result has cost so far, summed over its workers.

    Read it after the dataset is consumed (`write_parquet`, `take_all`…): every batch adds
    its tokens before it is handed back. As the servers reported them (what a hosted API
    bills), else as counted before sending; 0 with `count_tokens=False`. `dataset` is the
    object `embed_dataset` returned (a dataset derived from it does not carry the count).
    """
    import ray

    meter = getattr(dataset, "_embedkit_meter", None)
    if meter is None:
        raise TypeError("tokens_used() takes the dataset embed_dataset() returned")
    return int(ray.get(meter.read_tokens.remote()))


_READERS = {"jsonl": "read_json", "csv": "read_csv", "tsv": "read_csv", "parquet": "read_parquet"}


def _input_files(source: str) -> list[str]:
    """The files `source` names: a folder (every file in it, sorted), a glob, or one file."""
    import glob
    from pathlib import Path

    path = Path(source)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = sorted(glob.glob(source)) if glob.has_magic(source) else [source]
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise ValueError(f"{source}: no input files there")
    return files


def embed_files(
    source: str,
    output_dir: str,
    *,
    format: str | None = None,
    column: str | None = None,
    output_column: str = "embedding",
    overwrite: bool = False,
    **kwargs: Any,
) -> int:
    """Embed the files of a folder or glob into a folder of parquet files; returns the rows.

    Reads them with Ray Data (txt: one text a line; jsonl, csv, tsv, parquet: the text in
    `column`, default "text"), runs `embed_dataset(**kwargs)` and writes `output_dir` with
    every input column and the vectors. An `output_dir` that holds files is refused unless
    `overwrite` (a second run would otherwise add its files beside the first run's). Needs a
    running Ray (`ray.init`): `embedkit embed --engine ray` connects to `--address`, or
    starts a local one.
    """
    options = {"format": format, "column": column, "output_column": output_column}
    rows, _tokens = write_files(source, output_dir, overwrite=overwrite, **options, **kwargs)
    return rows


def write_files(source: str, output_dir: str, **options: Any) -> tuple[int, int]:
    """`embed_files(source, output_dir, **options)`, returning the rows written and the
    tokens used (the command states both)."""
    import pyarrow.dataset
    import ray.data

    from .._bulk import guess_format

    format: str | None = options.pop("format", None)
    column: str | None = options.pop("column", None)
    output_column: str = options.pop("output_column", "embedding")
    overwrite: bool = options.pop("overwrite", False)
    out_path = _path(output_dir)
    local = "://" not in output_dir
    if local and not overwrite and out_path.is_dir() and any(out_path.iterdir()):
        raise ValueError(f"{output_dir} is not empty; choose another folder, or overwrite")
    files = _input_files(source)
    formats = {format or guess_format(_path(f), field=None, column=None) for f in files}
    if len(formats) != 1:
        raise ValueError(f"{source}: files of several formats ({', '.join(sorted(formats))})")
    fmt = formats.pop()
    if fmt == "txt":
        ds = ray.data.read_text(files)
        column = column or "text"
        if column != "text":
            raise ValueError("a .txt corpus has one column, 'text'")
    elif fmt in _READERS:
        reading: dict[str, Any] = {}
        if fmt == "jsonl":
            reading["lines"] = True
        if fmt == "tsv":
            import pyarrow.csv

            reading["parse_options"] = pyarrow.csv.ParseOptions(delimiter="\t")
        ds = getattr(ray.data, _READERS[fmt])(files, **reading)
        column = column or "text"
    else:
        raise ValueError(f"unknown format {fmt!r}")
    out = embed_dataset(ds, column, output_column, **options)
    mode = ray.data.SaveMode.OVERWRITE if overwrite else ray.data.SaveMode.APPEND
    out.write_parquet(output_dir, mode=mode)
    rows = int(pyarrow.dataset.dataset(output_dir, format="parquet").count_rows())
    return rows, tokens_used(out)


def _path(name: str) -> Any:
    from pathlib import Path

    return Path(name)
