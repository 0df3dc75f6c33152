"""Corpora on disk for `embedkit embed`: one reader per input format.

Records count from 0 and are the output's rows: record i is row i, whatever happens to the
records around it. A record that cannot be embedded is a `Bad` (with the reason), never
dropped, so nothing ever shifts.

* `.txt` — one record per line (`\\n` or `\\r\\n`); an empty line is a bad record.
* `.jsonl` — one JSON object per line; the text is in a field (`--field`, default "text").
* `.csv` / `.tsv` — a header row, then one record per row; the text is in a column
  (`--column`, default "text"). Blank lines are not records (as csv.DictReader and pandas).
* `.parquet` — one record per row of a string column (needs pyarrow).

Files are UTF-8 (a leading BOM is ignored). Every reader can `scan()` the whole input once
(count, fingerprint, bad records) and then stream `records(start)` from any record.
What is written goes elsewhere: the `.npy` writer in `npy.py`, the resume state in `state.py`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

import orjson

from .._errors import EmbedkitError

__all__ = [
    "FORMATS",
    "Bad",
    "Corpus",
    "CorpusError",
    "Scan",
    "guess_format",
    "open_corpus",
    "spool",
]

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")
_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}
_SUFFIXES[".parquet"] = _SUFFIXES[".pq"] = "parquet"
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
_EXAMPLES = 20
#: records between two offers of the GIL during a scan (see `Scan.add`)
_YIELD_EVERY = 1024


class CorpusError(EmbedkitError):
    """The input or the output of a bulk run cannot be used as asked (a message for people)."""


@dataclasses.dataclass(frozen=True)
class Bad:
    """A record that cannot be embedded, and why."""

    reason: str


Record = str | Bad


@dataclasses.dataclass
class Scan:
    """What one pass over the input learned.

    Attributes:
        records: how many records (= output rows).
        bad: how many of them are bad.
        examples: the first bad records, as (record number, reason).
        first_good: the first text that can be embedded (None when there is none).
        size: the input's size in bytes.
        digest: a hash of the input's bytes.
    """

    records: int = 0
    bad: int = 0
    examples: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    first_good: str | None = None
    size: int = 0
    digest: str = ""
    id_type: Any = None  # what the ids are: "int64", "string", or a pyarrow type (parquet)
    _ids_all_int: bool = True

    def add_id(self, value: object) -> None:
        """Note one raw id (jsonl), to choose the id column's type: int64 if all are ints."""
        if (value is not None and self._ids_all_int) and (
            type(value) is not int or not -(2**63) <= value < 2**63
        ):
            self._ids_all_int = False

    def add(self, record: Record) -> None:
        """Count one record."""
        if isinstance(record, Bad):
            if len(self.examples) < _EXAMPLES:
                self.examples.append((self.records, record.reason))
            self.bad += 1
        elif self.first_good is None:
            self.first_good = record
        self.records += 1
        if not self.records % _YIELD_EVERY:
            # The scan runs in a worker thread beside the event loop, and a loop of short
            # calls like this one can hold the GIL for its whole length (a 100,000-line scan
            # stalled the loop 70-90 ms, delaying every query a web app made meanwhile). A
            # sleep of 0 releases the GIL, for the loop to take if it waits: ~1 µs a time.
            time.sleep(0)


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class Corpus:
    """A file of records. Subclasses read one format each."""

    format: ClassVar[str] = ""

    def __init__(self, path: Path, *, key: str, id_key: str | None = None) -> None:
        self.path = path
        self.key = key
        self.id_key = id_key

    def scan(self) -> Scan:
        """Read everything once: count the records, hash the bytes, find the bad records."""
        raise NotImplementedError

    def records(self, start: int = 0) -> Iterator[Record]:
        """Every record from number `start` on, in order."""
        for record, _ in self.pairs(start):
            yield record

    def pairs(self, start: int = 0) -> Iterator[tuple[Record, Any]]:
        """Every record from number `start` on with its id (None without `id_key`)."""
        raise NotImplementedError

    def where(self, index: int) -> str:
        """Where record `index` is, for people ("record 17, line 18")."""
        return f"record {index}"

    def options(self) -> dict[str, Any]:
        """What, besides the bytes, decides the records (part of the resume fingerprint)."""
        options = {"format": self.format, "key": self.key}
        if self.id_key is not None:
            options["id_key"] = self.id_key
        return options


