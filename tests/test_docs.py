"""The docs cannot rot: their examples run, print what they say, and their lists are whole.

How examples run:

* Every ```python block of the pages in `RUNNABLE` runs, in order, in one namespace per page
  (like a doctest session), unless the line before its fence is `<!-- docs-test: skip -->`.
* A ```text block right after a python block is that block's expected output, compared with what
  it printed; `...` in it matches anything (as doctest's ELLIPSIS).
* Functions named `test_*` that a block defines are then called (awaited if async): that is how
  the testing guide's examples run as the tests they are.
* Embedders built without a `transport=` talk to `FakeServer`, which answers like the HF
  Inference API, TEI (with `/info`) and OpenAI-compatible servers, wherever the URL points:
  the examples keep their real URLs. Its vectors are hashed bags of words, so texts that share
  words are similar and a search example finds what a real model would.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import dataclasses
import inspect
import io
import json
import re
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import embedkit
from embedkit._backends import http as _http

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

RUNNABLE = [
    "index.md",
    "quickstart.md",
    "guides/batching.md",
    "guides/testing.md",
    "guides/replicas.md",
    "guides/frameworks.md",
    "api.md",
    "exceptions.md",
    "architecture.md",
]
SKIP_MARK = "<!-- docs-test: skip -->"
#: Examples may use these optional packages (the serve and test extras); CI has them all.
OPTIONAL_IMPORTS = re.compile(r"^(?:from|import) (starlette|respx|pytest)\b", re.MULTILINE)

# ----------------------------------------------------------------------------- fake server

DIMENSIONS = {
    "thenlper/gte-large": 1024,
    "BAAI/bge-small-en-v1.5": 384,
    "sentence-transformers/all-MiniLM-L6-v2": 384,
    "text-embedding-3-small": 1536,
}
TEI_INFO: dict[str, Any] = {
    "model_id": "BAAI/bge-small-en-v1.5",
    "max_client_batch_size": 32,
    "max_concurrent_requests": 512,
    "max_input_length": 512,
    "max_batch_tokens": 16384,
    "auto_truncate": False,
}
MAX_TOKENS = 512
WORD = re.compile(r"[a-z0-9]+")


def bag_of_words(text: str, dim: int) -> list[float]:
    """A unit vector from hashed words: sharing words means being similar."""
    vector = np.zeros(dim, dtype=np.float64)
    for word in WORD.findall(text.lower()) or [text]:
        vector[zlib.crc32(word.encode()) % dim] += 1.0
    vector /= np.linalg.norm(vector)
    return [float(x) for x in vector.astype(np.float32)]


class FakeServer:
    """One handler for every protocol, picked by the request path."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "GET" and path.endswith("/info"):
            return httpx.Response(200, json=TEI_INFO)
        body = json.loads(request.content)
        if path.endswith("/embeddings"):
            return self.openai(body)
        if path.endswith("/embed"):
            return self.tei(body)
        return self.hf(path, body)

    @staticmethod
    def too_long(texts: list[str]) -> str | None:
        for text in texts:
            tokens = len(WORD.findall(text))
            if tokens > MAX_TOKENS:
                return (
                    "Input validation error: `inputs` must have less than "
                    f"{MAX_TOKENS} tokens. Given: {tokens}"
                )
        return None

    def tei(self, body: dict[str, Any]) -> httpx.Response:
        texts = body["inputs"]
        if len(texts) > TEI_INFO["max_client_batch_size"]:
            message = f"batch size {len(texts)} > maximum allowed batch size 32"
            return httpx.Response(422, json={"error": message, "error_type": "Validation"})
        too_long = self.too_long(texts)
        if too_long is not None:
            return httpx.Response(422, json={"error": too_long, "error_type": "Validation"})
        dim = body.get("dimensions") or DIMENSIONS[str(TEI_INFO["model_id"])]
        return httpx.Response(200, json=[bag_of_words(t, dim) for t in texts])

    def hf(self, path: str, body: dict[str, Any]) -> httpx.Response:
        match = re.search(r"/models/(.+?)(?:/pipeline/feature-extraction)?$", path)
        model = match.group(1) if match else ""
        dim = body.get("dimensions") or DIMENSIONS.get(model, 384)
        inputs = body["inputs"]
        if isinstance(inputs, str):
            return httpx.Response(200, json=bag_of_words(inputs, dim))
        message = self.too_long(inputs)
        if message is not None:
            return httpx.Response(400, json={"error": message})
        return httpx.Response(200, json=[bag_of_words(t, dim) for t in inputs])

    def openai(self, body: dict[str, Any]) -> httpx.Response:
        model = body["model"]
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = body.get("dimensions") or DIMENSIONS.get(model, 384)
        data = []
        for i, text in enumerate(inputs):
            row = bag_of_words(text, dim)
            embedding: Any = row
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(np.asarray(row, "<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return httpx.Response(200, json={"object": "list", "data": data[::-1], "model": model})


# --------------------------------------------------------------------------- the blocks


@dataclasses.dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    code: str
    skip: bool
    output: str | None = None

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def read_blocks(page: str, path: Path | None = None) -> list[Block]:
    """The python blocks of a page, each with the text block that follows it, if any."""
    lines = (path or DOCS / page).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    previous_python: Block | None = None
    skip_next = False
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped == SKIP_MARK:
            skip_next = True
            i += 1
            continue
        if not stripped.startswith("```"):
            if stripped:
                previous_python = None
                skip_next = False
            i += 1
            continue
        language = stripped[3:].strip().split(" ")[0]
        indent = len(lines[i]) - len(lines[i].lstrip())
        start = i
        body: list[str] = []
        i += 1
        while lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        i += 1  # the closing fence
        code = "\n".join(body) + "\n"
        if language == "python":
            block = Block(page, start + 1, code, skip_next)
            blocks.append(block)
            previous_python = block
        elif language == "text" and previous_python is not None:
            previous_python.output = code
            previous_python = None
        else:
            previous_python = None
        skip_next = False
    return blocks


def matches(expected: str, actual: str) -> bool:
    parts = [re.escape(part) for part in expected.strip().split("...")]
    return re.fullmatch(".*?".join(parts), actual.strip(), re.DOTALL) is not None


def run_test_functions(namespace: dict[str, Any], already: set[str]) -> list[str]:
    ran = []
    for name, value in list(namespace.items()):
        if name.startswith("test_") and inspect.isfunction(value) and name not in already:
            already.add(name)
            if inspect.iscoroutinefunction(value):
                asyncio.run(value())
            else:
                value()
            ran.append(name)
    return ran


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """Embedders built without a transport talk to the fake server."""
    server = FakeServer()
    build_client = _http.build_client

    def fake_route(url: httpx.URL, *, transport: Any, **kwargs: Any) -> Any:
        return build_client(url, transport=transport or httpx.MockTransport(server), **kwargs)

    monkeypatch.setattr(_http, "build_client", fake_route)
    return server


@pytest.mark.parametrize("page", RUNNABLE)
def test_examples_run(
    page: str, fake_server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": f"docs.{page}"}
    tests_run: set[str] = set()
    for block in read_blocks(page):
        if block.skip:
            continue
        for extra in OPTIONAL_IMPORTS.findall(block.code):
            pytest.importorskip(extra, reason=f"{block.name} needs {extra}")
        code = compile(block.code, block.name, "exec")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
            run_test_functions(namespace, tests_run)
        if block.output is not None:
            assert matches(block.output, out.getvalue()), (
                f"{block.name} printed:\n{out.getvalue()}\nbut the page says:\n{block.output}"
            )


def test_every_runnable_page_has_python_examples_that_run() -> None:
    counts = {page: len([b for b in read_blocks(page) if not b.skip]) for page in RUNNABLE}
    for page in ("quickstart.md", "guides/batching.md", "guides/testing.md"):
        assert counts[page] >= 4, f"{page} has only {counts[page]} runnable examples"


def test_the_testing_guide_defines_tests_that_ran(fake_server: FakeServer) -> None:
    namespace: dict[str, Any] = {"__name__": "docs.testing"}
    ran: set[str] = set()
    for block in read_blocks("guides/testing.md"):
        exec(compile(block.code, block.name, "exec"), namespace)
        run_test_functions(namespace, ran)
    assert len(ran) >= 8
    assert fake_server.requests == []  # every testing example brings its own transport


def test_the_output_matcher() -> None:
    assert matches("500 texts in ... requests", "500 texts in 17 requests\n")
    assert not matches("500 texts in ... requests", "499 texts in 17 requests")
    assert matches("a\n...\nc", "a\nb\nb\nc")
    assert not matches("(2, 1024)", "(2, 1024) extra")


def test_the_block_reader_pairs_outputs_and_honours_skips(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n"
        f"{SKIP_MARK}\n```python\nraise SystemExit\n```\n\nprose\n\n```text\nnot an output\n```\n",
        encoding="utf-8",
    )
    blocks = read_blocks("page.md", page)
    assert [(b.code, b.skip, b.output) for b in blocks] == [
        ("print(1)\n", False, "1\n"),
        ("raise SystemExit\n", True, None),
    ]


# ------------------------------------------------------------------------ whole lists


def test_the_api_reference_lists_every_parameter() -> None:
    reference = (DOCS / "api.md").read_text(encoding="utf-8")
    for cls in (embedkit.AsyncEmbedder, embedkit.RetryPolicy, embedkit.BackendInfo):
        for name, parameter in inspect.signature(cls).parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                continue  # AsyncEmbedder's **deprecated: the flat keywords, listed by name
            assert re.search(rf"`{name}`|\b{name}[:=]", reference), f"{cls.__name__}({name}=)"
    for field in dataclasses.fields(embedkit.SchedulerStats):
        assert f"`{field.name}`" in reference, f"SchedulerStats.{field.name}"
    for embedder in (embedkit.AsyncEmbedder, embedkit.Embedder):
        for name, member in vars(embedder).items():
            if not name.startswith("_") and (callable(member) or isinstance(member, property)):
                assert name in reference, f"{embedder.__name__}.{name}"


def drawn_parents(page: str) -> dict[str, str | None]:
    """Each exception in a drawn tree, with the one it hangs from (by indentation)."""
    tree = page.split("## The tree", 1)[1].split("\n## ", 1)[0]
    entries = []
    for line in tree.splitlines():
        match = re.search(r"\b([A-Z][A-Za-z]*Error)\b", line)
        if match:
            entries.append((match.group(1), match.start(1)))
    return {
        name: next((other for other, col in reversed(entries[:i]) if col < column), None)
        for i, (name, column) in enumerate(entries)
    }


def test_the_exception_tree_agrees_with_the_code() -> None:
    drawn = drawn_parents((DOCS / "exceptions.md").read_text(encoding="utf-8"))
    exported = {
        name: value
        for name, value in vars(embedkit).items()
        if isinstance(value, type) and issubclass(value, embedkit.EmbedkitError)
    }
    assert set(drawn) == set(exported)
    for name, cls in exported.items():
        expected = None if cls is embedkit.EmbedkitError else cls.__mro__[1].__name__
        assert drawn[name] == expected, name


def test_the_architecture_page_names_every_module() -> None:
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "embedkit"
    for path in sorted(package.iterdir()):
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            name = path.name + ("/" if path.is_dir() else "")
            assert f"`{name}`" in page or f"{name}" in page, (
                f"architecture.md does not mention {name}"
            )


def test_the_scheduler_knows_nothing_of_http() -> None:
    """architecture.md says so: keep it true, for every module of the core."""
    for path in sorted((ROOT / "embedkit" / "_core").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        } | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        bad = ("httpx", "_backends", "_transports", "_protocols", "_http")
        assert not {m for m in imported if m.startswith(bad)}, path.name


def test_the_nav_holds_every_page() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(entries: Any) -> list[str]:
        found: list[str] = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found.extend(pages(value) if isinstance(value, list) else [value])
        return found

    in_nav = pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(in_nav) == on_disk
    assert config["theme"]["name"] == "material"
