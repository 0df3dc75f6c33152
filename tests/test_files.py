"""`embed_file` / `aembed_file`: every input format into both outputs, ids, Parquet's shape,
resume after kill -9 (row-identical Parquet), refusals, progress, and the checks every text
and option passes before anything is sent."""

from __future__ import annotations

import inspect
import io
import json
import signal
import subprocess
import typing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import embedkit
from embedkit import (
    AsyncEmbedder,
    Connection,
    CorpusError,
    Embedder,
    EmbedkitError,
    FileProgress,
    Limits,
)
from embedkit._config import CONNECTION_FIELDS, LIMITS_FIELDS
from embedkit._options import AnyOptions, LegacyOptions

from .fakes import FakeBackend, vectors_for
from .hashserver import HashServer
from .test_cli import kill, killed_at, spawn, wait_for_state

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

DIM = 32
TEXTS = [f"record {i} " + "w" * (i * 7919 % 41) for i in range(2_500)] + ["record 7 w"]


def write(path: Path, texts: list[str], ids: list[Any] | None = None) -> Path:
    """`texts` in the format `path`'s suffix says, with ids in an "key" field when given."""
    ids = ids if ids is not None else [f"doc-{i}" for i in range(len(texts))]
    kind = path.suffix
    if kind == ".txt":
        path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    elif kind == ".jsonl":
        path.write_text(
            "".join(
                json.dumps({"key": k, "text": t}) + "\n" for k, t in zip(ids, texts, strict=True)
            )
        )
    elif kind in (".csv", ".tsv"):
        import csv

        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="," if kind == ".csv" else "\t")
            writer.writerow(["key", "text"])
            writer.writerows(zip(ids, texts, strict=True))
    else:
        pq.write_table(pa.table({"key": ids, "text": texts}), path, row_group_size=700)
    return path


def read_parquet(path: Path) -> tuple[list[Any], np.ndarray, list[bool]]:
    table = pq.read_table(path)
    embedding = table.column("embedding").combine_chunks()
    matrix = embedding.values.to_numpy(zero_copy_only=False).reshape(len(table), -1)
    return table.column(0).to_pylist(), matrix, embedding.is_valid().to_pylist()


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv", "parquet"])
@pytest.mark.parametrize("out", ["npy", "parquet"])
def test_every_input_format_into_both_outputs(tmp_path: Path, fmt: str, out: str) -> None:
    corpus = write(tmp_path / f"c.{fmt}", TEXTS)
    ids = None if fmt == "txt" or out == "npy" else "key"
    backend = FakeBackend()
    result = embedkit.embed_file(
        corpus,
        tmp_path / f"o.{out}",
        id_field=ids,
        block_size=300,
        row_group_size=1000,
        backend=backend,
    )
    want = vectors_for(TEXTS)
    assert (result.rows, result.bad, result.dim, result.embedded) == (
        len(TEXTS),
        0,
        DIM,
        len(TEXTS),
    )
    assert result.output == tmp_path / f"o.{out}"
    if out == "npy":
        assert np.array_equal(np.load(result.output), want)
    else:
        got_ids, matrix, valid = read_parquet(result.output)
        assert np.array_equal(matrix, want)
        assert all(valid)
        assert got_ids == (
            list(range(len(TEXTS))) if ids is None else [f"doc-{i}" for i in range(len(TEXTS))]
        )
        meta = pq.ParquetFile(result.output).metadata
        assert meta.num_row_groups == 3  # 1000 + 1000 + 501
        schema = pq.read_schema(result.output)
        assert schema.field("embedding").type == pa.list_(pa.float32(), DIM)
        assert schema.names == ["key" if ids else "id", "embedding"]
    assert sorted(backend.sent) == sorted([TEXTS[0], *TEXTS])  # a probe, then every record
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [corpus.name, f"o.{out}", f"o.{out}.state.json"]
    )