class _LineCorpus(Corpus):
    """One record per line."""

    def parse(self, line: bytes) -> Record:
        raise NotImplementedError

    def parse_pair(self, line: bytes) -> tuple[Record, Any]:
        """The record on `line` and its raw id (None when there is none)."""
        return self.parse(line), None

    def _lines(self, f: IO[bytes]) -> Iterator[bytes]:
        first = True
        for line in f:
            if first:
                first = False
                if line.startswith(_BOM):
                    line = line[len(_BOM) :]
            yield line

    def scan(self) -> Scan:
        scan = Scan()
        digest = hashlib.blake2b(digest_size=16)
        size = 0
        with self.path.open("rb") as f:
            first = True
            for line in f:
                digest.update(line)
                size += len(line)
                if first:
                    first = False
                    if line.startswith(_BOM):
                        line = line[len(_BOM) :]
                if self.id_key is None:
                    scan.add(self.parse(line))
                else:
                    record, raw_id = self.parse_pair(line)
                    scan.add(record)
                    scan.add_id(raw_id)
        if self.id_key is not None:
            scan.id_type = "int64" if scan._ids_all_int else "string"
        scan.size = size
        scan.digest = digest.hexdigest()
        return scan

    def pairs(self, start: int = 0) -> Iterator[tuple[Record, Any]]:
        parse = self.parse_pair if self.id_key is not None else self.parse
        with self.path.open("rb") as f:
            lines = self._lines(f)
            for _ in range(start):
                if next(lines, None) is None:
                    return
            if self.id_key is None:
                for line in lines:
                    yield parse(line), None  # type: ignore[misc]
            else:
                for line in lines:
                    yield parse(line)  # type: ignore[misc]

    def where(self, index: int) -> str:
        return f"record {index} (line {index + 1})"


def _strip_newline(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


class TextCorpus(_LineCorpus):
    """`.txt`: a line is a record; an empty line is a bad record."""

    format: ClassVar[str] = "txt"

    def parse(self, line: bytes) -> Record:
        line = _strip_newline(line)
        if not line:
            return Bad("empty line")
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Bad(f"not valid UTF-8 (byte {exc.start} of the line)")

    def options(self) -> dict[str, Any]:
        return {"format": self.format}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object"


class JsonlCorpus(_LineCorpus):
    """`.jsonl`: a line is a JSON object; the text is its `key` field."""

    format: ClassVar[str] = "jsonl"

    def parse(self, line: bytes) -> Record:
        return self.parse_pair(line)[0]

    def parse_pair(self, line: bytes) -> tuple[Record, Any]:
        line = line.strip()
        if not line:
            return Bad("empty line"), None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return Bad(f"not valid JSON ({exc})"), None
        if not isinstance(obj, dict):
            return Bad(f"not a JSON object but {_json_kind(obj)}"), None
        raw_id = obj.get(self.id_key) if self.id_key is not None else None
        return self._text(obj), raw_id

    def _text(self, obj: dict[str, Any]) -> Record:
        if self.key not in obj:
            return Bad(f"no field {self.key!r}")
        value = obj[self.key]
        if not isinstance(value, str):
            return Bad(f"field {self.key!r} is {_json_kind(value)}, not a string")
        if not value:
            return Bad(f"field {self.key!r} is an empty string")
        return value


class CsvCorpus(Corpus):
    """`.csv` (or `.tsv`): a header row, then a record per row; the text is column `key`."""

    format: ClassVar[str] = "csv"
    delimiter: ClassVar[str] = ","

    def _rows(self) -> Iterator[tuple[Record, Any]]:
        limit = csv.field_size_limit()
        if limit < sys.maxsize // 2:
            csv.field_size_limit(2**31 - 1)  # documents are longer than csv's 128 KiB default
        with self.path.open(encoding="utf-8-sig", newline="") as text:
            reader = csv.reader(text, delimiter=self.delimiter)
            try:
                header = next(reader, None)
                if header is None:
                    return
                if self.key not in header:
                    shown = ", ".join(repr(name) for name in header[:20])
                    raise CorpusError(
                        f"{self.path}: no column {self.key!r} in the header (it has: {shown}); "
                        "choose one with --column"
                    )
                column = header.index(self.key)
                id_column = self._id_column(header)
                for row in reader:
                    if not row:
                        continue  # a blank line is not a record
                    raw_id = None
                    if id_column is not None and id_column < len(row):
                        raw_id = row[id_column]
                    if len(row) <= column:
                        yield Bad(f"the row has {len(row)} fields, no {self.key!r}"), raw_id
                    elif not row[column]:
                        yield Bad(f"column {self.key!r} is empty"), raw_id
                    else:
                        yield row[column], raw_id
            except csv.Error as exc:
                raise CorpusError(f"{self.path}, line {reader.line_num}: bad CSV: {exc}") from exc
            except UnicodeDecodeError as exc:
                raise CorpusError(
                    f"{self.path}: not UTF-8 (near line {reader.line_num}): {exc}"
                ) from exc

    def _id_column(self, header: list[str]) -> int | None:
        if self.id_key is None:
            return None
        if self.id_key not in header:
            shown = ", ".join(repr(name) for name in header[:20])
            raise CorpusError(
                f"{self.path}: no id column {self.id_key!r} in the header (it has: {shown})"
            )
        return header.index(self.id_key)

    def scan(self) -> Scan:
        scan = Scan()
        for record, _ in self._rows():
            scan.add(record)
        scan.size, scan.digest = _hash_file(self.path)
        scan.id_type = "string" if self.id_key is not None else None
        return scan

    def pairs(self, start: int = 0) -> Iterator[tuple[Record, Any]]:
        for index, pair in enumerate(self._rows()):
            if index >= start:
                yield pair


class TsvCorpus(CsvCorpus):
    """`.tsv`: as `.csv`, with tabs."""

    format: ClassVar[str] = "tsv"
    delimiter: ClassVar[str] = "\t"


class ParquetCorpus(Corpus):
    """`.parquet`: a record per row of the string column `key` (needs pyarrow)."""

    format: ClassVar[str] = "parquet"
    _BATCH = 65_536

    def _file(self) -> Any:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise CorpusError(
                "reading .parquet needs pyarrow: pip install 'embedkit[parquet]'"
            ) from exc
        try:
            parquet = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowException) as exc:
            raise CorpusError(f"{self.path}: not a readable parquet file: {exc}") from exc
        schema = parquet.schema_arrow
        if self.key not in schema.names:
            shown = ", ".join(repr(name) for name in schema.names[:20])
            raise CorpusError(
                f"{self.path}: no column {self.key!r} (it has: {shown}); choose one with --column"
            )
        kind = schema.field(self.key).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and str(kind) not in (
            "string_view",
        ):
            raise CorpusError(f"{self.path}: column {self.key!r} holds {kind}, not strings")
        if self.id_key is not None and self.id_key not in schema.names:
            shown = ", ".join(repr(name) for name in schema.names[:20])
            raise CorpusError(f"{self.path}: no id column {self.id_key!r} (it has: {shown})")
        return parquet

    def _values(self, start: int) -> Iterator[tuple[Any, Any]]:
        parquet = self._file()
        skip = start
        columns = [self.key] if self.id_key is None else [self.key, self.id_key]
        for batch in parquet.iter_batches(batch_size=self._BATCH, columns=columns):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            values = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if self.id_key is not None else [None] * len(values)
            if skip:
                values, ids = values[skip:], ids[skip:]
            yield from zip(values, ids, strict=False)
            skip = 0

    @staticmethod
    def _record(value: Any, key: str) -> Record:
        if value is None:
            return Bad(f"column {key!r} is null")
        if not value:
            return Bad(f"column {key!r} is an empty string")
        return str(value)

    def scan(self) -> Scan:
        scan = Scan()
        for value, _ in self._values(0):
            scan.add(self._record(value, self.key))
        scan.size, scan.digest = _hash_file(self.path)
        if self.id_key is not None:
            scan.id_type = self._file().schema_arrow.field(self.id_key).type
        return scan

    def pairs(self, start: int = 0) -> Iterator[tuple[Record, Any]]:
        for value, raw_id in self._values(start):
            yield self._record(value, self.key), raw_id

    def where(self, index: int) -> str:
        return f"record {index} (row {index})"


