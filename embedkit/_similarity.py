"""Similarity math on embedding matrices: cosine similarity and chunked top-k search.

Quantised vectors work too. int8 and uint8 rows are compared as the numbers they hold
(cosine is blind to the per-vector scale of embedkit's int8 rule). Packed bit vectors
(`dtype="binary"` or `"ubinary"`) need `bits=True`: each bit becomes -1 or +1, so the
score is the cosine of those sign vectors, `1 - 2 * hamming / dim` — Hamming distance as a
similarity in [-1, 1], best first like every other score here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._quantize import unpackbits

__all__ = ["cosine_similarity", "top_k"]


def _signs(x: npt.ArrayLike, name: str) -> npt.NDArray[np.float32]:
    """Packed bits (uint8, or int8 offset by -128) as rows of -1/+1."""
    array = np.asarray(x)
    if array.dtype not in (np.uint8, np.int8):
        raise TypeError(
            f"bits=True compares packed bits: {name} must be uint8 (ubinary) or int8 "
            f"(binary), not {array.dtype}"
        )
    signs: npt.NDArray[np.float32] = unpackbits(array).astype(np.float32) * 2.0 - 1.0
    return signs


def _as_matrix(x: npt.ArrayLike, name: str, bits: bool = False) -> npt.NDArray[np.float32]:
    array = _signs(x, name) if bits else np.asarray(x, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a vector or a 2-D matrix, got shape {array.shape}")
    return array


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0  # a zero vector is similar to nothing, not NaN
    unit: npt.NDArray[np.float32] = (x / norms).astype(np.float32, copy=False)
    return unit


def cosine_similarity(a: npt.ArrayLike, b: npt.ArrayLike, *, bits: bool = False) -> Any:
    """Cosine similarity between the rows of `a` and the rows of `b`.

    Two vectors give a float; otherwise an (len(a), len(b)) float32 matrix (a vector counts
    as one row). Zero vectors give similarity 0. int8/uint8 rows are compared as numbers;
    `bits=True` reads packed bit vectors (binary/ubinary) and scores `1 - 2 * hamming / dim`.
    """
    a_vec = np.ndim(a) == 1
    b_vec = np.ndim(b) == 1
    left = _unit(_as_matrix(a, "a", bits))
    right = _unit(_as_matrix(b, "b", bits))
    if left.shape[1] != right.shape[1]:
        raise ValueError(f"dimensions differ: {left.shape[1]} and {right.shape[1]}")
    scores = left @ right.T
    if a_vec and b_vec:
        return float(scores[0, 0])
    if a_vec:
        return scores[0]
    if b_vec:
        return scores[:, 0]
    return scores


def top_k(
    queries: npt.ArrayLike,
    corpus: npt.ArrayLike,
    k: int = 10,
    *,
    chunk_size: int = 65_536,
    bits: bool = False,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """The `k` corpus rows most cosine-similar to each query.

    Returns `(indices, scores)`, each of shape (len(queries), k') with k' = min(k, len(corpus)),
    best first. The corpus is scanned in chunks of `chunk_size` rows, so memory stays
    O(len(queries) * (chunk_size + k)) however large the corpus (a memory-mapped .npy works).
    int8/uint8 matrices are scored as numbers; with `bits=True` both are packed bit vectors
    (binary/ubinary) and the score is `1 - 2 * hamming / dim` (see the module docstring).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    q = _unit(_as_matrix(queries, "queries", bits))
    corpus_array = np.asarray(corpus)
    if corpus_array.ndim != 2:
        raise ValueError(f"corpus must be a 2-D matrix, got shape {corpus_array.shape}")
    width = corpus_array.shape[1] * 8 if bits else corpus_array.shape[1]
    if width != q.shape[1]:
        raise ValueError(f"dimensions differ: {q.shape[1]} and {width}")
    n_corpus = corpus_array.shape[0]
    kk = min(k, n_corpus)
    best_scores = np.full((q.shape[0], kk), -np.inf, dtype=np.float32)
    best_index = np.zeros((q.shape[0], kk), dtype=np.intp)
    if kk == 0:
        return best_index, best_scores
    rows = np.arange(q.shape[0])[:, None]
    for start in range(0, n_corpus, chunk_size):
        part = corpus_array[start : start + chunk_size]
        chunk = _unit(_signs(part, "corpus") if bits else np.asarray(part, dtype=np.float32))
        scores = q @ chunk.T
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        chunk_index = np.broadcast_to(np.arange(start, start + chunk.shape[0]), scores.shape)
        merged_index = np.concatenate([best_index, chunk_index], axis=1)
        keep = np.argpartition(-merged_scores, kk - 1, axis=1)[:, :kk]
        best_scores = merged_scores[rows, keep]
        best_index = merged_index[rows, keep]
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return best_index[rows, order], best_scores[rows, order]
