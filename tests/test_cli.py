"""`embedkit embed` against a deterministic loopback server: exact matrices, kill -9 and
resume, bad records, stdin, formats, and the refusals that protect an output."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedkit._cli import main

from .fakes import vectors_for
from .hashserver import HashServer
from .servers import ROOT

DIM = 8


@pytest.fixture
def server() -> Iterator[HashServer]:
    with HashServer.running(dim=DIM) as running:
        yield running


def lines(n: int) -> list[str]:
    """A corpus with lengths from 5 to ~60 characters, and a repeated line every 10."""
    return [
        f"repeat {i % 3}" if i % 10 == 0 else f"doc {i} " + "w" * (i * 7919 % 57) for i in range(n)
    ]


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def expected(texts: list[str | None]) -> np.ndarray:
    """The matrix the server's vectors give, with zero rows where a text is None."""
    matrix = np.zeros((len(texts), DIM), dtype=np.float32)
    good = [i for i, t in enumerate(texts) if t is not None]
    matrix[good] = vectors_for([texts[i] for i in good], DIM)  # type: ignore[misc]
    return matrix


def write_txt(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def embed(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """Run `embedkit embed ...` in this process: (exit status, stderr)."""
    status = main(["embed", *map(str, args)])
    return status, capsys.readouterr().err


def spawn(args: list[str | Path], cwd: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.update(kwargs.pop("env", {}))
    return subprocess.Popen(
        [sys.executable, "-m", "embedkit", "embed", *map(str, args)],
        cwd=cwd,
        env=env,
        **kwargs,
    )


def wait_for_state(
    path: Path, ready: Callable[[dict[str, Any]], bool], process: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """Poll the state file a subprocess writes until `ready(state)`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            state: dict[str, Any] = json.loads(path.read_bytes())
            if ready(state):
                return state
        if process.poll() is not None:
            raise AssertionError(f"embedkit exited with {process.returncode} first")
        time.sleep(0.005)  # polling another process's file
    raise AssertionError(f"{path} never got there")


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def killed_at(
    args: list[str | Path], state: Path, thresholds: Iterable[int], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `embedkit embed ARGS` once per threshold, each time `kill -9`ed as soon as its
    state file says that many rows are committed; yields each killed process."""
    for threshold in thresholds:
        process = spawn(args, cwd=cwd)
        try:
            wait_for_state(state, lambda s, t=threshold: s["committed"] >= t, process)
        finally:
            kill(process)
        yield process


# ---------------------------------------------------------------------------------- runs


def test_several_urls_spread_the_corpus_over_replicas(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = lines(3000)
    corpus = write_txt(tmp_path / "corpus.txt", texts)
    out = tmp_path / "out.npy"
    with HashServer.running(dim=DIM) as other:
        args = ["--api", "tei", "--url", server.url, "--url", other.url, "--concurrency", "2"]
        status, err = embed(capsys, corpus, "-o", out, *args)
    assert status == 0, err
    assert out.read_bytes() == npy_bytes(expected(texts))
    assert server.texts > 0
    assert other.texts > 0  # both replicas did part of the work


def test_a_20000_line_corpus_gives_exactly_the_expected_matrix(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = lines(20_000)
    corpus = write_txt(tmp_path / "corpus.txt", texts)
    out = tmp_path / "out.npy"
    status, err = embed(capsys, corpus, "-o", out, "--api", "tei", "--url", server.url)
    assert status == 0, err
    assert out.read_bytes() == npy_bytes(expected(texts))  # what np.save writes, byte for byte
    assert "wrote" in err
    assert "20,000 × 8 float32" in err
    # repeats inside a block were sent once: 3 distinct repeated lines, a probe, 18,000 others
    assert server.texts <= 18_000 + 1 + 3 * 20
    state = json.loads((tmp_path / "out.npy.state.json").read_bytes())
    assert state["complete"] is True
    assert state["committed"] == 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corpus.txt",
        "out.npy",
        "out.npy.state.json",
    ]

    # a finished run says so and does nothing
    with_cache = tmp_path / "cached.npy"
    texts_before = server.texts
    status, err = embed(
        capsys,
        corpus,
        "-o",
        with_cache,
        "--api",
        "tei",
        "--url",
        server.url,
        "--cache-size",
        "5000",
    )
    assert status == 0, err
    assert server.texts - texts_before == 18_000 + 3  # each repeated line sent once, ever
    assert with_cache.read_bytes() == out.read_bytes()

    requests = server.requests
    status, err = embed(capsys, corpus, "-o", out, "--api", "tei", "--url", server.url, "--resume")
    assert status == 0
    assert "already complete" in err
    assert "nothing to do" in err
    assert server.requests == requests


def test_kill_9_while_requests_are_in_flight_then_resume_is_byte_identical(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = lines(20_000)
    corpus = write_txt(tmp_path / "corpus.txt", texts)
    common = ["--api", "tei", "--url", server.url, "--batch-size", "16", "--concurrency", "4"]
    common += ["--block-size", "500", "--commit-interval", "0", "--quiet"]
    server.hold_after = 6_000  # then every request hangs: the run cannot finish by itself
    process = spawn([corpus, "-o", "out.npy", *common], cwd=tmp_path)
    try:
        before = wait_for_state(
            tmp_path / "out.npy.state.json", lambda s: s["committed"] >= 4_000, process
        )
    finally:
        kill(process)
    assert process.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "out.npy.state.json").read_bytes())
    assert state["committed"] >= before["committed"]
    assert state["committed"] < 20_000
    assert not state["complete"]
    assert not (tmp_path / "out.npy").exists()
    assert (tmp_path / "out.npy.partial").exists()

    server.resume()
    status, err = embed(capsys, corpus, "-o", tmp_path / "out.npy", *common[:-1])
    assert status == 1
    assert "pass --resume to continue it" in err

    status, err = embed(capsys, corpus, "-o", tmp_path / "out.npy", *common[:-1], "--resume")
    assert status == 0, err
    assert f"from record {state['committed']:,}" in err
    status, err = embed(capsys, corpus, "-o", tmp_path / "full.npy", *common)
    assert status == 0, err
    assert (tmp_path / "out.npy").read_bytes() == (tmp_path / "full.npy").read_bytes()
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(expected(texts))
    assert not (tmp_path / "out.npy.partial").exists()


def test_killed_again_and_again_at_arbitrary_points_still_ends_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts: list[str | None] = list(lines(6_000))
    for i in (5, 1_234, 4_999):
        texts[i] = None  # bad records: --on-bad skip writes zero rows and a mask
    (tmp_path / "c.txt").write_text("".join((t or "") + "\n" for t in texts))
    args = ["c.txt", "-o", "out.npy", "--on-bad", "skip", "--block-size", "200"]
    args += ["--batch-size", "16", "--concurrency", "2", "--commit-interval", "0", "--quiet"]
    state_path = tmp_path / "out.npy.state.json"
    with HashServer.running(dim=DIM, delay=0.004) as server:
        args += ["--api", "tei", "--url", server.url]
        for process in killed_at([*args, "--resume"], state_path, (400, 2_200, 4_000), tmp_path):
            assert process.returncode == -signal.SIGKILL
        in_tmp = [tmp_path / a if a in ("c.txt", "out.npy") else a for a in args]
        status, err = embed(capsys, *in_tmp, "--resume")
    assert status == 0, err
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(expected(texts))
    mask = np.array([t is not None for t in texts])
    assert (tmp_path / "out.mask.npy").read_bytes() == npy_bytes(mask)


# --------------------------------------------------------------------------- bad records


def test_bad_records_fail_the_run_by_default_and_nothing_is_written(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"id": 2}\n{"text": 3}\n\n{"text": "ok"}\n')
    status, err = embed(
        capsys, path, "-o", tmp_path / "out.npy", "--api", "tei", "--url", server.url
    )
    assert status == 1
    assert "3 bad records" in err
    assert "record 1 (line 2): no field 'text'" in err
    assert "record 2 (line 3): field 'text' is a number, not a string" in err
    assert "record 3 (line 4): empty line" in err
    assert "--on-bad skip" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]
    assert server.requests == 0


def test_skip_writes_zero_rows_and_a_mask(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"alpha\n\nbeta\n\xff\n" + b"gamma\n" * 3)
    out = tmp_path / "out.npy"
    status, err = embed(
        capsys, path, "-o", out, "--api", "tei", "--url", server.url, "--on-bad", "skip"
    )
    assert status == 0, err
    texts = ["alpha", None, "beta", None, "gamma", "gamma", "gamma"]
    assert out.read_bytes() == npy_bytes(expected(texts))
    assert np.load(tmp_path / "out.mask.npy").tolist() == [t is not None for t in texts]
    assert "2 bad records written as zero rows" in err


def test_a_record_the_server_refuses_fails_then_resumes_with_skip(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [f"text {i}" for i in range(3_000)]
    server.refuse = {"text 2345"}
    corpus = write_txt(tmp_path / "c.txt", texts)
    out = tmp_path / "out.npy"
    args = [corpus, "-o", out, "--api", "tei", "--url", server.url, "--block-size", "500"]
    status, err = embed(capsys, *args, "--commit-interval", "0")
    assert status == 1
    assert "record 2345 (line 2346): refused by the server: refused input: text 2345" in err
    state = json.loads((tmp_path / "out.npy.state.json").read_bytes())
    assert state["committed"] == 2_000  # every block before the refused one is saved
    status, err = embed(capsys, *args, "--resume", "--on-bad", "skip")
    assert status == 0, err
    assert "record 2345 (line 2346): refused by the server" in err
    with_gap: list[str | None] = list(texts)
    with_gap[2345] = None
    assert out.read_bytes() == npy_bytes(expected(with_gap))
    mask = np.load(tmp_path / "out.mask.npy")
    assert mask.sum() == 2_999
    assert not mask[2345]


# ------------------------------------------------------------------------ inputs, outputs


def test_stdin_is_spooled_and_embedded(server: HashServer, tmp_path: Path) -> None:
    texts = lines(3_000)
    process = spawn(
        ["-", "-o", "out.npy", "--api", "tei", "--url", server.url],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = process.communicate("".join(t + "\n" for t in texts).encode(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert (tmp_path / "out.npy").read_bytes() == npy_bytes(expected(list(texts)))
    assert b"stdin: 3,000 records" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy", "out.npy.state.json"]


def test_csv_jsonl_and_parquet_columns(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["first, with a comma", 'a "quoted"\nnewline', "third"]
    url = ["--api", "tei", "--url", server.url]
    (tmp_path / "c.csv").write_text(
        'id,body\n1,"first, with a comma"\n2,"a ""quoted""\nnewline"\n3,third\n'
    )
    assert (
        embed(capsys, tmp_path / "c.csv", "-o", tmp_path / "csv.npy", "--column", "body", *url)[0]
        == 0
    )
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    assert (
        embed(capsys, tmp_path / "c.jsonl", "-o", tmp_path / "jsonl.npy", "--field", "body", *url)[
            0
        ]
        == 0
    )
    want = npy_bytes(expected(list(texts)))
    assert (tmp_path / "csv.npy").read_bytes() == want
    assert (tmp_path / "jsonl.npy").read_bytes() == want
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet")
    status, err = embed(
        capsys, tmp_path / "c.parquet", "-o", tmp_path / "pq.npy", "--column", "body", *url
    )
    assert status == 0, err
    assert (tmp_path / "pq.npy").read_bytes() == want


def test_an_output_from_another_input_or_without_state_is_not_overwritten(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_txt(tmp_path / "c.txt", ["one", "two"])
    out = tmp_path / "out.npy"
    url = ["--api", "tei", "--url", server.url]
    assert embed(capsys, corpus, "-o", out, *url)[0] == 0
    write_txt(corpus, ["one", "two", "three"])
    status, err = embed(capsys, corpus, "-o", out, *url, "--resume")
    assert status == 1
    assert "made with a different input" in err
    assert np.load(out).shape == (2, DIM)
    status, err = embed(capsys, corpus, "-o", out, *url, "--force")
    assert status == 0, err
    assert out.read_bytes() == npy_bytes(expected(["one", "two", "three"]))

    other = tmp_path / "other.npy"
    np.save(other, np.ones(3))
    status, err = embed(capsys, corpus, "-o", other, *url)
    assert status == 1
    assert "pass --force to replace it" in err
    assert np.load(other).tolist() == [1.0, 1.0, 1.0]


def test_progress_lines_when_stderr_is_not_a_terminal(
    server: HashServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = write_txt(tmp_path / "c.txt", lines(3_000))
    status, err = embed(
        capsys,
        corpus,
        "-o",
        tmp_path / "o.npy",
        "--api",
        "tei",
        "--url",
        server.url,
        "--block-size",
        "1000",
        "--progress-interval",
        "0",
    )
    assert status == 0
    assert "embedkit: 1,000/3,000 (33.3%) · " in err
    assert "texts/s · ETA" in err
    assert "\r" not in err


def test_the_token_is_never_printed(
    server: HashServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_supersecretvalue")
    corpus = write_txt(tmp_path / "c.txt", ["one"])
    status, err = embed(
        capsys, corpus, "-o", tmp_path / "a.npy", "--api", "tei", "--url", server.url, "-v"
    )
    assert status == 0
    # a 404 (an HF URL that is not there) fails the probe, before any file is written
    status, err2 = embed(
        capsys, corpus, "-o", tmp_path / "b.npy", "--api", "hf", "--url", server.url + "/nope"
    )
    assert status == 1
    assert "404" in err2
    assert not (tmp_path / "b.npy.partial").exists()
    assert "supersecret" not in err + err2 + capsys.readouterr().out


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_txt(tmp_path / "c.txt", ["one"])
    status, err = embed(capsys, corpus, "-o", tmp_path / "o.npy", "--url", "http://x")
    assert status == 2
    assert "--url is for" in err
    assert embed(capsys, corpus, "-o", tmp_path / "o.npy", "--batch-size", "0")[0] == 2
    status, err = embed(capsys, tmp_path / "c.dat", "-o", tmp_path / "o.npy")
    assert status == 1
    assert "cannot tell the format" in err
    with pytest.raises(SystemExit) as exc:
        main(["embed", str(corpus), "--field", "a", "--column", "b", "-o", "x.npy"])
    assert exc.value.code == 2


def test_serve_hands_its_arguments_to_embedkit_serve(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("starlette")
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    assert "embedkit serve" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- docs

GUIDE = ROOT / "docs" / "guides" / "bulk.md"


def guide_blocks(language: str) -> list[str]:
    parts = GUIDE.read_text(encoding="utf-8").split("```")
    return [part[len(language) + 1 :] for part in parts[1::2] if part.startswith(language + "\n")]


def test_the_guide_commands_parse() -> None:
    from embedkit._cli import build_parser

    commands = []
    for block in guide_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if "embedkit embed" in line:
                commands.append(line.split("embedkit", 1)[1].split("#")[0].split())
    assert len(commands) >= 6
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert args.command == "embed"


def test_the_guide_python_examples_run(
    server: HashServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_txt(tmp_path / "corpus.txt", ["first line", "second line", "third line"])
    np.save(tmp_path / "vectors.npy", np.zeros((3, DIM), np.float32))
    blocks = guide_blocks("python")
    assert len(blocks) >= 4
    for block in blocks:
        exec(compile(block.replace("http://127.0.0.1:8080", server.url), str(GUIDE), "exec"), {})
    assert (tmp_path / "vectors.npy").read_bytes() == npy_bytes(
        expected(["first line", "second line", "third line"])
    )