_CLASSES: dict[str, type[Corpus]] = {
    "txt": TextCorpus,
    "jsonl": JsonlCorpus,
    "csv": CsvCorpus,
    "tsv": TsvCorpus,
    "parquet": ParquetCorpus,
}


def guess_format(path: Path | None, *, field: str | None, column: str | None) -> str:
    """The format from the file name; for stdin, jsonl with --field, csv with --column, else txt."""
    if path is not None:
        found = _SUFFIXES.get(path.suffix.lower())
        if found is None:
            raise CorpusError(
                f"{path}: cannot tell the format from {path.suffix or 'no suffix'!r}; "
                f"pass --format ({', '.join(FORMATS)})"
            )
        return found
    if field is not None:
        return "jsonl"
    if column is not None:
        return "csv"
    return "txt"


def open_corpus(
    path: Path,
    *,
    format: str | None = None,
    field: str | None = None,
    column: str | None = None,
    id_field: str | None = None,
) -> Corpus:
    """A reader for `path`. `field` (jsonl) and `column` (csv, tsv, parquet) name the text;
    `id_field` names the field or column that holds each record's id."""
    fmt = format or guess_format(path, field=field, column=column)
    if fmt not in _CLASSES:
        raise CorpusError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "jsonl" and column is not None:
        raise CorpusError("--column is for csv, tsv and parquet; jsonl takes --field")
    if fmt in ("csv", "tsv", "parquet") and field is not None:
        raise CorpusError(f"--field is for jsonl; {fmt} takes --column")
    if fmt == "txt" and (field is not None or column is not None):
        raise CorpusError(
            "a .txt file has one text per line: it takes neither --field nor --column"
        )
    if fmt == "txt" and id_field is not None:
        raise CorpusError(
            "a .txt file has one text per line and no fields: its ids are the record numbers"
        )
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    key = field or column or "text"
    if id_field is not None and id_field == key:
        raise CorpusError(f"the id field and the text field are both {key!r}")
    return _CLASSES[fmt](path, key=key, id_key=id_field)


def spool(stream: IO[bytes], directory: Path, prefix: str) -> Path:
    """Copy a stream (stdin) to a new file in `directory`, so it can be counted and re-read."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".spool", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)
