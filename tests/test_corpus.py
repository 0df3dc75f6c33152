"""Readers, the in-place .npy writer and the resume state of `embedkit embed`."""

from __future__ import annotations

import io
import re
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import numpy as np
import pytest

from embedkit._bulk.corpus import Bad, CorpusError, guess_format, open_corpus, spool
from embedkit._bulk.npy import NpyWriter, npy_header
from embedkit._bulk.sinks import ParquetPaths
from embedkit._bulk.state import OutputPaths, ResumeState, state_path


def reasons(records: list[str | Bad]) -> list[str | None]:
    return [r.reason if isinstance(r, Bad) else None for r in records]


def texts(records: list[str | Bad]) -> list[str | None]:
    return [r if isinstance(r, str) else None for r in records]


def np_save_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------- txt


def test_txt_lines_are_records_and_bad_lines_keep_their_place(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\nsecond\n\n  spaced  \nbad \xff byte\nlast")
    corpus = open_corpus(path)
    records = list(corpus.records())
    assert texts(records) == ["first", "second", None, "  spaced  ", None, "last"]
    assert reasons(records)[2] == "empty line"
    assert "UTF-8" in str(reasons(records)[4])
    scan = corpus.scan()
    assert (scan.records, scan.bad, scan.first_good) == (6, 2, "first")
    assert [index for index, _ in scan.examples] == [2, 4]
    assert scan.size == path.stat().st_size
    assert corpus.where(2) == "record 2 (line 3)"


def test_txt_trailing_newline_is_not_a_record_and_start_skips(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("".join(f"line {i}\n" for i in range(10)))
    corpus = open_corpus(path)
    assert corpus.scan().records == 10
    assert list(corpus.records(7)) == ["line 7", "line 8", "line 9"]
    assert list(corpus.records(10)) == []
    assert list(corpus.records(50)) == []


def test_scan_digest_follows_the_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\ntwo\n")
    b.write_text("one\ntwo!\n")
    assert open_corpus(a).scan().digest != open_corpus(b).scan().digest
    b.write_text("one\ntwo\n")
    assert open_corpus(a).scan().digest == open_corpus(b).scan().digest


# --------------------------------------------------------------------------------- jsonl


def test_jsonl_field_and_every_kind_of_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [
        b'{"text": "good one", "id": 1}',
        b'{"id": 2}',
        b'{"text": 3}',
        b'{"text": null}',
        b'{"text": ""}',
        b"",
        b"[1, 2]",
        b"{not json",
        b'{"text": "caf\\u00e9 \xe2\x98\x95"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    corpus = open_corpus(path)
    records = list(corpus.records())
    assert texts(records) == ["good one", *[None] * 7, "café ☕"]
    got = reasons(records)
    assert got[1] == "no field 'text'"
    assert got[2] == "field 'text' is a number, not a string"
    assert got[3] == "field 'text' is null, not a string"
    assert got[4] == "field 'text' is an empty string"
    assert got[5] == "empty line"
    assert got[6] == "not a JSON object but an array"
    assert str(got[7]).startswith("not valid JSON")
    assert corpus.scan().bad == 7


def test_jsonl_custom_field(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "a"}\n{"body": "b"}\n')
    assert list(open_corpus(path, field="body").records()) == ["a", "b"]


# ----------------------------------------------------------------------------------- csv


def test_csv_column_quoted_newlines_short_rows_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        'id,text,lang\n1,"hello, world",en\n2,"two\nlines",en\n\n3,,en\n4\n5,plain,fr\n',
        encoding="utf-8-sig",
    )
    corpus = open_corpus(path)
    records = list(corpus.records())
    assert texts(records) == ["hello, world", "two\nlines", None, None, "plain"]
    assert reasons(records)[2] == "column 'text' is empty"
    assert reasons(records)[3] == "the row has 1 fields, no 'text'"
    assert list(corpus.records(4)) == ["plain"]
    scan = corpus.scan()
    assert (scan.records, scan.bad) == (5, 2)


def test_csv_missing_column_is_an_error_that_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,body\n1,x\n")
    with pytest.raises(CorpusError, match=r"no column 'text'.*'id', 'body'"):
        open_corpus(path).scan()
    assert list(open_corpus(path, column="body").records()) == ["x"]


def test_csv_long_fields_and_tsv(tmp_path: Path) -> None:
    long_text = "word " * 60_000  # over csv's 128 KiB default field limit
    path = tmp_path / "c.csv"
    path.write_text(f'text\n"{long_text}"\n')
    assert list(open_corpus(path).records()) == [long_text]
    tsv = tmp_path / "c.tsv"
    tsv.write_text("text\tid\na, b\t1\n")
    assert list(open_corpus(tsv).records()) == ["a, b"]


def test_csv_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"text\nok\n\xff\xfe\n")
    with pytest.raises(CorpusError, match="not UTF-8"):
        open_corpus(path).scan()


# ------------------------------------------------------------------------------- parquet


def test_parquet_rows_nulls_and_start_across_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from embedkit._bulk.corpus import ParquetCorpus

    values = [f"row {i}" for i in range(25)]
    values[3] = None
    values[7] = ""
    path = tmp_path / "c.parquet"
    table = pa.table({"id": list(range(25)), "text": values})
    pq.write_table(table, path, row_group_size=6)
    monkeypatch.setattr(ParquetCorpus, "_BATCH", 4)
    corpus = open_corpus(path)
    records = list(corpus.records())
    assert texts(records) == [v or None for v in values]
    assert reasons(records)[3] == "column 'text' is null"
    assert reasons(records)[7] == "column 'text' is an empty string"
    assert list(corpus.records(10)) == values[10:]
    assert list(corpus.records(23)) == values[23:]
    scan = corpus.scan()
    assert (scan.records, scan.bad) == (25, 2)
    with pytest.raises(CorpusError, match="holds int64, not strings"):
        open_corpus(path, column="id").scan()
    with pytest.raises(CorpusError, match="no column 'body'"):
        open_corpus(path, column="body").scan()


# --------------------------------------------------------------------------- choosing


def test_format_from_suffix_and_option_checks(tmp_path: Path) -> None:
    assert guess_format(Path("a.TXT"), field=None, column=None) == "txt"
    assert guess_format(Path("a.ndjson"), field=None, column=None) == "jsonl"
    assert guess_format(None, field="t", column=None) == "jsonl"
    assert guess_format(None, field=None, column="t") == "csv"
    assert guess_format(None, field=None, column=None) == "txt"
    with pytest.raises(CorpusError, match="pass --format"):
        guess_format(Path("a.dat"), field=None, column=None)
    path = tmp_path / "a.txt"
    path.write_text("x\n")
    with pytest.raises(CorpusError, match="neither --field nor --column"):
        open_corpus(path, field="text")
    with pytest.raises(CorpusError, match="jsonl takes --field"):
        open_corpus(path, format="jsonl", column="text")
    with pytest.raises(CorpusError, match="no such file"):
        open_corpus(tmp_path / "missing.txt")


def test_spool_copies_a_stream(tmp_path: Path) -> None:
    data = b"".join(b"line %d\n" % i for i in range(100_000))
    path = spool(io.BytesIO(data), tmp_path, prefix="x-")
    assert path.parent == tmp_path
    assert path.read_bytes() == data


# ------------------------------------------------------------------------------ writer


def test_npy_writer_in_place_any_order_equals_np_save(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((1000, 7)).astype(np.float32)
    path = tmp_path / "m.npy"
    writer = NpyWriter(path, matrix.shape, np.float32, create=True)
    assert path.stat().st_size == len(writer.header) + matrix.nbytes  # full size at once
    for start in (900, 0, 300, 600, 100, 200, 400, 500, 700, 800):
        writer.write(start, matrix[start : start + 100])
    writer.sync()
    writer.close()
    writer.close()
    assert path.read_bytes() == np_save_bytes(matrix)
    assert writer.header == npy_header(matrix.shape, np.dtype(np.float32))

    mask = rng.random(1000) > 0.5
    mask_path = tmp_path / "mask.npy"
    mask_writer = NpyWriter(mask_path, (1000,), np.bool_, create=True)
    mask_writer.write(0, mask)
    mask_writer.close()
    assert mask_path.read_bytes() == np_save_bytes(mask)


def test_npy_writer_reopens_only_the_same_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    NpyWriter(path, (10, 4), np.float32, create=True).close()
    again = NpyWriter(path, (10, 4), np.float32, create=False)
    again.write(9, np.ones((1, 4), np.float32))
    again.close()
    assert np.load(path)[9].tolist() == [1.0] * 4
    with pytest.raises(CorpusError, match="start over with --force"):
        NpyWriter(path, (10, 5), np.float32, create=False)
    with pytest.raises(CorpusError, match="start over with --force"):
        NpyWriter(path, (11, 4), np.float32, create=False)


# ------------------------------------------------------------------------------- state


def test_state_round_trip_mismatch_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "out.state.json"
    assert ResumeState.load(path) is None
    state = ResumeState({"api": "tei", "records": 3}, rows=3, dim=8, on_bad="fail", committed=2)
    state.save(path)
    assert not path.with_name(path.name + ".tmp").exists()
    loaded = ResumeState.load(path)
    assert loaded == state
    assert loaded.mismatch({"api": "tei", "records": 3}) is None
    assert loaded.mismatch({"api": "hf", "records": 3}) == "api"
    assert loaded.mismatch({"api": "tei", "records": 3, "model": "m"}) == "model"
    path.write_text("{not json")
    with pytest.raises(CorpusError, match="not an embedkit state file"):
        ResumeState.load(path)


def test_output_paths() -> None:
    paths = OutputPaths.for_output(Path("/data/vectors.npy"))
    assert paths.mask == Path("/data/vectors.mask.npy")
    assert paths.state == Path("/data/vectors.npy.state.json")
    assert paths.data_partial == Path("/data/vectors.npy.partial")
    assert paths.mask_partial == Path("/data/vectors.mask.npy.partial")


def test_every_output_finds_its_state_through_state_path() -> None:
    assert state_path(Path("/data/vectors.npy")) == Path("/data/vectors.npy.state.json")
    assert state_path(Path("/data/v.parquet")) == Path("/data/v.parquet.state.json")
    for out in (Path("/data/vectors.npy"), Path("/data/weird name")):
        assert OutputPaths.for_output(out).state == state_path(out)
    assert ParquetPaths(Path("/data/v.parquet")).state == state_path(Path("/data/v.parquet"))


def test_only_state_path_names_the_state_file() -> None:
    """The name is built in one place, so the engine, the sinks and the CLI cannot disagree."""
    package = Path(__file__).resolve().parent.parent / "embedkit"
    builders = []
    for path in sorted(package.rglob("*.py")):
        found = re.findall(r"[\"']\.state\.json[\"']", path.read_text(encoding="utf-8"))
        builders += [path.relative_to(package).as_posix()] * len(found)
    assert builders == ["_bulk/state.py"]


@pytest.mark.asyncio
async def test_a_scan_in_a_worker_thread_leaves_the_event_loop_its_turns(tmp_path: Path) -> None:
    """embed_file scans in a worker thread beside the app's event loop; a scan that held the
    GIL throughout stalled the loop for its whole length (70-90 ms on 100,000 lines), and
    every query the app made meanwhile with it. Counted in loop turns, not in time: a
    starved loop got 10-250 turns during this scan, one that is offered the GIL thousands."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"line {i} of the corpus" for i in range(100_000)) + "\n")
    corpus = open_corpus(path)
    turns = 0
    scanning = True

    async def turn() -> None:
        nonlocal turns
        while scanning:
            await anyio.lowlevel.checkpoint()
            turns += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(turn)
        await anyio.lowlevel.checkpoint()
        scan = await anyio.to_thread.run_sync(corpus.scan)
        scanning = False
    assert scan.records == 100_000
    assert turns >= 1000
