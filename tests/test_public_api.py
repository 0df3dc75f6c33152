"""`embedkit/__init__.py` is the public face: sorted, complete, documented, nothing leaking."""

from __future__ import annotations

import inspect
import json
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import embedkit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "embedkit"

#: Subpackages and modules that are public by design (optional extras users import by name).
PUBLIC_SUBPACKAGES = {"serve", "langchain", "llama_index", "ray"}


def isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then everything else, each alphabetical."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def public_members() -> dict[str, Any]:
    return {name: getattr(embedkit, name) for name in embedkit.__all__ if name != "__version__"}


def test_all_is_sorted_without_duplicates() -> None:
    assert embedkit.__all__ == sorted(embedkit.__all__, key=isort_key)
    assert len(set(embedkit.__all__)) == len(embedkit.__all__)


def test_all_is_exactly_the_public_surface() -> None:
    public = {
        name
        for name, value in vars(embedkit).items()
        if not name.startswith("_")
        and not (isinstance(value, types.ModuleType) and name in PUBLIC_SUBPACKAGES)
    }
    assert public == set(embedkit.__all__) - {"__version__"}


def test_star_import_gives_all() -> None:
    namespace: dict[str, Any] = {}
    exec("from embedkit import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(embedkit.__all__)


def test_every_name_is_defined_by_embedkit() -> None:
    for name, value in public_members().items():
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == "embedkit", name  # shown as the public path
            assert value.__name__ == name, f"{name} is exported under another name"


def test_no_public_attribute_is_a_private_module() -> None:
    for name, value in vars(embedkit).items():
        if isinstance(value, types.ModuleType) and not name.startswith("_"):
            assert name in PUBLIC_SUBPACKAGES, (
                f"embedkit.{name} is a module in the public namespace"
            )


def test_implementation_modules_are_private() -> None:
    for module in pkgutil.iter_modules([str(PACKAGE)]):
        if module.name.startswith("__"):  # __main__
            continue
        assert module.name.startswith("_") or module.name in PUBLIC_SUBPACKAGES, module.name


def _documented(obj: Any) -> bool:
    doc = inspect.getdoc(obj)
    return bool(doc and doc.strip())


def test_every_class_and_function_has_its_own_docstring() -> None:
    for name, value in public_members().items():
        if inspect.isclass(value):
            assert (vars(value).get("__doc__") or "").strip(), f"{name} has no docstring"
        elif callable(value):
            assert _documented(value), f"{name} has no docstring"


def test_every_public_method_and_property_has_a_docstring() -> None:
    missing = []
    for name, cls in public_members().items():
        if not inspect.isclass(cls) or issubclass(cls, BaseException):
            continue
        for attr, member in vars(cls).items():
            if attr.startswith("_"):
                continue
            target = member.fget if isinstance(member, property) else member
            if isinstance(target, (staticmethod, classmethod)):
                target = target.__func__
            if inspect.isfunction(target) and not _documented(target):
                missing.append(f"{name}.{attr}")
    assert missing == []


def test_every_constant_is_described_in_the_api_reference() -> None:
    """Constants cannot carry docstrings, so the reference must say what they are."""
    reference = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for name in embedkit.__all__:
        assert name in reference, f"docs/api.md does not mention {name}"


def test_version_matches_pyproject() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert match is not None
    assert embedkit.__version__ == match.group(1)


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()


def test_public_classes_have_readable_reprs() -> None:
    assert repr(embedkit.DEFAULT_RETRY).startswith("RetryPolicy(")
    assert embedkit.RetryPolicy() == embedkit.DEFAULT_RETRY
    assert embedkit.RetryPolicy(attempts=2) != embedkit.DEFAULT_RETRY
    emb = embedkit.AsyncEmbedder("org/model")
    assert repr(emb).startswith("<AsyncEmbedder hf https://router.huggingface.co/")
    assert "state=unopened" in repr(emb)


HEAVY = ["torch", "sentence_transformers", "starlette", "uvicorn", "pyarrow", "matplotlib"]
HEAVY += ["langchain_core", "llama_index", "pydantic", "ray"]
OPTIONAL = ["embedkit._backends.local", "embedkit._cli", "embedkit.serve"]
OPTIONAL += ["embedkit.ray"]
OPTIONAL += ["embedkit.langchain", "embedkit.llama_index", "embedkit._frameworks"]


def test_import_stays_light() -> None:
    """The core never imports the local model, the server or the CLI (ARCHITECTURE.md)."""
    code = "import json, sys, embedkit; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(HEAVY)
    assert not loaded & set(OPTIONAL)


@pytest.mark.parametrize("name", embedkit.__all__)
def test_every_name_resolves(name: str) -> None:
    assert getattr(embedkit, name) is not None