def test_a_stream_into_parquet_with_int_ids(tmp_path: Path) -> None:
    data = io.BytesIO(
        "".join(
            json.dumps({"text": t, "id": 100 + i}) + "\n" for i, t in enumerate(TEXTS[:50])
        ).encode()
    )
    result = embedkit.embed_file(
        data, tmp_path / "o.parquet", field="text", id_field="id", backend=FakeBackend()
    )
    table = pq.read_table(result.output)
    assert table.column("id").to_pylist() == list(range(100, 150))
    assert table.schema.field("id").type == pa.int64()  # every id an int: an int64 column
    rows = table.column("embedding").to_pylist()  # plain Python lists of floats
    assert np.array_equal(np.array(rows, dtype=np.float32), vectors_for(TEXTS[:50]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet", "o.parquet.state.json"]


def test_bad_records_skip_null_embeddings_in_parquet_with_ids_aligned(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    records = [
        {"id": "a", "text": "one"},
        {"id": "b"},
        {"id": 7, "text": ""},
        {"id": "d", "text": "four"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    with pytest.raises(CorpusError, match="3 bad records") as failed:
        embedkit.embed_file(path, tmp_path / "o.parquet", id_field="id", backend=FakeBackend())
    assert "on_bad='skip'" in str(failed.value)
    assert isinstance(failed.value, EmbedkitError)
    assert not (tmp_path / "o.parquet.state.json").exists()
    result = embedkit.embed_file(
        path, tmp_path / "o.parquet", id_field="id", on_bad="skip", backend=FakeBackend()
    )
    assert (result.rows, result.bad) == (5, 3)
    ids, matrix, valid = read_parquet(result.output)
    assert ids == ["a", "b", "7", "d", None]  # a mix of strings and ints: strings; no id: null
    assert valid == [True, False, False, True, False]
    assert np.array_equal(matrix[[0, 3]], vectors_for(["one", "four"]))
    npy = embedkit.embed_file(path, tmp_path / "o.npy", on_bad="skip", backend=FakeBackend())
    assert np.load(npy.mask).tolist() == valid  # the .npy mask says what the nulls say


def test_refused_by_the_server_in_parquet(tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.txt", TEXTS[:600])
    backend = FakeBackend(refuse=frozenset({TEXTS[450]}))
    with pytest.raises(CorpusError, match=r"record 450 .*refused by the server"):
        embedkit.embed_file(
            corpus,
            tmp_path / "o.parquet",
            block_size=100,
            row_group_size=200,
            commit_interval=0,
            backend=backend,
        )
    state = json.loads((tmp_path / "o.parquet.state.json").read_bytes())
    assert state["committed"] == 400  # the row groups before the refused record are kept
    result = embedkit.embed_file(
        corpus,
        tmp_path / "o.parquet",
        resume=True,
        on_bad="skip",
        block_size=100,
        row_group_size=200,
        backend=backend,
    )
    assert (result.resumed_from, result.bad) == (400, 1)
    ids, matrix, valid = read_parquet(result.output)
    assert ids == list(range(600))
    assert valid == [i != 450 for i in range(600)]
    good = [t for i, t in enumerate(TEXTS[:600]) if i != 450]
    assert np.array_equal(matrix[np.array(valid)], vectors_for(good))


def test_a_changed_input_or_option_is_refused_on_resume(tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.jsonl", TEXTS[:100])
    out = tmp_path / "o.parquet"
    embedkit.embed_file(corpus, out, id_field="key", backend=FakeBackend())
    again = embedkit.embed_file(corpus, out, id_field="key", resume=True, backend=FakeBackend())
    assert again.embedded == 0  # complete: nothing to do
    with pytest.raises(CorpusError, match="different id_key"):
        embedkit.embed_file(corpus, out, resume=True, backend=FakeBackend())
    with pytest.raises(CorpusError, match="different row_group_size"):
        embedkit.embed_file(
            corpus, out, id_field="key", resume=True, row_group_size=10, backend=FakeBackend()
        )
    with pytest.raises(CorpusError, match="different normalize"):
        embedkit.embed_file(
            corpus, out, id_field="key", resume=True, normalize=False, backend=FakeBackend()
        )
    write(corpus, TEXTS[:101])
    with pytest.raises(CorpusError, match=r"different input.*overwrite=True"):
        embedkit.embed_file(corpus, out, id_field="key", resume=True, backend=FakeBackend())
    assert (
        embedkit.embed_file(corpus, out, id_field="key", overwrite=True, backend=FakeBackend()).rows
        == 101
    )


def test_options_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.txt", ["one"])
    with pytest.raises(ValueError, match=r"must end in .npy or .parquet"):
        embedkit.embed_file(corpus, tmp_path / "o.csv", backend=FakeBackend())
    with pytest.raises(ValueError, match=r"write a .parquet to keep the ids"):
        embedkit.embed_file(
            write(tmp_path / "c.csv", ["one"]),
            tmp_path / "o.npy",
            id_field="key",
            backend=FakeBackend(),
        )
    with pytest.raises(CorpusError, match="no fields"):
        embedkit.embed_file(corpus, tmp_path / "o.parquet", id_field="key", backend=FakeBackend())
    with pytest.raises(ValueError, match="on_bad"):
        embedkit.embed_file(corpus, tmp_path / "o.npy", on_bad="drop", backend=FakeBackend())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"), Embedder(backend=FakeBackend()) as emb:
        embedkit.embed_file(
            corpus, tmp_path / "o.npy", limits=Limits(max_concurrency=2), embedder=emb
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "c.txt"]


def test_progress_as_a_callback_and_as_a_tqdm_bar(tmp_path: Path) -> None:
    from tqdm import tqdm

    corpus = write(tmp_path / "c.txt", TEXTS[:1000])
    updates: list[FileProgress] = []
    embedkit.embed_file(
        corpus, tmp_path / "a.npy", block_size=250, progress=updates.append, backend=FakeBackend()
    )
    assert [u.done for u in updates] == [250, 500, 750, 1000]
    assert all(u.total == 1000 and u.retries == 0 for u in updates)
    sink = io.StringIO()
    with tqdm(file=sink, mininterval=0) as bar:
        embedkit.embed_file(
            corpus,
            tmp_path / "b.parquet",
            progress=bar,
            token="hf_secretvalue",
            backend=FakeBackend(),
        )
        assert bar.n == 1000
    assert "1000/1000" in sink.getvalue()
    assert "secret" not in sink.getvalue()


@pytest.mark.asyncio
async def test_aembed_file_with_an_open_async_embedder(tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.csv", TEXTS[:300])
    async with AsyncEmbedder(backend=FakeBackend()) as emb:
        result = await embedkit.aembed_file(
            corpus, tmp_path / "o.parquet", id_field="key", embedder=emb
        )
        assert emb.stats().texts >= 300  # shared the embedder's scheduler
    ids, matrix, _ = read_parquet(result.output)
    assert ids[:2] == ["doc-0", "doc-1"]
    assert np.array_equal(matrix, vectors_for(TEXTS[:300]))


def test_kill_9_again_and_again_then_resume_gives_the_same_parquet(tmp_path: Path) -> None:
    texts: list[str | None] = list(TEXTS[:2_000]) + [f"tail {i}" for i in range(4_000)]
    texts[17] = None
    (tmp_path / "c.jsonl").write_text(
        "".join(
            json.dumps({"id": f"k{i}", **({"text": t} if t else {})}) + "\n"
            for i, t in enumerate(texts)
        )
    )
    args = [
        "c.jsonl",
        "-o",
        "out.parquet",
        "--id-field",
        "id",
        "--on-bad",
        "skip",
        "--block-size",
        "200",
    ]
    args += ["--row-group-size", "500", "--batch-size", "16", "--concurrency", "2", "--quiet"]
    state_path = tmp_path / "out.parquet.state.json"
    with HashServer.running(dim=8, delay=0.004) as server:
        args += ["--api", "tei", "--url", server.url]
        for process in killed_at([*args, "--resume"], state_path, (500, 2_000, 4_000), tmp_path):
            assert process.returncode == -signal.SIGKILL
            assert not (tmp_path / "out.parquet").exists()
        # the library resumes what the CLI started: the same run, spelled in Python
        settings: dict[str, Any] = {"id_field": "id", "on_bad": "skip", "block_size": 200}
        settings.update(row_group_size=500, api="tei", url=server.url)
        settings.update(limits=embedkit.Limits(max_batch_size=16, max_concurrency=2))
        out = tmp_path / "out.parquet"
        result = embedkit.embed_file(tmp_path / "c.jsonl", out, resume=True, **settings)
        assert result.resumed_from >= 4_000
        assert result.bad == 1
        embedkit.embed_file(tmp_path / "c.jsonl", tmp_path / "full.parquet", **settings)
    resumed, full = (
        pq.read_table(tmp_path / "out.parquet"),
        pq.read_table(tmp_path / "full.parquet"),
    )
    assert resumed.equals(full)  # row for row, and the same row groups
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "full.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 12
    assert resumed.column("id").to_pylist() == [f"k{i}" for i in range(6_000)]
    assert not (tmp_path / "out.parquet.parts").exists()


# ------------------------------------------------------------------ one check for every text


@pytest.mark.asyncio
async def test_a_lone_surrogate_is_refused_everywhere_before_anything_is_sent() -> None:
    backend = FakeBackend()
    async with AsyncEmbedder(backend=backend) as emb:
        with pytest.raises(ValueError, match=r"text has a lone surrogate '\\ud800' at character 1"):
            await emb.embed("a\ud800b")
        with pytest.raises(ValueError, match=r"texts\[1\] has a lone surrogate"):
            await emb.embed_many(["fine", "a\ud800b"])
        with pytest.raises(ValueError, match=r"sentences\[0\] has a lone surrogate"):
            await emb.encode(["\udfffx"])
        with pytest.raises(ValueError, match=r"texts\[2\] has a lone surrogate"):
            async for _ in emb.embed_stream(["a", "b", "c\ud800"]):
                pass
    assert "a\ud800b" not in backend.sent
    assert all("\ud800" not in t and "\udfff" not in t for t in backend.sent)


@pytest.mark.parametrize("timeout", [0, -1.0, httpx.Timeout(5.0, read=0)])
def test_a_zero_or_negative_timeout_is_refused_at_construction(timeout: Any) -> None:
    with pytest.raises(ValueError, match=r"timeout.* must be a positive number"):
        AsyncEmbedder(
            "m", connection=Connection(timeout=timeout), api="tei", url="http://127.0.0.1:1"
        )
    with pytest.raises(ValueError, match="timeout"):
        Embedder("m", connection=Connection(timeout=timeout), api="tei", url="http://127.0.0.1:1")


def test_embedder_and_embed_file_take_exactly_the_async_embedders_arguments() -> None:
    def params(function: Any) -> list[tuple[str, Any, Any, Any]]:
        hints = typing.get_type_hints(function)
        return [
            (p.name, p.kind, p.default, hints.get(p.name))
            for p in inspect.signature(function).parameters.values()
            if p.name != "self"
        ]

    # the option list is written once: AsyncEmbedder's named parameters are EmbedderOptions,
    # its **deprecated keywords are exactly the fields Limits and Connection took over, and
    # Embedder passes the same options through (no hand-copied twin of the signature)
    named = [p for p in params(AsyncEmbedder.__init__) if p[1] is not inspect.Parameter.VAR_KEYWORD]
    options = typing.get_type_hints(embedkit.EmbedderOptions)
    assert options == {name: hint for name, _, _, hint in named}
    legacy = set(typing.get_type_hints(LegacyOptions))
    assert legacy == LIMITS_FIELDS | CONNECTION_FIELDS  # fields added later were never flat
    assert set(typing.get_type_hints(AnyOptions)) == set(options) | legacy
    kinds = [p.kind for p in inspect.signature(Embedder.__init__).parameters.values()]
    assert kinds[-1] is inspect.Parameter.VAR_KEYWORD
    for function in (embedkit.embed_file, embedkit.aembed_file):
        kinds = {p.name: p.kind for p in inspect.signature(function).parameters.values()}
        assert kinds["options"] is inspect.Parameter.VAR_KEYWORD
    sync, asynchronous = (
        [
            (p.name, p.kind, p.default, p.annotation)
            for p in inspect.signature(f).parameters.values()
        ]
        for f in (embedkit.embed_file, embedkit.aembed_file)
    )
    assert [p for p in sync if p[0] != "embedder"] == [
        p for p in asynchronous if p[0] != "embedder"
    ]
    assert [p[0] for p in sync] == [p[0] for p in asynchronous]


def test_progress_true_draws_a_tqdm_bar_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write(tmp_path / "c.txt", TEXTS[:700])
    embedkit.embed_file(corpus, tmp_path / "o.npy", progress=True, backend=FakeBackend())
    err = capsys.readouterr().err
    assert "embedkit: 100%" in err
    assert "700/700" in err


def test_ctrl_c_commits_what_is_written_and_resume_finishes_the_parquet(tmp_path: Path) -> None:
    corpus = write(tmp_path / "c.txt", [f"line {i}" for i in range(6_000)])
    state = tmp_path / "o.parquet.state.json"
    with HashServer.running(dim=8) as server:
        server.hold_after = 3_000  # then requests hang: the run waits for its Ctrl-C
        args = [corpus, "-o", "o.parquet", "--api", "tei", "--url", server.url]
        args += ["--row-group-size", "500", "--commit-interval", "0"]
        process = spawn(args, cwd=tmp_path, stderr=subprocess.PIPE)
        try:
            wait_for_state(state, lambda s: s["committed"] >= 1_500, process)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
        finally:
            kill(process)
        assert process.returncode == 130
        saved = json.loads(state.read_bytes())["committed"]
        assert f"interrupted: {saved:,} rows are saved" in err.decode()
        assert saved % 500 == 0
        server.resume()
        result = embedkit.embed_file(
            corpus,
            tmp_path / "o.parquet",
            resume=True,
            row_group_size=500,
            api="tei",
            url=server.url,
        )
    assert result.resumed_from == saved
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == list(range(6_000))
    rows = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert np.array_equal(rows, vectors_for([f"line {i}" for i in range(6_000)], 8))


@pytest.mark.asyncio
async def test_the_scheduler_hands_out_tickets() -> None:
    from embedkit._core.jobs import Ticket

    backend = FakeBackend()
    async with AsyncEmbedder(backend=backend) as emb:
        scheduler = emb.running_scheduler()
        kept, dropped = scheduler.enqueue(["a", "b"]), scheduler.enqueue(["never sent"])
        assert isinstance(kept, Ticket)
        assert (len(kept), len(dropped)) == (2, 1)
        dropped.discard()
        assert np.array_equal(await kept.result(), vectors_for(["a", "b"]))
    assert "never sent" not in backend.sent


@pytest.mark.parametrize("out", ["npy", "parquet"])
def test_an_empty_input_and_an_input_with_no_good_record(tmp_path: Path, out: str) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.txt").write_text("\n\n\n")
    empty = embedkit.embed_file(
        tmp_path / "empty.txt", tmp_path / f"e.{out}", backend=FakeBackend()
    )
    assert (empty.rows, empty.bad) == (0, 0)
    bad = embedkit.embed_file(
        tmp_path / "bad.txt", tmp_path / f"b.{out}", on_bad="skip", backend=FakeBackend()
    )
    assert (bad.rows, bad.bad) == (3, 3)
    if out == "parquet":
        assert pq.read_table(bad.output).column("embedding").null_count == 3
    else:
        assert np.load(bad.mask).tolist() == [False] * 3


def test_aembed_file_runs_on_trio(tmp_path: Path) -> None:
    import functools

    import trio

    corpus = write(tmp_path / "c.jsonl", TEXTS[:400])
    run = functools.partial(
        embedkit.aembed_file, corpus, tmp_path / "o.parquet", id_field="key", backend=FakeBackend()
    )
    result = trio.run(run)
    ids, matrix, _ = read_parquet(result.output)
    assert ids == [f"doc-{i}" for i in range(400)]
    assert np.array_equal(matrix, vectors_for(TEXTS[:400]))
