"""cosine_similarity and top_k, checked against brute-force numpy on random data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedkit


def brute_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64 = np.atleast_2d(a).astype(np.float64)
    b64 = np.atleast_2d(b).astype(np.float64)
    out = np.zeros((a64.shape[0], b64.shape[0]))
    for i, x in enumerate(a64):
        for j, y in enumerate(b64):
            nx, ny = np.linalg.norm(x), np.linalg.norm(y)
            out[i, j] = 0.0 if nx == 0 or ny == 0 else float(x @ y) / (nx * ny)
    return out


def brute_top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = brute_cosine(queries, corpus)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ------------------------------------------------------------------------ cosine_similarity


def test_cosine_matrix_matches_brute_force(rng: np.random.Generator) -> None:
    a = rng.standard_normal((7, 16)).astype(np.float32)
    b = rng.standard_normal((5, 16)).astype(np.float32)
    out = embedkit.cosine_similarity(a, b)
    assert out.shape == (7, 5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, brute_cosine(a, b), atol=1e-5)


def test_cosine_of_two_vectors_is_a_float(rng: np.random.Generator) -> None:
    a, b = rng.standard_normal((2, 8))
    out = embedkit.cosine_similarity(a, b)
    assert isinstance(out, float)
    assert out == pytest.approx(brute_cosine(a, b)[0, 0], abs=1e-5)


def test_cosine_known_values() -> None:
    assert embedkit.cosine_similarity([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert embedkit.cosine_similarity([1.0, 1.0], [2.0, 2.0]) == pytest.approx(1.0)
    assert embedkit.cosine_similarity([1.0, 1.0], [-5.0, -5.0]) == pytest.approx(-1.0)


def test_cosine_vector_against_matrix_and_back(rng: np.random.Generator) -> None:
    v = rng.standard_normal(6)
    m = rng.standard_normal((4, 6))
    row = embedkit.cosine_similarity(v, m)
    col = embedkit.cosine_similarity(m, v)
    assert row.shape == (4,)
    assert col.shape == (4,)
    np.testing.assert_allclose(row, brute_cosine(v, m)[0], atol=1e-5)
    np.testing.assert_allclose(col, row, atol=1e-6)


def test_cosine_zero_vectors_give_zero_not_nan(rng: np.random.Generator) -> None:
    a = np.vstack([np.zeros(4), rng.standard_normal(4)])
    b = np.vstack([rng.standard_normal(4), np.zeros(4)])
    out = embedkit.cosine_similarity(a, b)
    assert np.isfinite(out).all()
    assert out[0, 0] == 0.0
    assert out[0, 1] == 0.0
    assert out[1, 1] == 0.0
    assert embedkit.cosine_similarity(np.zeros(3), np.zeros(3)) == 0.0


def test_cosine_does_not_modify_inputs(rng: np.random.Generator) -> None:
    a = rng.standard_normal((3, 4)).astype(np.float32)
    before = a.copy()
    embedkit.cosine_similarity(a, a)
    np.testing.assert_array_equal(a, before)


def test_cosine_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        embedkit.cosine_similarity(np.ones((2, 3)), np.ones((2, 4)))


def test_cosine_refuses_3d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        embedkit.cosine_similarity(np.ones((2, 3, 4)), np.ones((2, 4)))


# ------------------------------------------------------------------------------- top_k


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50, 64, 65_536])
def test_top_k_matches_brute_force_across_chunk_sizes(
    rng: np.random.Generator, chunk_size: int
) -> None:
    queries = rng.standard_normal((6, 12)).astype(np.float32)
    corpus = rng.standard_normal((50, 12)).astype(np.float32)
    indices, scores = embedkit.top_k(queries, corpus, 5, chunk_size=chunk_size)
    want_idx, want_scores = brute_top_k(queries, corpus, 5)
    assert indices.shape == (6, 5)
    assert scores.shape == (6, 5)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(indices, want_idx)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_top_k_best_match_on_a_chunk_boundary(rng: np.random.Generator) -> None:
    corpus = rng.standard_normal((40, 8)).astype(np.float32)
    query = corpus[[9, 10, 19, 20, 39]] * 3.0  # last / first rows of chunks of 10
    indices, scores = embedkit.top_k(query, corpus, 1, chunk_size=10)
    assert indices[:, 0].tolist() == [9, 10, 19, 20, 39]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_top_k_scores_are_sorted_best_first(rng: np.random.Generator) -> None:
    queries = rng.standard_normal((4, 10))
    corpus = rng.standard_normal((200, 10))
    _, scores = embedkit.top_k(queries, corpus, 20, chunk_size=33)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_top_k_with_k_larger_than_the_corpus(rng: np.random.Generator) -> None:
    queries = rng.standard_normal((3, 5))
    corpus = rng.standard_normal((4, 5))
    indices, scores = embedkit.top_k(queries, corpus, 10, chunk_size=3)
    assert indices.shape == (3, 4)
    assert scores.shape == (3, 4)
    for row in indices:
        assert sorted(row.tolist()) == [0, 1, 2, 3]
    want_idx, want_scores = brute_top_k(queries, corpus, 4)
    np.testing.assert_array_equal(indices, want_idx)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_top_k_single_query_vector(rng: np.random.Generator) -> None:
    corpus = rng.standard_normal((30, 6))
    indices, scores = embedkit.top_k(corpus[17], corpus, 3)
    assert indices.shape == (1, 3)
    assert indices[0, 0] == 17
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_top_k_zero_vectors_score_zero(rng: np.random.Generator) -> None:
    corpus = np.vstack([np.zeros(4), rng.standard_normal((3, 4)), np.zeros(4)])
    query = -corpus[1]  # similarity -1 with row 1; the zero rows score 0 and beat it
    indices, scores = embedkit.top_k(query, corpus, 5)
    assert np.isfinite(scores).all()
    assert indices[0, -1] == 1
    assert scores[0, -1] == pytest.approx(-1.0, abs=1e-5)
    zero_positions = [i for i, idx in enumerate(indices[0]) if idx in (0, 4)]
    assert all(scores[0, i] == 0.0 for i in zero_positions)
    assert len(zero_positions) == 2
    _, zero_query_scores = embedkit.top_k(np.zeros(4), corpus, 2)
    np.testing.assert_array_equal(zero_query_scores, [[0.0, 0.0]])


def test_top_k_over_a_memory_mapped_corpus(rng: np.random.Generator, tmp_path: Path) -> None:
    corpus = rng.standard_normal((100, 8)).astype(np.float32)
    path = tmp_path / "corpus.npy"
    np.save(path, corpus)
    mapped = np.load(path, mmap_mode="r")
    queries = rng.standard_normal((2, 8)).astype(np.float32)
    got = embedkit.top_k(queries, mapped, 4, chunk_size=16)
    want = embedkit.top_k(queries, corpus, 4)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1])


def test_top_k_empty_corpus() -> None:
    indices, scores = embedkit.top_k(np.ones((2, 3)), np.empty((0, 3)), 5)
    assert indices.shape == (2, 0)
    assert scores.shape == (2, 0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 2, "chunk_size": 0}, "chunk_size"),
    ],
)
def test_top_k_argument_errors(kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        embedkit.top_k(np.ones((1, 3)), np.ones((4, 3)), **kwargs)


def test_top_k_shape_errors() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        embedkit.top_k(np.ones((1, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="corpus must be a 2-D"):
        embedkit.top_k(np.ones((1, 3)), np.ones(3))
