"""What both framework classes share: lazy imports, the embedder's own loop, nothing leaked.

`embedkit.langchain` and `embedkit.llama_index` run one `AsyncEmbedder` on an event loop in a
daemon thread (`embedkit._frameworks.SharedEmbedder`). These tests check that importing
embedkit loads no framework, that an object never closed leaves no thread, warning or stuck
exit behind, and that callers on other loops (trio included) and cancelled callers are safe.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

import embedkit
from embedkit import Connection, Limits
from embedkit._frameworks import SharedEmbedder
from embedkit.langchain import EmbedkitEmbeddings
from embedkit.llama_index import EmbedkitEmbedding

ROOT = Path(__file__).resolve().parent.parent


def tei(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/info":
        return httpx.Response(404)
    texts = orjson.loads(request.content)["inputs"]
    return httpx.Response(200, json=[[float(len(t)), 1.0] for t in texts])


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with warnings as errors and dev mode on."""
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_importing_embedkit_imports_no_framework() -> None:
    out = run_python(
        """
        import json, sys
        import embedkit
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    for name in ("langchain_core", "llama_index", "pydantic", "embedkit._frameworks"):
        assert name not in loaded
        assert not any(m.startswith(name + ".") for m in loaded)


def test_importing_a_framework_module_imports_only_that_framework() -> None:
    out = run_python(
        """
        import json, sys
        import embedkit.langchain
        print(json.dumps(sorted(sys.modules)))
        """
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "langchain_core" in loaded
    assert not any(m == "llama_index" or m.startswith("llama_index.") for m in loaded)


def test_never_closed_objects_exit_cleanly_without_warnings() -> None:
    """Used sync and async, from several loops, never closed: the interpreter still exits at
    once, with no ResourceWarning (dev mode, warnings as errors) and no message at all."""
    out = run_python(
        """
        import asyncio, embedkit, httpx, logging, orjson, threading
        from embedkit.langchain import EmbedkitEmbeddings
        from embedkit.llama_index import EmbedkitEmbedding

        def tei(request):
            if request.url.path == "/info":
                return httpx.Response(404)
            texts = orjson.loads(request.content)["inputs"]
            return httpx.Response(200, json=[[float(len(t)), 1.0] for t in texts])

        logging.getLogger("embedkit").setLevel(logging.ERROR)  # "/info answered 404"
        connection = embedkit.Connection(transport=httpx.MockTransport(tei))
        options = dict(api="tei", url="http://tei.test", connection=connection)
        lc = EmbedkitEmbeddings(**options)
        li = EmbedkitEmbedding(**options)
        assert lc.embed_query("abc") == [3.0, 1.0]
        assert asyncio.run(lc.aembed_documents(["a", "bb"])) == [[1.0, 1.0], [2.0, 1.0]]
        assert li.get_text_embedding_batch(["xyz"]) == [[3.0, 1.0]]
        assert asyncio.run(li.aget_query_embedding("four")) == [4.0, 1.0]
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("embedkit-"))
        print(",".join(names))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.strip() == "embedkit-EmbedkitEmbedding,embedkit-EmbedkitEmbeddings"


def test_a_dropped_object_stops_its_thread() -> None:
    emb = EmbedkitEmbeddings(
        connection=Connection(transport=httpx.MockTransport(tei)), api="tei", url="http://tei.test"
    )
    assert emb.embed_query("abc") == [3.0, 1.0]
    thread = emb._shared._thread
    assert thread is not None
    assert thread.is_alive()
    del emb
    gc.collect()
    assert not thread.is_alive()  # the finalizer closed the embedder and joined its thread


def test_no_thread_until_first_use() -> None:
    emb = EmbedkitEmbedding(
        connection=Connection(transport=httpx.MockTransport(tei)), api="tei", url="http://tei.test"
    )
    assert emb._shared._thread is None
    assert not emb._shared.started
    emb.close()
    with pytest.raises(embedkit.ClientClosedError):
        emb.get_query_embedding("closed before it was ever used")


def test_a_trio_caller_is_served_too() -> None:
    shared = SharedEmbedder(
        embedkit.AsyncEmbedder(
            connection=Connection(transport=httpx.MockTransport(tei)),
            api="tei",
            url="http://tei.test",
        )
    )

    async def main() -> list[float]:
        rows = []
        async with anyio.create_task_group() as tg:
            for text in ("a", "bb", "ccc"):

                async def one(t: str = text) -> None:
                    rows.append(float((await shared.aembed(t))[0]))

                tg.start_soon(one)
        return sorted(rows)

    try:
        assert anyio.run(main, backend="trio") == [1.0, 2.0, 3.0]
    finally:
        shared.close()


