"""Where `embed_file` puts its rows: an `.npy` (plus a mask) or a `.parquet` with ids.

Both sinks take blocks of rows in order (`write`), make what they hold durable on `sync`
(after which `committed` rows are on disk and correct, whatever happens next), and put the
final file in place on `finish`. The engine (`run.py`) records `committed` in the resume
state only after `sync`, so a run killed at any moment resumes from a row the disk really has.

* `.npy` — `OUT.npy.partial` has its final header and size from the start; each block lands
  in place (`NpyWriter`). With `on_bad="skip"` a bad record is a zero row and a False in
  `OUT.mask.npy`. On `finish` both are renamed.
* `.parquet` — rows are cut into row groups of `row_group_size` rows at fixed record
  numbers (0, G, 2G, …), so the groups are the same however often the run was interrupted.
  Each finished group is written to `OUT.parquet.parts/part-NNNNNN.parquet` (written, fsynced,
  renamed); `committed` is the rows of the parts written so far. On `finish` the parts are
  copied, group by group, into one file, which replaces `OUT.parquet` atomically. Columns:
  the id (`id_field`'s name, or `id` = the record number) and `embedding`, a
  `fixed_size_list<float>[dim]` (int8/uint8 for the quantised dtypes); a bad record (with
  `on_bad="skip"`) has a null embedding, the Parquet way of saying "no value" (where the .npy
  has a zero row and a False in the mask).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from .._config import Dtype, Matrix
from .._quantize import numpy_dtype
from .corpus import CorpusError
from .npy import NpyWriter, fsync_dir
from .state import OutputPaths, ResumeState, state_path

__all__ = [
    "ROW_GROUP_BYTES",
    "NpySink",
    "ParquetPaths",
    "ParquetSink",
    "Sink",
    "group_rows",
]

#: Bytes of vectors per Parquet row group when `row_group_size` is not given (see `group_rows`).
ROW_GROUP_BYTES = 4 << 20


def group_rows(dim: int) -> int:
    """The default rows per row group: a power of two near 4 MiB of float32 vectors.

    2048 rows at 384 dimensions, 512 at 1536. Writing a group costs a few times its size in
    memory (Parquet's repetition levels, pages), so groups stay small; readers do not mind.
    """
    rows = ROW_GROUP_BYTES // (4 * max(dim, 1))
    return int(min(65536, max(256, 1 << max(rows, 1).bit_length() - 1)))


Flags = npt.NDArray[np.bool_]

# Float vectors do not repeat and hardly compress: a dictionary or snappy costs memory and time
# for nothing, and plain pages keep the file quick to scan.
_WRITE: dict[str, Any] = {"use_dictionary": False, "compression": "none"}


class Sink:
    """The common face of the two sinks (see the module docstring)."""

    output: Path
    state_path: Path
    committed: int  # rows on disk for sure (after the last `sync`)
    committed_bad: int  # how many of them are bad

    def write(self, start: int, rows: Matrix, ok: Flags | None, ids: list[Any] | None) -> None:
        """Rows `start ..` in order; `ok[k]` False marks a bad record (None: all good)."""
        raise NotImplementedError

    def sync(self) -> None:
        """Make what was written durable and update `committed`."""
        raise NotImplementedError

    def finish(self) -> None:
        """Put the final file(s) in place (every row must have been written)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files (idempotent); what is committed stays."""

    def extra(self) -> Path | None:
        """A second output file (the .npy mask), if any."""
        return None


def _count_bad(ok: Flags | None) -> int:
    return 0 if ok is None else int(ok.size - np.count_nonzero(ok))


class NpySink(Sink):
    """Rows in place in `OUT.npy.partial`, the mask in `OUT.mask.npy.partial` (skip only)."""

    def __init__(
        self,
        out: Path,
        rows: int,
        dim: int,
        *,
        mask: bool,
        resume: ResumeState | None,
        dtype: Dtype = "float32",
    ):
        self.paths = OutputPaths.for_output(out)
        element = numpy_dtype(dtype)  # the embedder's dtype; rows arrive as exact float32
        self.output = out
        self.state_path = self.paths.state
        self.rows, self.dim = rows, dim
        self.data: NpyWriter | None = None
        self.mask: NpyWriter | None = None
        self.done = self.committed = resume.committed if resume else 0
        self.bad = self.committed_bad = resume.bad if resume else 0
        paths = self.paths
        if resume is None:
            for stale in (paths.mask, paths.mask_partial):
                stale.unlink(missing_ok=True)
            self.data = NpyWriter(paths.data_partial, (rows, dim), element, create=True)
            if mask:
                self.mask = NpyWriter(paths.mask_partial, (rows,), np.bool_, create=True)
            self.sync()
            fsync_dir(paths.data_partial.parent)
            return
        if resume.committed == resume.rows and not paths.data_partial.exists():
            return  # renamed already: `finish` completes the state
        if not paths.data_partial.exists():
            raise CorpusError(
                f"{paths.state.name} says {resume.committed:,} rows are done, but "
                f"{paths.data_partial.name} is missing; start over"
            )
        self.data = NpyWriter(paths.data_partial, (rows, dim), element, create=False)
        if resume.on_bad == "skip":
            self.mask = NpyWriter(paths.mask_partial, (rows,), np.bool_, create=False)
        elif mask:
            # the run started with on_bad "fail": every committed row was embedded
            self.mask = NpyWriter(paths.mask_partial, (rows,), np.bool_, create=True)
            for first in range(0, resume.committed, 1 << 20):
                stop = min(resume.committed, first + (1 << 20))
                self.mask.write(first, np.ones(stop - first, dtype=np.bool_))

    def write(self, start: int, rows: Matrix, ok: Flags | None, ids: list[Any] | None) -> None:
        assert self.data is not None
        assert start == self.done
        self.data.write(start, rows)
        if self.mask is not None:
            self.mask.write(start, ok if ok is not None else np.ones(len(rows), dtype=np.bool_))
        self.bad += _count_bad(ok)
        self.done = start + len(rows)

    def sync(self) -> None:
        for writer in (self.data, self.mask):
            if writer is not None:
                writer.sync()
        self.committed, self.committed_bad = self.done, self.bad

    def close(self) -> None:
        for writer in (self.data, self.mask):
            if writer is not None:
                writer.close()

    def finish(self) -> None:
        self.sync()
        self.close()
        self.data = self.mask = None
        paths = self.paths
        if paths.data_partial.exists():
            os.replace(paths.data_partial, paths.data)
        if paths.mask_partial.exists():
            os.replace(paths.mask_partial, paths.mask)
        fsync_dir(paths.data.parent)

    def extra(self) -> Path | None:
        return self.paths.mask if self.paths.mask.exists() else None


@dataclasses.dataclass(frozen=True)
class ParquetPaths:
    """The files of a `.parquet` run: the output, its state, its parts folder, its partial."""

    data: Path

    @property
    def state(self) -> Path:
        """`OUT.parquet.state.json`: committed rows and the fingerprint (kept after the run)."""
        return state_path(self.data)

    @property
    def parts(self) -> Path:
        """`OUT.parquet.parts/`: one file per finished row group while the run goes."""
        return self.data.with_name(self.data.name + ".parts")

    @property
    def partial(self) -> Path:
        """`OUT.parquet.partial`: the file being assembled at the end."""
        return self.data.with_name(self.data.name + ".partial")

    def part(self, index: int) -> Path:
        """Part file `index` (row group `index`)."""
        return self.parts / f"part-{index:06d}.parquet"


def _arrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CorpusError(
            "writing .parquet needs pyarrow: pip install 'embedkit[parquet]'"
        ) from exc
    return pa, pq


def _arrow_type(pa: Any, id_type: Any) -> Any:
    if id_type is None or id_type == "int64":
        return pa.int64()
    if id_type == "string":
        return pa.string()
    return id_type


class ParquetSink(Sink):
    """Row groups as part files, assembled into one Parquet file at the end."""

    def __init__(
        self,
        out: Path,
        rows: int,
        dim: int,
        *,
        id_name: str,
        id_type: Any,
        row_group_size: int | None,
        resume: ResumeState | None,
        dtype: Dtype = "float32",
    ) -> None:
        self.pa, self.pq = _arrow()
        pa = self.pa
        self.element = numpy_dtype(dtype)  # rows arrive as float32 holding exact values
        self.paths = ParquetPaths(out)
        self.output = out
        self.state_path = self.paths.state
        self.rows, self.dim = rows, dim
        self.group = row_group_size or group_rows(dim)
        self.id_name = id_name
        self.numbered = id_type is None  # ids are the record numbers
        self.strings = id_type == "string"
        self.id_type = _arrow_type(pa, id_type)
        self.schema = pa.schema(
            [
                pa.field(id_name, self.id_type),
                pa.field("embedding", pa.list_(pa.from_numpy_dtype(self.element), dim)),
            ]
        )
        self.buffer: list[tuple[Matrix, Flags | None, list[Any] | None]] = []
        self.buffered = 0
        self.committed = resume.committed if resume else 0
        self.committed_bad = resume.bad if resume else 0
        self.bad = self._written_bad = self.committed_bad
        self.written = self.committed  # rows in part files (fsync of the folder pending)
        self.done = self.committed
        parts = self.paths.parts
        if resume is None:
            if parts.exists():
                shutil.rmtree(parts)
            self.paths.partial.unlink(missing_ok=True)
            parts.mkdir()
            fsync_dir(parts.parent)
            return
        if resume.committed == resume.rows and not parts.exists() and out.exists():
            return  # assembled already: `finish` completes the state
        if not parts.is_dir():
            raise CorpusError(
                f"{self.paths.state.name} says {resume.committed:,} rows are done, but "
                f"{parts.name} is missing; start over"
            )
        keep = -(-resume.committed // self.group)
        wanted = {self.paths.part(index).name for index in range(keep)}
        for path in parts.iterdir():  # parts written after the last commit are redone
            if path.name not in wanted:
                path.unlink()
        for index in range(keep):
            if not self.paths.part(index).exists():
                raise CorpusError(f"{self.paths.part(index)} is missing; start over")

    def _ids(self, start: int, n: int, ids: list[Any] | None) -> Any:
        pa = self.pa
        if self.numbered or ids is None:
            return pa.array(np.arange(start, start + n, dtype=np.int64))
        if self.strings:
            ids = [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in ids]
        return pa.array(ids, type=self.id_type)

    def write(self, start: int, rows: Matrix, ok: Flags | None, ids: list[Any] | None) -> None:
        assert start == self.done
        self.buffer.append((rows, ok, self._id_list(start, len(rows), ids)))
        self.buffered += len(rows)
        self.done = start + len(rows)
        self.bad += _count_bad(ok)
        while self.buffered >= self.group:
            self._flush(self.group)

    def _id_list(self, start: int, n: int, ids: list[Any] | None) -> list[Any] | None:
        return None if self.numbered else ids

    def _take(self, n: int) -> tuple[Matrix, Flags | None, list[Any] | None]:
        matrices, flags, ids = [], [], []
        any_flags, taken = False, 0
        while taken < n:
            rows, ok, block_ids = self.buffer[0]
            k = min(n - taken, len(rows))
            if k < len(rows):
                self.buffer[0] = (
                    rows[k:],
                    None if ok is None else ok[k:],
                    None if block_ids is None else block_ids[k:],
                )
                rows, ok = rows[:k], None if ok is None else ok[:k]
                block_ids = None if block_ids is None else block_ids[:k]
            else:
                self.buffer.pop(0)
            matrices.append(rows)
            flags.append(ok if ok is not None else np.ones(k, dtype=np.bool_))
            any_flags = any_flags or ok is not None
            if block_ids is not None:
                ids.extend(block_ids)
            taken += k
        self.buffered -= n
        matrix = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
        mask = np.concatenate(flags) if any_flags else None
        return matrix, mask, None if self.numbered else ids

    def _flush(self, n: int) -> None:
        pa, pq = self.pa, self.pq
        start = self.written
        matrix, ok, ids = self._take(n)
        values = pa.array(np.ascontiguousarray(matrix, dtype=self.element).reshape(-1))
        if ok is not None and not ok.all():
            validity = pa.array(ok).buffers()[1]
            embedding = pa.Array.from_buffers(
                self.schema.field("embedding").type, n, [validity], children=[values]
            )
        else:
            embedding = pa.FixedSizeListArray.from_arrays(values, self.dim)
        table = pa.Table.from_arrays([self._ids(start, n, ids), embedding], schema=self.schema)
        index = start // self.group
        final = self.paths.part(index)
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp, row_group_size=self.group, **_WRITE)
        del table, embedding, values
        pa.default_memory_pool().release_unused()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        self.written = start + n
        self._written_bad = self.bad - _bad_in_buffer(self.buffer)

    def sync(self) -> None:
        if self.done == self.rows and self.buffered:
            self._flush(self.buffered)  # the last, short row group
        if not self.paths.parts.exists():
            return
        fsync_dir(self.paths.parts)
        self.committed = self.written
        self.committed_bad = self._written_bad

    def finish(self) -> None:
        paths = self.paths
        if not paths.parts.exists():
            return  # assembled and cleaned up by an earlier run
        self.sync()
        parts = -(-self.rows // self.group) if self.rows else 0
        with self.pq.ParquetWriter(paths.partial, self.schema, **_WRITE) as writer:
            for index in range(parts):
                part = self.pq.ParquetFile(paths.part(index), memory_map=False, pre_buffer=False)
                writer.write_table(part.read_row_group(0, use_threads=False), self.group)
                del part
                self.pa.default_memory_pool().release_unused()
        with open(paths.partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(paths.partial, paths.data)
        fsync_dir(paths.data.parent)

    def cleanup(self) -> None:
        """Remove the part files (after the state says complete)."""
        shutil.rmtree(self.paths.parts, ignore_errors=True)


def _bad_in_buffer(buffer: list[tuple[Matrix, Flags | None, list[Any] | None]]) -> int:
    return sum(_count_bad(ok) for _, ok, _ in buffer)
