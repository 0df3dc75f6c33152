"""Embed a Ray Dataset with a fleet of embedders that share one quota.

    import ray, embedkit.ray
    ds = ray.data.read_parquet("s3://bucket/docs/")
    out = embedkit.ray.embed_dataset(ds, api="tei", url="http://gpu-0:8080", workers=16,
                                     requests_per_second=200)   # 200/s for the whole fleet
    out.write_parquet("s3://bucket/embedded/")
    print(embedkit.ray.tokens_used(out))      # what the run cost, summed over the workers

How a row travels:

1. `embed_dataset` adds a `map_batches` stage to the dataset: a pool of `workers` Ray actors
   (`ActorPoolStrategy`), each holding one long-lived `AsyncEmbedder`, opened on the actor's
   event loop by its first batch and kept for the actor's life. Ray calls the actor's async
   `__call__` with a pyarrow batch (up to 4 at once per actor), so the embedder's scheduler
   coalesces the texts of several batches into full requests, as in one process.
2. The texts of a batch are checked (`on_bad`), embedded with `embed_many`, and the batch
   comes back with every input column and the vectors as a `fixed_size_list<float>[dim]`
   column, which pyarrow, pandas, DuckDB and LanceDB read without Ray.
3. Every embedder's scheduler asks a `FleetQuota` for permits instead of its own buckets.
   The `FleetQuota` leases them in small blocks from one named Ray actor (`QuotaActor`),
   which holds the token buckets, the pause after a 429, and the pace learned from 429s
   for the whole fleet. A lease is one actor call for several requests, never one per
   request.

Ray restarts an actor that dies and runs its batches again (Ray Data's actor pools set
`max_restarts=-1`, `max_task_retries=-1`), and a batch's output replaces its input as a
whole: every row comes out once, next to the columns it came in with.

The token is resolved in the driver and travels to the actors inside `Secret`, which never
shows it in a repr, and whose pickled form does not hold it verbatim.

The package, one concept a module: `quota` (the quota actor and a worker's side of it),
`worker` (the class each actor runs, and `BadRowError`), `dataset` (`embed_dataset` and
`embed_files`) and `command` (the engine of `embedkit embed --engine ray`).

Import this package only with the `ray` extra installed (`pip install 'embedkit[ray]'`);
`import embedkit` never imports Ray, and `import embedkit.ray` leaves Ray's own import to
the functions that use it.
"""

from __future__ import annotations

from .command import run_command as run_command  # the CLI's engine; not in __all__
from .dataset import embed_dataset, embed_files, tokens_used
from .quota import FleetQuota, QuotaActor
from .worker import BadRowError

__all__ = [
    "BadRowError",
    "FleetQuota",
    "QuotaActor",
    "embed_dataset",
    "embed_files",
    "tokens_used",
]

# Show the public path (embedkit.ray.BadRowError) in reprs, tracebacks and pickles, as when
# this package was one module, not the module a name happens to live in.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
