"""The package's layout rules (docs/architecture.md, CONTRIBUTING.md), held by tests.

* A module imports a name from a sibling package only through that package's `__init__`
  (`from .._core import Scheduler`, never `from .._core.scheduler import Scheduler`), so a
  package can rearrange its inside without touching its neighbours.
* No module is much over 500 lines: one concept a module.
* Nothing reaches into an embedder's private state from outside its class.
* The flat keywords that `Limits` and `Connection` replaced still work, and warn.
"""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import httpx
import pytest

import embedkit
from embedkit import Connection, Limits
from tests.fakes import FakeBackend

PACKAGE = Path(embedkit.__file__).parent
MAX_LINES = 520  # "about 500": a docstring paragraph of slack, not a second concept


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _cross_package_reaches(path: Path) -> list[str]:
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0] if len(rel.parts) > 1 else None
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        here = list(rel.parts[:-1])
        base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        target = base + (node.module.split(".") if node.module else [])
        if len(target) > 1 and target[0] != own and (PACKAGE / target[0]).is_dir():
            found.append(f"{rel}:{node.lineno} from {'.' * node.level}{node.module}")
    return found


def test_sibling_packages_are_reached_only_through_their_init() -> None:
    reaches = [r for path in _modules() for r in _cross_package_reaches(path)]
    assert reaches == []


def test_the_reach_check_sees_a_reach() -> None:
    """The rule's check finds what it is meant to find (so the test above can fail)."""
    fake = PACKAGE / "_bulk" / "reach_probe_for_test.py"
    try:
        fake.write_text("from .._core.scheduler import Scheduler\n", encoding="utf-8")
        assert _cross_package_reaches(fake) == [
            "_bulk/reach_probe_for_test.py:1 from .._core.scheduler"
        ]
    finally:
        fake.unlink()


def test_no_module_holds_two_concepts_by_size() -> None:
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
        for p in _modules()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_nothing_reaches_into_an_embedders_private_state() -> None:
    pattern = re.compile(r"\._quota\s*=|\._open_scheduler|\._require_portal")
    hits = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in _modules()
        if p.name != "_client.py"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


# ------------------------------------------------------------ the deprecated flat keywords


def test_flat_limits_and_connection_keywords_still_work_and_warn() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=[[1.0]]))
    with pytest.warns(DeprecationWarning, match=r"max_concurrency=.*limits=embedkit\.Limits"):
        old = embedkit.AsyncEmbedder("m", max_concurrency=3, max_batch_size=5)
    assert old.limits == Limits(max_concurrency=3, max_batch_size=5)
    assert (old.max_concurrency, old.max_batch_size) == (3, 5)
    with pytest.warns(DeprecationWarning, match=r"transport=.*connection=embedkit\.Connection"):
        old = embedkit.AsyncEmbedder("m", transport=transport, timeout=7.0)
    assert old.connection == Connection(transport=transport, timeout=7.0)


def test_the_warning_points_at_the_callers_line() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embedkit.Embedder("m", dedup=False)  # through Embedder's pass-through
    assert [w.category for w in caught] == [DeprecationWarning]
    assert caught[0].filename == __file__


def test_a_flat_keyword_and_its_value_object_together_are_refused() -> None:
    with pytest.raises(TypeError, match="max_concurrency= and limits= were both given"):
        embedkit.AsyncEmbedder("m", limits=Limits(), max_concurrency=2)  # type: ignore[call-arg]


def test_an_unknown_keyword_is_still_a_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument: max_concurency"):
        embedkit.AsyncEmbedder("m", max_concurency=2)  # type: ignore[call-arg]


@pytest.mark.asyncio
async def test_the_old_spelling_gives_the_same_embedder_as_the_new() -> None:
    backend = FakeBackend()
    with pytest.warns(DeprecationWarning, match="dedup=, max_batch_size= as flat keywords"):
        old = embedkit.AsyncEmbedder(backend=backend, max_batch_size=4, dedup=False)
    new = embedkit.AsyncEmbedder(backend=backend, limits=Limits(max_batch_size=4, dedup=False))
    for emb in (old, new):
        async with emb:
            await emb.embed_many(["a", "a", "b", "c", "d", "e"])
            assert emb.stats().max_batch_size == 4
            assert emb.stats().texts_sent == 6  # dedup off: both "a" sent
