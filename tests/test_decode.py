"""Answers into checked float32 matrices: shapes, validation, pooling, base64, index order."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedkit import ResponseError
from embedkit._backends.decode import (
    _unpadded_base64,
    checked,
    from_base64_rows,
    from_json_rows,
    only_numbers,
    place_by_index,
)
from embedkit._backends.protocols import HFProtocol, Options


def b64(row: list[float]) -> str:
    return base64.b64encode(np.asarray(row, dtype="<f4").tobytes()).decode("ascii")


def assert_clean(matrix: np.ndarray, shape: tuple[int, int]) -> None:
    assert matrix.shape == shape
    assert matrix.dtype == np.float32
    assert matrix.flags["C_CONTIGUOUS"]


# ------------------------------------------------------------------------------ checked


def test_checked_converts_to_float32_c_contiguous() -> None:
    fortran = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert not fortran.flags["C_CONTIGUOUS"]
    out = checked(fortran, 2)
    assert_clean(out, (2, 3))
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))


def test_checked_makes_a_strided_float32_view_contiguous() -> None:
    view = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    out = checked(view, 3)
    assert_clean(out, (3, 2))
    np.testing.assert_array_equal(out, [[0, 2], [4, 6], [8, 10]])


def test_checked_accepts_integers() -> None:
    assert_clean(checked(np.array([[1, 2]], dtype=np.int64), 1), (1, 2))


@pytest.mark.parametrize(
    ("matrix", "n", "needle"),
    [
        (np.zeros((2, 3)), 3, "sent 3 texts"),
        (np.zeros((3,)), 3, "2-D"),
        (np.zeros((1, 2, 3)), 1, "2-D"),
        (np.zeros((2, 0)), 2, "dimension 0"),
        (np.array([[1.0, np.nan]]), 1, "NaN or infinite"),
        (np.array([[1.0, np.inf]]), 1, "NaN or infinite"),
        (np.array([[1.0, -np.inf]]), 1, "NaN or infinite"),
        (np.array([[1e39, 1.0]]), 1, "NaN or infinite"),  # overflows float32
        (np.array([["a", "b"]]), 1, "numbers"),
        (np.array([[1 + 2j, 1]]), 1, "numbers"),
    ],
)
def test_checked_rejects(matrix: np.ndarray, n: int, needle: str | None) -> None:
    with pytest.raises(ResponseError, match=needle):
        checked(matrix, n)


# ---------------------------------------------------------------------------- JSON rows


def test_one_dimensional_answer_for_one_text_becomes_a_row() -> None:
    out = from_json_rows([0.5, 1.5, 2.5], 1)
    assert_clean(out, (1, 3))
    np.testing.assert_array_equal(out[0], [0.5, 1.5, 2.5])


def test_one_dimensional_answer_for_several_texts_is_refused() -> None:
    with pytest.raises(ResponseError, match="sent 3 texts"):
        from_json_rows([0.5, 1.5, 2.5], 3)


def test_two_dimensional_answer() -> None:
    out = from_json_rows([[1, 2], [3, 4.5]], 2)
    assert_clean(out, (2, 2))
    np.testing.assert_array_equal(out, [[1, 2], [3, 4.5]])


def test_token_level_answer_without_pooling_explains_pooling() -> None:
    tokens = [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]  # one text, 3 tokens, hidden size 2
    with pytest.raises(ResponseError) as info:
        from_json_rows(tokens, 1)
    message = str(info.value)
    assert "token-level" in message
    assert "pooling='mean'" in message
    assert "pooling='cls'" in message


def test_token_level_answer_mean_pooled() -> None:
    tokens = [[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]]]
    out = from_json_rows(tokens, 2, "mean")
    assert_clean(out, (2, 2))
    np.testing.assert_allclose(out, [[3.0, 4.0], [2.0, 2.0]])


def test_token_level_answer_cls_pooled() -> None:
    tokens = [[[1.0, 2.0], [3.0, 4.0]], [[7.0, 8.0], [9.0, 9.0]]]
    out = from_json_rows(tokens, 2, "cls")
    np.testing.assert_array_equal(out, [[1.0, 2.0], [7.0, 8.0]])


def test_ragged_token_level_answer_with_leading_batch_axis_is_pooled() -> None:
    # The plain transformers pipeline: [1, T_i, H] per text, T_i differing between texts.
    tokens = [
        [[[1.0, 1.0], [3.0, 3.0]]],
        [[[2.0, 4.0], [4.0, 8.0], [6.0, 12.0]]],
    ]
    out = from_json_rows(tokens, 2, "mean")
    assert_clean(out, (2, 2))
    np.testing.assert_allclose(out, [[2.0, 2.0], [4.0, 8.0]])
    np.testing.assert_array_equal(from_json_rows(tokens, 2, "cls"), [[1.0, 1.0], [2.0, 4.0]])


def test_ragged_token_level_answer_without_pooling_is_refused() -> None:
    tokens = [[[1.0, 1.0]], [[2.0, 2.0], [3.0, 3.0]]]
    with pytest.raises(ResponseError, match="pooling="):
        from_json_rows(tokens, 2)


def test_token_level_answer_with_wrong_count() -> None:
    tokens = [[[1.0, 2.0], [3.0, 4.0]]]
    with pytest.raises(ResponseError, match="sent 2 texts"):
        from_json_rows(tokens, 2, "mean")


def test_token_level_answer_with_ragged_hidden_size() -> None:
    tokens = [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0, 3.0]]]
    with pytest.raises(ResponseError):
        from_json_rows(tokens, 2, "mean")


@pytest.mark.parametrize(
    ("data", "n", "needle"),
    [
        ([[1.0, 2.0], [3.0, 4.0]], 3, "sent 3 texts"),  # too few rows
        ([[1.0, 2.0], [3.0, 4.0]], 1, "sent 1 texts"),  # too many rows
        ([[1.0, 2.0], [3.0]], 2, "malformed"),  # ragged rows
        ([[1.0, "x"]], 1, None),  # not a number
        ([[1.0, "2"]], 1, None),  # a number in a string is still not a number
        ([["1", "2"]], 1, None),
        ([[1.0, None]], 1, None),
        ([[1.0, {"v": 1}]], 1, None),
        ([], 1, None),  # empty answer
        ([[]], 1, "dimension 0"),  # empty row
        ({"embeddings": [[1.0]]}, 1, "JSON list"),
        ("oops", 1, "JSON list"),
        (None, 1, "JSON list"),
        ([[1e39, 1.0]], 1, "NaN or infinite"),
    ],
)
def test_malformed_json_rows(data: Any, n: int, needle: str | None) -> None:
    with pytest.raises(ResponseError, match=needle):
        from_json_rows(data, n)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(
        st.one_of(
            st.floats(
                allow_nan=False, allow_infinity=False, width=64, min_value=-1e38, max_value=1e38
            ),
            st.integers(-(2**60), 2**60),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_numbers_only_path_rounds_as_float64_then_float32(row: list[float]) -> None:
    expected = np.array([row], dtype=np.float64).astype(np.float32)
    out = from_json_rows([row], 1, numbers_only=True)
    assert out.tobytes() == expected.tobytes()


def test_the_numbers_only_path_refuses_an_overflow_without_a_warning() -> None:
    with pytest.raises(ResponseError, match="NaN or infinite"):
        from_json_rows([[1e39, 1.0]], 1, numbers_only=True)  # warnings are errors here


def test_json_result_is_float32_for_integer_answers() -> None:
    assert_clean(from_json_rows([[1, 2, 3]], 1), (1, 3))


# ------------------------------------------------------------------------------- base64


def test_base64_rows_decode_little_endian_float32() -> None:
    rows = [[0.25, -1.5, 3.0], [1.0, 2.0, 4.0]]
    out = from_base64_rows([b64(r) for r in rows], 2)
    assert_clean(out, (2, 3))
    np.testing.assert_array_equal(out, rows)


def test_base64_rows_with_padding() -> None:
    # A single float is 4 bytes: 8 base64 characters ending in "=".
    encoded = [b64([1.5]), b64([-2.0])]
    assert encoded[0].endswith("=")
    np.testing.assert_array_equal(from_base64_rows(encoded, 2), [[1.5], [-2.0]])


def test_base64_is_read_little_endian_whatever_the_host() -> None:
    big_endian = base64.b64encode(np.array([1.0], dtype=">f4").tobytes()).decode()
    little = from_base64_rows([big_endian], 1)
    assert little[0, 0] != 1.0


@pytest.mark.parametrize(
    ("encoded", "n", "needle"),
    [
        (["AACAPw=="], 2, "sent 2 texts"),
        (["AACAPw==", "AACAPwAAgD8="], 2, "different dimensions"),
        (["!!!not base64!!!"], 1, None),
        (["AACA"], 1, None),  # 3 bytes: not a whole float32
        ([[1.0, 2.0]], 1, "base64"),
        ([base64.b64encode(np.array([np.nan], "<f4").tobytes()).decode()], 1, "NaN"),
    ],
)
def test_malformed_base64(encoded: list[Any], n: int, needle: str | None) -> None:
    with pytest.raises(ResponseError, match=needle):
        from_base64_rows(encoded, n)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=600).map(lambda b: b[: len(b) - len(b) % 3]))
def test_the_numpy_base64_decoder_is_binascii_byte_for_byte(data: bytes) -> None:
    text = base64.b64encode(data).decode("ascii")
    decoded = _unpadded_base64(text)
    assert decoded is not None
    assert decoded.dtype == np.uint8
    assert decoded.tobytes() == binascii.a2b_base64(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "AACAPw==",  # padding
        "AACAP w==",  # whitespace, which binascii skips
        "AACA\nPwAA",
        "AAC*PwAA",  # outside the alphabet, which binascii skips
        "AACAPwA",  # not a multiple of 4
        "AACAPwAé",  # not ASCII
        "AA-_PwAA",  # the URL-safe alphabet is not OpenAI's
    ],
)
def test_the_numpy_base64_decoder_leaves_everything_else_to_binascii(text: str) -> None:
    assert _unpadded_base64(text) is None


@pytest.mark.parametrize("dim", [1, 3, 384, 1024, 1536])
def test_base64_batches_decode_exactly_padded_or_not(dim: int) -> None:
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((5, dim)).astype(np.float32)
    out = from_base64_rows([b64(row) for row in rows], 5)
    assert_clean(out, (5, dim))
    assert out.tobytes() == rows.astype("<f4").tobytes()


def test_base64_rows_with_characters_binascii_skips_decode_as_before() -> None:
    # Not valid base64 to the numpy decoder; binascii (non-strict) skips the stray bytes.
    rows = [b64([1.0, 2.0, 3.0]), b64([4.0, 5.0, 6.0])]
    noisy = [rows[0][:4] + "\n" + rows[0][4:-1], rows[1][:4] + "*" + rows[1][4:-1]]
    assert all(len(r) == len(noisy[0]) for r in noisy)
    out = from_base64_rows([r + rows[i][-1] for i, r in enumerate(noisy)], 2)
    np.testing.assert_array_equal(out, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


# ------------------------------------------------------------------------------ indexes


def test_place_by_index_in_order_is_unchanged() -> None:
    items = [{"index": 0, "v": "a"}, {"index": 1, "v": "b"}]
    assert place_by_index(items, 2) == items


def test_place_by_index_reorders() -> None:
    items = [{"index": 2, "v": "c"}, {"index": 0, "v": "a"}, {"index": 1, "v": "b"}]
    assert [item["v"] for item in place_by_index(items, 3)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("items", "n", "needle"),
    [
        ([{"index": 0}], 2, "sent 2 texts"),
        ([{"index": 0}, {"index": 0}], 2, "indexes"),  # duplicate
        ([{"index": 0}, {"index": 2}], 2, "indexes"),  # out of range
        ([{"index": 0}, {"v": 1}], 2, "index"),  # missing
        ([{"index": 0}, "x"], 2, "index"),
    ],
)
def test_place_by_index_rejects(items: list[Any], n: int, needle: str | None) -> None:
    with pytest.raises(ResponseError, match=needle):
        place_by_index(items, n)


@pytest.mark.parametrize(
    "body",
    [b"[[true, false]]", b"[[null, 0.5]]", b'[["1", "2"]]', b"[[1e400, 0.5]]"],
)
def test_the_fast_numbers_only_path_still_refuses_what_is_not_a_number(body: bytes) -> None:
    protocol = HFProtocol(model=None, url="http://127.0.0.1:1/embed", options=Options())
    with pytest.raises(ResponseError):
        protocol.decode(body, 1)


def test_the_fast_numbers_only_path_reads_integers_and_exponents() -> None:
    assert only_numbers(b"[[1, -2.5e-3, 3E2]]")
    protocol = HFProtocol(model=None, url="http://127.0.0.1:1/embed", options=Options())
    out = protocol.decode(b"[[1, -2.5e-3, 3E2]]", 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[1.0, -0.0025, 300.0]])