def test_a_cancelled_caller_leaves_the_embedder_working() -> None:
    release = threading.Event()

    def slow_once(request: httpx.Request) -> httpx.Response:
        if b"slow" in request.content:
            release.wait(10)
        return tei(request)

    emb = EmbedkitEmbeddings(
        connection=Connection(transport=httpx.MockTransport(slow_once)),
        api="tei",
        url="http://tei.test",
    )

    async def main() -> list[float]:
        task = asyncio.ensure_future(emb.aembed_query("slow"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        return await emb.aembed_query("fast")

    try:
        assert asyncio.run(main()) == [4.0, 1.0]
    finally:
        emb.close()


def test_a_blocking_call_from_the_embedders_own_loop_is_refused() -> None:
    emb = EmbedkitEmbeddings(
        connection=Connection(transport=httpx.MockTransport(tei)), api="tei", url="http://tei.test"
    )
    shared = emb._shared

    async def inside() -> None:
        emb.embed_query("would deadlock")

    try:
        with pytest.raises(RuntimeError, match="own loop thread"):
            shared.call(inside)
    finally:
        emb.close()


def test_copies_share_the_embedder_until_the_last_one_goes() -> None:
    emb = EmbedkitEmbeddings(
        connection=Connection(transport=httpx.MockTransport(tei)), api="tei", url="http://tei.test"
    )
    shallow = emb.model_copy()
    deep = copy.deepcopy(emb)
    assert shallow._shared is emb._shared
    assert deep._shared is emb._shared
    assert deep.embed_query("abc") == [3.0, 1.0]
    thread = emb._shared._thread
    assert thread is not None
    del emb, shallow
    gc.collect()
    assert thread.is_alive()  # `deep` still uses it
    assert deep.embed_query("four") == [4.0, 1.0]
    del deep
    gc.collect()
    assert not thread.is_alive()


def test_closing_while_calls_wait_fails_them_instead_of_hanging() -> None:
    reached = threading.Event()

    async def hangs(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(404)
        reached.set()
        await anyio.sleep(60)  # a server that never answers; close() must not wait for it
        return tei(request)

    emb = EmbedkitEmbeddings(
        connection=Connection(transport=httpx.MockTransport(hangs)),
        limits=Limits(max_concurrency=1),
        api="tei",
        url="http://tei.test",
        retry=None,
    )

    async def main() -> list[BaseException | list[float]]:
        calls = [asyncio.ensure_future(emb.aembed_query(f"text {i}")) for i in range(20)]
        assert await anyio.to_thread.run_sync(reached.wait, 10)
        with anyio.fail_after(10):
            await emb.aclose()
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert len(outcomes) == 20
    # the caller's tasks were not cancelled: each gets a typed error, not CancelledError
    assert all(isinstance(o, embedkit.ClientClosedError) for o in outcomes)


def test_closing_fails_a_blocked_sync_call_with_a_typed_error() -> None:
    reached = threading.Event()

    async def hangs(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/info":
            return httpx.Response(404)
        reached.set()
        await anyio.sleep(60)
        return tei(request)

    emb = EmbedkitEmbedding(
        connection=Connection(transport=httpx.MockTransport(hangs)),
        api="tei",
        url="http://tei.test",
    )
    outcome: list[BaseException] = []

    def caller() -> None:
        try:
            emb.get_query_embedding("waits")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller)
    thread.start()
    assert reached.wait(10)
    emb.close()
    thread.join(10)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], embedkit.ClientClosedError)


def test_a_list_of_urls_spreads_the_work_over_replicas() -> None:
    hosts: list[str] = []

    def replica(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/info":
            hosts.append(request.url.host)
        return tei(request)

    emb = EmbedkitEmbeddings(
        connection=Connection(transport=httpx.MockTransport(replica)),
        limits=Limits(max_batch_size=2),
        api="tei",
        url=["http://gpu-0.test", "http://gpu-1.test"],
    )
    vectors = emb.embed_documents(["a", "bb", "ccc", "dddd", "eeeee", "ffffff"] * 10)
    assert [v[0] for v in vectors[:6]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert set(hosts) == {"gpu-0.test", "gpu-1.test"}
    assert "gpu-0.test" in repr(emb.model_dump())
